#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace hx {

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names(std::begin(kLoraTargetNames),
                                              std::end(kLoraTargetNames));
  return names;
}

void LinearImpl::add_lora(const LoraOptions& options, uint64_t seed) {
  if (has_lora()) throw std::logic_error("LoRA adapter added twice");
  // On a quantised weight: adapters in the weight's original dtype, on its device (PEFT creates
  // them in fp32 on bitsandbytes' Linear4bit).
  const auto opts = quant_ ? quant_->packed.options().dtype(quant_->dtype) : weight.options();
  const int64_t in = in_features_;
  const int64_t out = out_features_;
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

namespace {
// (alpha/r) B A in fp32 (the product of the adapter, as the base weight's dtype).
torch::Tensor lora_delta(const torch::Tensor& a, const torch::Tensor& b, double scaling,
                         torch::ScalarType dtype) {
  return (torch::matmul(b.to(torch::kFloat32), a.to(torch::kFloat32)) * scaling).to(dtype);
}
}  // namespace

void LinearImpl::merge_lora() {
  if (!has_lora() || lora_merged_) return;
  if (quant_)
    throw std::invalid_argument("LoRA adapters cannot be merged into a 4-bit quantised weight");
  torch::NoGradGuard no_grad;
  weight.add_(lora_delta(lora_a_, lora_b_, lora_scaling_, weight.scalar_type()));
  lora_merged_ = true;
}

void LinearImpl::unmerge_lora() {
  if (!has_lora() || !lora_merged_) return;
  torch::NoGradGuard no_grad;
  weight.sub_(lora_delta(lora_a_, lora_b_, lora_scaling_, weight.scalar_type()));
  lora_merged_ = false;
}

void LinearImpl::unload_lora() {
  if (!has_lora()) return;
  unregister_module("lora_a");
  unregister_module("lora_b");
  lora_a_ = torch::Tensor();
  lora_b_ = torch::Tensor();
  lora_merged_ = false;
}

void quantize_targets(Transformer& model, const std::vector<std::string>& targets,
                      const Quant4Options& options) {
  for (auto& block : model->layers) {
    for (const auto& target : targets) block_linear(block, target)->quantize(options);
  }
}

int64_t quantized_weight_bytes(const Transformer& model) {
  int64_t bytes = 0;
  for (const auto& block : model->layers) {
    for (const auto& target : lora_target_names()) {
      const auto& quant = block_linear(block, target)->quant_weight();
      if (quant) bytes += quant->nbytes();
    }
  }
  return bytes;
}

void apply_lora(Transformer& model, const std::vector<std::string>& targets,
                const LoraOptions& options, uint64_t seed) {
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  uint64_t stream = 0;
  for (auto& block : model->layers) {
    for (const auto& target : targets)
      block_linear(block, target)->add_lora(options, seed + ++stream);
  }
}

namespace {
void for_each_target(Transformer& model, void (LinearImpl::*action)()) {
  for (auto& block : model->layers) {
    for (const auto& target : lora_target_names()) (block_linear(block, target).get()->*action)();
  }
}
}  // namespace

void merge_lora(Transformer& model) { for_each_target(model, &LinearImpl::merge_lora); }

void unmerge_lora(Transformer& model) { for_each_target(model, &LinearImpl::unmerge_lora); }

void merge_and_unload_lora(Transformer& model) {
  for_each_target(model, &LinearImpl::merge_lora);
  for_each_target(model, &LinearImpl::unload_lora);
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
