#include "model/llama.h"

#include <cmath>
#include <map>
#include <numbers>
#include <set>
#include <stdexcept>

#include "model/checkpoint.h"
#include "model/compat.h"
#include "model/weights.h"

namespace hx {

// ---- Linear (+ LoRA) ----

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features,
                       const torch::TensorOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}, options));
}

void LinearImpl::quantize(const Quant4Options& options) {
  if (quant_) throw std::logic_error("a weight quantised twice");
  if (has_lora()) throw std::logic_error("quantise the base weight before adding LoRA");
  quant_ = quantize_4bit(weight.detach(), options.type, options.block, options.double_quant);
  quant_compute_dtype_ = options.compute_dtype;
  parameters_.erase("weight");
  weight = torch::Tensor();
  register_buffer("weight_packed", quant_->packed);
  register_buffer("weight_absmax", quant_->absmax);
  if (quant_->double_quant()) {
    register_buffer("weight_offset", quant_->offset);
    register_buffer("weight_absmax2", quant_->absmax2);
  }
}

void LinearImpl::defer_quantization(const Quant4Options& options) {
  if (quant_ || deferred_) throw std::logic_error("a weight quantised twice");
  if (has_lora()) throw std::logic_error("quantise the base weight before adding LoRA");
  deferred_ = options;
  deferred_weight_options_ = weight.options();
  parameters_.erase("weight");
  weight = register_parameter("weight",
                              torch::empty(weight.sizes(), weight.options().device(torch::kMeta)));
}

torch::Tensor LinearImpl::deferred_weight() const {
  return torch::empty({out_features_, in_features_}, deferred_weight_options_);
}

void LinearImpl::quantize_deferred(const torch::Tensor& full) {
  const Quant4Options options = deferred_.value();
  deferred_.reset();
  weight = full;
  quantize(options);
}

namespace {
// x W^T. A decode step has one or two rows, and a matrix-vector product streams W once where the
// general product does more work per row. Written for Debian's OpenBLAS (sgemm 3-6x slower there);
// re-measured on PyTorch 2.11's wheel (MKL), one thread, per decoded token over all projections
// of the preset (tests/bench/README.md): linear/mv 2.29 (small, one row), 1.33 (small, two
// rows), 1.27 and 1.21 (llama3.2-1b). So on the CPU in fp32, one or two rows still go through mv.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight) {
  const int64_t in = weight.size(1);
  const int64_t rows = in > 0 ? x.numel() / in : 0;
  if (rows < 1 || rows > 2 || !x.device().is_cpu() || x.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32) {
    return torch::linear(x, weight);
  }
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(0);
  const auto flat = x.reshape({rows, in});
  if (rows == 1) return torch::mv(weight, flat[0]).view(sizes);
  return torch::stack({torch::mv(weight, flat[0]), torch::mv(weight, flat[1])}).view(sizes);
}

// torch::linear(x, W)'s autograd node without its product (ProjectionOutput::kUnread): the
// output is unread_output in linear's dtype; backward computes what linear's does, x's gradient
// and W's when it trains, in that dtype.
struct UnreadLinear : torch::autograd::Function<UnreadLinear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight) {
    const auto dtype = compat::linear_compute_dtype(x);
    ctx->save_for_backward({weight.requires_grad() ? x : torch::Tensor(), weight});
    ctx->saved_data["x_sizes"] = x.sizes();
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["dtype"] = static_cast<int64_t>(dtype);
    return unread_output(x, weight.size(0), dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto dtype = static_cast<torch::Dtype>(ctx->saved_data["dtype"].toInt());
    const auto grad = grads[0].to(dtype).reshape({-1, weight.size(0)});
    torch::Tensor grad_x, grad_w;
    if (ctx->needs_input_grad(0)) {
      grad_x = grad.mm(weight.to(dtype))
                   .view(ctx->saved_data["x_sizes"].toIntVector())
                   .to(static_cast<torch::Dtype>(ctx->saved_data["x_dtype"].toInt()));
    }
    if (ctx->needs_input_grad(1))
      grad_w = grad.t().mm(x.to(dtype).reshape({-1, x.size(-1)})).to(weight.scalar_type());
    return {grad_x, grad_w};
  }
};
}  // namespace

