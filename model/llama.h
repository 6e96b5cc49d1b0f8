#pragma once
// The LLaMA architecture in libtorch, named as in Meta's checkpoints so that named_parameters()
// are the checkpoint keys: tok_embeddings, layers.N.attention.{wq,wk,wv,wo},
// layers.N.feed_forward.{w1,w2,w3}, layers.N.{attention_norm,ffn_norm}, norm, output.
//
// Techniques hook in at named seams: a LoRA adapter on a Linear (model/lora.h), a checkpoint
// wrapper around a block (set_checkpointing), an autocast scope around the call (model/compat.h).
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/quant4.h"

namespace hx {

// How attention is computed: libtorch's fused scaled_dot_product_attention (flash or efficient
// kernels where the device has them), or the explicit softmax(q k^T / sqrt(d)) v of the reference.
enum class AttentionKind { kSdpa, kMath };
AttentionKind parse_attention_kind(const std::string& name);  // "sdpa" | "math"
torch::Dtype parse_dtype(const std::string& name);            // "fp32" | "fp16" | "bf16"

// QLoRA's base weights: the linears `targets` (wq ... w3) of every block in 4-bit form.
struct QuantPlan {
  Quant4Options options;
  std::vector<std::string> targets;
};

struct ModelOptions {
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;
  AttentionKind attention = AttentionKind::kSdpa;
  // Weights quantised as they are filled (fill_parameters): each target weight is a meta tensor
  // until then and is quantised as soon as it holds its values, so loading needs the memory of
  // the 4-bit model plus one full-precision weight (as bitsandbytes' loading), not the whole
  // model in `dtype`.
  std::optional<QuantPlan> quant;
  torch::TensorOptions tensor_options() const {
    return torch::TensorOptions().device(device).dtype(dtype);
  }
};

// Low-rank adapter on a Linear: y = x W^T + (alpha / r) * dropout(x) A^T B^T.
struct LoraOptions {
  int64_t r = 16;
  double alpha = 32.0;
  double dropout = 0.05;
};

// Whether a projection computes its output or only records its backward. A recompute for
// gradient checkpointing never reads the block's last projection (only additions follow it, and
// they keep no operand), so its product is left out there, as PyTorch's non-reentrant checkpoint
// stops its recompute early.
enum class ProjectionOutput { kComputed, kUnread };

// A bias-free linear layer whose weight is created directly with the given options (so that the
// whole model can be built on the meta device), with an optional LoRA adapter
// (parameters `lora_a.weight` (r, in), `lora_b.weight` (out, r)), and optionally its weight in
// 4-bit form (bitsandbytes' Linear4bit, model/quant4.h).
class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x,
                        ProjectionOutput output = ProjectionOutput::kComputed);

  // Replaces the parameter `weight` by its 4-bit form, the buffers `weight_packed`,
  // `weight_absmax` (and with double quantisation `weight_offset`, `weight_absmax2`): frozen, as in
  // QLoRA. Before any adapter is added.
  void quantize(const Quant4Options& options);
  bool quantized() const { return quant_.has_value(); }
  // The weight becomes a meta tensor of its shape until fill_parameters fills and quantises it.
  void defer_quantization(const Quant4Options& options);
  bool quantization_deferred() const { return deferred_.has_value(); }
  // For fill_parameters: an empty full-precision tensor for a deferred weight's values, and the
  // quantisation from them (the weight's 4-bit buffers replace the meta parameter).
  torch::Tensor deferred_weight() const;
  void quantize_deferred(const torch::Tensor& full);
  const std::optional<Quant4Weight>& quant_weight() const { return quant_; }
  // The weight's element count, whether it is a parameter or quantised.
  int64_t weight_numel() const { return in_features_ * out_features_; }

  void add_lora(const LoraOptions& options, uint64_t seed);
  bool has_lora() const { return lora_a_.defined(); }
  bool lora_merged() const { return lora_merged_; }
  // W += (alpha/r) B A; the adapter stays but forward no longer adds it (PEFT's merge).
  void merge_lora();
  // W -= (alpha/r) B A: the base weight again (to fp32 rounding), the adapter active again.
  void unmerge_lora();
  // Removes the adapter (merged or not): the module has its base names again.
  void unload_lora();

  torch::Tensor weight;  // (out, in); undefined once quantised

 private:
  int64_t in_features_, out_features_;
  std::optional<Quant4Weight> quant_;
  torch::Dtype quant_compute_dtype_ = torch::kFloat32;
  std::optional<Quant4Options> deferred_;
  torch::TensorOptions deferred_weight_options_;  // the full-precision weight's, before deferral
  torch::Tensor lora_a_, lora_b_;
  double lora_scaling_ = 0.0;
  double lora_dropout_ = 0.0;
  bool lora_merged_ = false;
};
TORCH_MODULE(Linear);

// Token embedding with its weight created directly with the given options (meta-safe).
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab_size, int64_t dim, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& tokens);
  torch::Tensor weight;  // (vocab, dim)
};
TORCH_MODULE(Embedding);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // (dim)
  double eps;
};
TORCH_MODULE(RMSNorm);

