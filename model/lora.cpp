#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace hx {

namespace {
Linear target_of(const TransformerBlock& block, const std::string& target) {
  if (target == "wq") return block->attention->wq;
  if (target == "wk") return block->attention->wk;
  if (target == "wv") return block->attention->wv;
  if (target == "wo") return block->attention->wo;
  if (target == "w1") return block->feed_forward->w1;
  if (target == "w2") return block->feed_forward->w2;
  if (target == "w3") return block->feed_forward->w3;
  throw std::invalid_argument("unknown LoRA target \"" + target +
                              "\" (expected wq, wk, wv, wo, w1, w2, w3)");
}
}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names{"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  return names;
}

void LinearImpl::add_lora(const LoraOptions& options, uint64_t seed) {
  if (has_lora()) throw std::logic_error("LoRA adapter added twice");
  const auto opts = weight.options();
  const int64_t in = weight.size(1);
  const int64_t out = weight.size(0);
  auto a = register_module("lora_a", Linear(in, options.r, opts));
  auto b = register_module("lora_b", Linear(options.r, out, opts));
  if (!opts.device().is_meta()) {
    torch::NoGradGuard no_grad;
    // PEFT: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0.
    auto gen = at::detail::createCPUGenerator(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    a->weight.copy_(torch::empty(a->weight.sizes(), torch::kFloat32).uniform_(-bound, bound, gen));
    b->weight.zero_();
  }
  lora_a_ = a->weight;
  lora_b_ = b->weight;
  lora_scaling_ = options.alpha / static_cast<double>(options.r);
  lora_dropout_ = options.dropout;
}

void LinearImpl::merge_lora() {
  if (!has_lora()) return;
  {
    torch::NoGradGuard no_grad;
    auto delta = torch::matmul(lora_b_.to(torch::kFloat32), lora_a_.to(torch::kFloat32));
    weight.add_((delta * lora_scaling_).to(weight.scalar_type()));
  }
  unregister_module("lora_a");
  unregister_module("lora_b");
  lora_a_ = torch::Tensor();
  lora_b_ = torch::Tensor();
}

void apply_lora(Transformer& model, const std::vector<std::string>& targets,
                const LoraOptions& options, uint64_t seed) {
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  uint64_t stream = 0;
  for (auto& block : model->layers) {
    for (const auto& target : targets) target_of(block, target)->add_lora(options, seed + ++stream);
  }
}

void merge_lora(Transformer& model) {
  for (auto& block : model->layers) {
    for (const auto& target : lora_target_names()) target_of(block, target)->merge_lora();
  }
}

bool is_lora_param(const std::string& name) {
  return name.find(".lora_a.") != std::string::npos || name.find(".lora_b.") != std::string::npos;
}

std::vector<torch::Tensor> trainable_parameters(const Transformer& model) {
  std::vector<torch::Tensor> out;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

int64_t trainable_param_count(const Transformer& model) {
  int64_t n = 0;
  for (const auto& p : trainable_parameters(model)) n += p.numel();
  return n;
}

}  // namespace hx