torch::Tensor LinearImpl::forward(const torch::Tensor& x, ProjectionOutput output) {
  const bool product = output == ProjectionOutput::kComputed;
  torch::Tensor y;
  if (quant_) {
    y = quant4_linear(x, *quant_, quant_compute_dtype_, product);
  } else {
    y = product ? project(x, weight) : UnreadLinear::apply(x, weight);
  }
  if (lora_a_.defined() && !lora_merged_) {
    auto xd = lora_dropout_ > 0 ? torch::dropout(x, lora_dropout_, is_training()) : x;
    y = y + torch::linear(torch::linear(xd, lora_a_), lora_b_) * lora_scaling_;
  }
  return y;
}

// ---- Embedding, RMSNorm ----

EmbeddingImpl::EmbeddingImpl(int64_t vocab_size, int64_t dim, const torch::TensorOptions& options) {
  weight = register_parameter("weight", torch::empty({vocab_size, dim}, options));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& tokens) {
  return torch::embedding(weight, tokens);
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, const torch::TensorOptions& options)
    : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // Normalise in fp32 whatever the model dtype (as Meta's reference does), then scale.
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return normed.to(x.scalar_type()) * weight;
}

// ---- KV cache ----

KVCache::KVCache(const LlamaConfig& config, int64_t batch, int64_t max_seq_len,
                 const torch::TensorOptions& options)
    : max_seq_len_(max_seq_len) {
  for (int64_t i = 0; i < config.n_layers; ++i) {
    keys_.push_back(
        torch::zeros({batch, config.n_kv_heads, max_seq_len, config.head_dim()}, options));
    values_.push_back(torch::zeros_like(keys_.back()));
  }
}

std::pair<torch::Tensor, torch::Tensor> KVCache::update(int64_t layer, int64_t start_pos,
                                                        const torch::Tensor& k,
                                                        const torch::Tensor& v) {
  const int64_t t = k.size(2);
  if (start_pos + t > max_seq_len_)
    throw std::out_of_range("KV cache holds " + std::to_string(max_seq_len_) +
                            " positions; asked for " + std::to_string(start_pos + t));
  auto& keys = keys_[static_cast<size_t>(layer)];
  auto& values = values_[static_cast<size_t>(layer)];
  keys.narrow(2, start_pos, t).copy_(k);
  values.narrow(2, start_pos, t).copy_(v);
  return {keys.narrow(2, 0, start_pos + t), values.narrow(2, 0, start_pos + t)};
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < keys_.size(); ++i) total += keys_[i].nbytes() + values_[i].nbytes();
  return total;
}

// ---- Rotary embeddings ----

torch::Tensor rope_frequencies(const LlamaConfig& config) {
  const int64_t half = config.head_dim() / 2;
  std::vector<double> freqs(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double freq = 1.0 / std::pow(config.rope_theta, static_cast<double>(2 * i) /
                                                        static_cast<double>(config.head_dim()));
    if (config.rope_scaling) {
      // Meta's apply_scaling: keep high frequencies, divide low ones by `factor`, blend between.
      const auto& s = *config.rope_scaling;
      const double low_freq_wavelen = static_cast<double>(s.original_max_pos) / s.low_freq_factor;
      const double high_freq_wavelen = static_cast<double>(s.original_max_pos) / s.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / freq;
      if (wavelen > low_freq_wavelen) {
        freq = freq / s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth =
            (static_cast<double>(s.original_max_pos) / wavelen - s.low_freq_factor) /
            (s.high_freq_factor - s.low_freq_factor);
        freq = (1.0 - smooth) * freq / s.factor + smooth * freq;
      }
    }
    freqs[static_cast<size_t>(i)] = freq;
  }
  return torch::tensor(freqs, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start_pos) {
  const int64_t t = x.size(1);
  const int64_t half = x.size(3) / 2;
  auto cos = rope.cos.narrow(0, start_pos, t).view({1, t, 1, half});  // (1, T, 1, D/2)
  auto sin = rope.sin.narrow(0, start_pos, t).view({1, t, 1, half});
  // Rotate in fp32 (as Meta does with complex numbers), return in the input's dtype.
  auto xf = x.to(torch::kFloat32).unflatten(-1, {half, 2});  // (B, T, H, D/2, 2)
  auto x0 = xf.select(-1, 0);
  auto x1 = xf.select(-1, 1);
  auto out = torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1);
  return out.flatten(3).to(x.scalar_type());
}