// Keys and values of every layer, preallocated for `max_seq_len` positions:
// (batch, n_kv_heads, max_seq_len, head_dim) each.
class KVCache {
 public:
  KVCache(const LlamaConfig& config, int64_t batch, int64_t max_seq_len,
          const torch::TensorOptions& options);
  // Writes k, v (B, n_kv_heads, T, head_dim) at positions [start_pos, start_pos + T) of `layer`
  // and returns views of all keys and values so far: (B, n_kv_heads, start_pos + T, head_dim).
  std::pair<torch::Tensor, torch::Tensor> update(int64_t layer, int64_t start_pos,
                                                 const torch::Tensor& k, const torch::Tensor& v);
  int64_t max_seq_len() const { return max_seq_len_; }
  int64_t bytes() const;

 private:
  std::vector<torch::Tensor> keys_, values_;
  int64_t max_seq_len_;
};

// Rotary tables for positions [0, max_seq_len): cos and sin, (max_seq_len, head_dim / 2), fp32.
struct RopeTables {
  torch::Tensor cos, sin;
};
// Frequencies 1 / theta^(2i / head_dim), with the Llama 3 scaling when configured; (head_dim/2).
torch::Tensor rope_frequencies(const LlamaConfig& config);
// x: (B, T, heads, head_dim), Meta's interleaved pairs (x[2i], x[2i+1]) rotated by position.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& rope, int64_t start_pos);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const LlamaConfig& config, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x, int64_t start_pos, const RopeTables& rope,
                        const torch::Tensor& mask, KVCache* cache, int64_t layer);
  Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};
  AttentionKind kind = AttentionKind::kSdpa;

 private:
  // softmax(q k^T / sqrt(d) + mask) v, (B, H, T, D) from q (B, H, T, D) and k, v (B, KV, S, D).
  torch::Tensor explicit_attention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& mask) const;
  int64_t n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(const LlamaConfig& config, const torch::TensorOptions& options);
  // `output` applies to w2, the last projection.
  torch::Tensor forward(const torch::Tensor& x,
                        ProjectionOutput output = ProjectionOutput::kComputed);
  Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
};
TORCH_MODULE(FeedForward);

class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const LlamaConfig& config, int64_t layer_id,
                       const torch::TensorOptions& options);
  // `output` applies to the feed-forward's w2, the block's last projection.
  torch::Tensor forward(const torch::Tensor& x, int64_t start_pos, const RopeTables& rope,
                        const torch::Tensor& mask, KVCache* cache,
                        ProjectionOutput output = ProjectionOutput::kComputed);
  Attention attention{nullptr};
  FeedForward feed_forward{nullptr};
  RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
  int64_t layer_id;
};
TORCH_MODULE(TransformerBlock);

class TransformerImpl : public torch::nn::Module {
 public:
  TransformerImpl(LlamaConfig config, const ModelOptions& options);

  // tokens (B, T) int64 at positions [start_pos, start_pos + T); cache == nullptr means no cache
  // (the caller passes the whole sequence from position 0). Returns fp32 logits (B, T, vocab).
  torch::Tensor forward(const torch::Tensor& tokens, int64_t start_pos = 0,
                        KVCache* cache = nullptr);
  // The final-normed hidden states (B, T, dim), and the output projection (fp32 logits).
  torch::Tensor hidden(const torch::Tensor& tokens, int64_t start_pos, KVCache* cache);
  torch::Tensor logits(const torch::Tensor& hidden);

  // Gradient checkpointing: blocks whose index is a multiple of `every` are recomputed in
  // backward instead of keeping their activations (every == 0: off).
  void set_checkpointing(int64_t every);
  // Switches every layer's attention between the fused kernel and the explicit path.
  void set_attention(AttentionKind kind);

  const LlamaConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  // Parameters, counting a quantised weight's elements as parameters (as transformers counts
  // bitsandbytes' weights).
  int64_t param_count() const;

  Embedding tok_embeddings{nullptr};
  std::vector<TransformerBlock> layers;
  RMSNorm norm{nullptr};
  Linear output{nullptr};  // null when tied to tok_embeddings

 private:
  LlamaConfig config_;
  ModelOptions options_;
  RopeTables rope_;
  std::vector<bool> checkpointed_;
};
TORCH_MODULE(Transformer);

// The block's linear `target` (wq, wk, wv, wo, w1, w2, w3); throws on another name.
Linear block_linear(const TransformerBlock& block, const std::string& target);

// Fills every parameter, in named_parameters() order, by fill(name, destination). A weight whose
// quantisation is deferred (ModelOptions::quant) is filled into a full-precision tensor of its own
// and quantised at once. Every loader goes through here (init_random, load_weights, checkpoints).
using ParameterFill = std::function<void(const std::string& name, torch::Tensor& param)>;
void fill_parameters(Transformer& model, const ParameterFill& fill);

// Deterministic random weights: N(0, 0.02) for matrices, ones for norms (memory and time do not
// depend on the values).
void init_random(Transformer& model, uint64_t seed);

// Builds the model on the meta device: parameter count without allocating memory.
int64_t count_params_on_meta(const LlamaConfig& config);

}  // namespace hx