// ---- Attention ----

AttentionImpl::AttentionImpl(const LlamaConfig& config, const torch::TensorOptions& options)
    : n_heads_(config.n_heads), n_kv_heads_(config.n_kv_heads), head_dim_(config.head_dim()) {
  wq = register_module("wq", Linear(config.dim, n_heads_ * head_dim_, options));
  wk = register_module("wk", Linear(config.dim, n_kv_heads_ * head_dim_, options));
  wv = register_module("wv", Linear(config.dim, n_kv_heads_ * head_dim_, options));
  wo = register_module("wo", Linear(n_heads_ * head_dim_, config.dim, options));
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  throw std::invalid_argument("unknown dtype \"" + name + "\" (expected fp32, fp16, bf16)");
}

AttentionKind parse_attention_kind(const std::string& name) {
  if (name == "sdpa") return AttentionKind::kSdpa;
  if (name == "math") return AttentionKind::kMath;
  throw std::invalid_argument("attention: unknown kind '" + name + "' (sdpa | math)");
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, int64_t start_pos,
                                     const RopeTables& rope, const torch::Tensor& mask,
                                     KVCache* cache, int64_t layer) {
  const int64_t b = x.size(0);
  const int64_t t = x.size(1);
  auto q = apply_rope(wq(x).view({b, t, n_heads_, head_dim_}), rope, start_pos);
  auto k = apply_rope(wk(x).view({b, t, n_kv_heads_, head_dim_}), rope, start_pos);
  auto v = wv(x).view({b, t, n_kv_heads_, head_dim_});
  q = q.transpose(1, 2);  // (B, H, T, D)
  k = k.transpose(1, 2);  // (B, KV, T, D)
  v = v.transpose(1, 2);
  if (cache != nullptr) std::tie(k, v) = cache->update(layer, start_pos, k, v);

  torch::Tensor out;
  if (kind == AttentionKind::kSdpa) {
    // is_causal aligns its mask top-left, which is right only when queries and keys start
    // together (training, a prefill from position 0); a chunk after cached positions takes the
    // explicit mask, and a single new token attends to every key (no mask).
    const bool causal = t > 1 && start_pos == 0;
    const auto attn_mask = causal || !mask.defined() ? std::optional<torch::Tensor>() : mask;
    out = at::scaled_dot_product_attention(q, k, v, attn_mask,
                                           /*dropout_p=*/0.0, causal, /*scale=*/std::nullopt,
                                           /*enable_gqa=*/n_heads_ != n_kv_heads_);
  } else {
    out = explicit_attention(q, k, v, mask);
  }
  return wo(out.transpose(1, 2).reshape({b, t, -1}));
}

torch::Tensor AttentionImpl::explicit_attention(const torch::Tensor& q, const torch::Tensor& k,
                                                const torch::Tensor& v,
                                                const torch::Tensor& mask) const {
  const int64_t b = q.size(0);
  const int64_t t = q.size(2);
  const int64_t s = k.size(2);
  const int64_t rep = n_heads_ / n_kv_heads_;
  // Grouped-query attention without repeating K and V: the `rep` query heads that share a KV
  // head are stacked along the query axis, so one batched product serves them all.
  auto qg = q.reshape({b, n_kv_heads_, rep * t, head_dim_});  // (B, KV, rep*T, D)
  auto scores = torch::matmul(qg, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim_));
  scores = scores.view({b, n_kv_heads_, rep, t, s});  // (B, KV, rep, T, S)
  if (mask.defined()) scores = scores + mask;
  auto probs = torch::softmax(scores.to(torch::kFloat32), -1).to(q.scalar_type());
  auto out = torch::matmul(probs.view({b, n_kv_heads_, rep * t, s}), v);  // (B, KV, rep*T, D)
  return out.view({b, n_heads_, t, head_dim_});
}

// ---- Feed-forward, block ----

FeedForwardImpl::FeedForwardImpl(const LlamaConfig& config, const torch::TensorOptions& options) {
  w1 = register_module("w1", Linear(config.dim, config.ffn_hidden, options));
  w2 = register_module("w2", Linear(config.ffn_hidden, config.dim, options));
  w3 = register_module("w3", Linear(config.dim, config.ffn_hidden, options));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x, ProjectionOutput output) {
  return w2(torch::silu(w1(x)) * w3(x), output);
}

TransformerBlockImpl::TransformerBlockImpl(const LlamaConfig& config, int64_t layer_id_,
                                           const torch::TensorOptions& options)
    : layer_id(layer_id_) {
  attention = register_module("attention", Attention(config, options));
  feed_forward = register_module("feed_forward", FeedForward(config, options));
  attention_norm = register_module("attention_norm", RMSNorm(config.dim, config.norm_eps, options));
  ffn_norm = register_module("ffn_norm", RMSNorm(config.dim, config.norm_eps, options));
}

torch::Tensor TransformerBlockImpl::forward(const torch::Tensor& x, int64_t start_pos,
                                            const RopeTables& rope, const torch::Tensor& mask,
                                            KVCache* cache, ProjectionOutput output) {
  auto h = x + attention(attention_norm(x), start_pos, rope, mask, cache, layer_id);
  return h + feed_forward(ffn_norm(h), output);
}

// ---- Transformer ----

TransformerImpl::TransformerImpl(LlamaConfig config, const ModelOptions& options)
    : config_(std::move(config)), options_(options) {
  validate_config(config_);
  const auto opts = options_.tensor_options();
  tok_embeddings =
      register_module("tok_embeddings", Embedding(config_.vocab_size, config_.dim, opts));
  auto list = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    layers.push_back(TransformerBlock(config_, i, opts));
    list->push_back(layers.back());
    // Right away: at most one block's full-precision weights are ever allocated.
    if (options_.quant && !options_.device.is_meta())
      for (const auto& target : options_.quant->targets)
        block_linear(layers.back(), target)->defer_quantization(options_.quant->options);
  }
  set_attention(options_.attention);
  norm = register_module("norm", RMSNorm(config_.dim, config_.norm_eps, opts));
  if (!config_.tie_embeddings)
    output = register_module("output", Linear(config_.dim, config_.vocab_size, opts));
  checkpointed_.assign(static_cast<size_t>(config_.n_layers), false);

  if (options_.device.is_meta()) return;  // shapes only
  auto freqs = rope_frequencies(config_);
  auto positions = torch::arange(config_.max_seq_len, torch::kFloat32);
  auto angles = torch::outer(positions, freqs);  // (max_seq_len, D/2)
  rope_.cos = register_buffer("rope_cos", torch::cos(angles).to(options_.device));
  rope_.sin = register_buffer("rope_sin", torch::sin(angles).to(options_.device));
}

void TransformerImpl::set_checkpointing(int64_t every) {
  for (int64_t i = 0; i < config_.n_layers; ++i)
    checkpointed_[static_cast<size_t>(i)] = every > 0 && i % every == 0;
}

void TransformerImpl::set_attention(AttentionKind kind) {
  options_.attention = kind;
  for (auto& layer : layers) layer->attention->kind = kind;
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& tokens, int64_t start_pos,
                                      KVCache* cache) {
  const int64_t t = tokens.size(1);
  const int64_t s = start_pos + t;
  if (s > config_.max_seq_len)
    throw std::out_of_range("sequence of " + std::to_string(s) + " positions exceeds max_seq_len " +
                            std::to_string(config_.max_seq_len) + " of " + config_.name);
  // Causal mask over the keys [0, s): query i (position start_pos + i) sees keys <= its position.
  // A single new token sees everything, so decoding needs no mask; the fused kernel makes its
  // own when queries and keys start together.
  torch::Tensor mask;
  if (t > 1 && (options_.attention == AttentionKind::kMath || start_pos > 0)) {
    mask = torch::full({t, s}, -std::numeric_limits<float>::infinity(),
                       torch::TensorOptions().device(options_.device))
               .triu(start_pos + 1);
  }
  auto h = tok_embeddings(tokens);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (checkpointed_[i] && is_training() && torch::GradMode::is_enabled() && cache == nullptr) {
      h = checkpoint_block(layers[i], h, start_pos, rope_, mask);
    } else {
      h = layers[i]->forward(h, start_pos, rope_, mask, cache);
    }
  }
  return norm(h);
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  auto out = output ? output(hidden) : project(hidden, tok_embeddings->weight);
  return out.to(torch::kFloat32);
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, int64_t start_pos,
                                       KVCache* cache) {
  return logits(hidden(tokens, start_pos, cache));
}

int64_t TransformerImpl::param_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  for (const auto& layer : layers) {
    for (const Linear& linear :
         {layer->attention->wq, layer->attention->wk, layer->attention->wv, layer->attention->wo,
          layer->feed_forward->w1, layer->feed_forward->w2, layer->feed_forward->w3})
      if (linear->quantized()) n += linear->weight_numel();
  }
  return n;
}

Linear block_linear(const TransformerBlock& block, const std::string& target) {
  if (target == "wq") return block->attention->wq;
  if (target == "wk") return block->attention->wk;
  if (target == "wv") return block->attention->wv;
  if (target == "wo") return block->attention->wo;
  if (target == "w1") return block->feed_forward->w1;
  if (target == "w2") return block->feed_forward->w2;
  if (target == "w3") return block->feed_forward->w3;
  std::string known;
  for (const std::string_view name : kLoraTargetNames)
    known += (known.empty() ? "" : ", ") + std::string(name);
  throw std::invalid_argument("unknown target \"" + target + "\" (expected " + known + ")");
}

void fill_parameters(Transformer& model, const ParameterFill& fill) {
  torch::NoGradGuard no_grad;
  std::map<std::string, LinearImpl*> deferred;  // by the weight's parameter name
  for (const auto& item : model->named_modules()) {
    auto* linear = item.value()->as<LinearImpl>();
    if (linear != nullptr && linear->quantization_deferred())
      deferred[item.key() + ".weight"] = linear;
  }
  for (auto& item : model->named_parameters()) {
    const auto it = deferred.find(item.key());
    if (it == deferred.end()) {
      fill(item.key(), item.value());
      continue;
    }
    auto full = it->second->deferred_weight();
    fill(item.key(), full);
    it->second->quantize_deferred(full);
  }
}

void init_random(Transformer& model, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  fill_parameters(model, [&](const std::string& name, torch::Tensor& p) {
    if (name.find("norm") != std::string::npos) {
      p.fill_(1.0);
    } else if (name.find("lora_b") != std::string::npos) {
      p.zero_();  // B = 0: an adapter starts as the identity
    } else {
      // Drawn on the CPU with one generator: the same weights on every device (into p itself
      // where it is a CPU fp32 tensor: no copy of the embedding's size at load).
      if (p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.is_contiguous()) {
        p.normal_(0.0, 0.02, gen);
      } else {
        p.copy_(torch::empty(p.sizes(), torch::kFloat32).normal_(0.0, 0.02, gen));
      }
    }
  });
}

// Here rather than in weights.cpp, whose tensor-file reader the fuzzer links without the model.
void load_weights(Transformer& model, const TensorMap& tensors, const std::string& source) {
  std::set<std::string> used;
  fill_parameters(model, [&](const std::string& name, torch::Tensor& param) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw std::invalid_argument(source + ": missing tensor " + name);
    if (it->second.sizes() != param.sizes())
      throw std::invalid_argument(source + ": " + name + ": shape " +
                                  shape_text(it->second.sizes()) + " where the model expects " +
                                  shape_text(param.sizes()));
    param.copy_(it->second);
    used.insert(name);
  });
  for (const auto& [name, tensor] : tensors)
    if (!used.count(name)) throw std::invalid_argument(source + ": unexpected tensor " + name);
}

int64_t count_params_on_meta(const LlamaConfig& config) {
  ModelOptions options;
  options.device = torch::Device(torch::kMeta);
  Transformer model(config, options);
  return model->param_count();
}

}  // namespace hx
