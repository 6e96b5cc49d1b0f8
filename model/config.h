#pragma once
// LLaMA shapes and presets. No libtorch: the parent uses these for validation and estimates.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hx {

// Llama 3 rotary frequency scaling (Meta's apply_scaling).
struct RopeScaling {
  double factor = 32.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_pos = 8192;
};

struct LlamaConfig {
  std::string name;
  int64_t dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t vocab_size = 0;
  int64_t ffn_hidden = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool tie_embeddings = false;
  int64_t max_seq_len = 2048;  // size of the rotary table and the largest KV cache

  int64_t head_dim() const { return dim / n_heads; }
  // Parameter count from the shapes alone (the meta-device count must agree).
  int64_t param_count() const;
};

// The projections of a block that LoRA can adapt (config key `lora_targets`), in Meta's names;
// PEFT's are q_proj, k_proj, v_proj, o_proj, gate_proj, down_proj, up_proj.
inline constexpr std::string_view kLoraTargetNames[] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};

// "tiny", "small", "llama3.2-1b", "llama2-7b"; throws std::invalid_argument listing the known
// names otherwise.
LlamaConfig config_from_name(std::string_view name);
std::vector<std::string> preset_names();

// The largest size (dim, layers, heads, vocabulary, FFN width, max_seq_len) a config may have:
// far above any real model's, low enough that no shape arithmetic overflows int64.
inline constexpr int64_t kMaxModelSize = int64_t{1} << 31;
// The most parameters a config may count (param_count() stays far from overflow): 10^13.
inline constexpr double kMaxModelParams = 1e13;

// Checks the shapes fit together (heads divide dim, kv heads divide heads, even head_dim), every
// size in [1, kMaxModelSize], at most kMaxModelParams parameters, norm_eps finite and >= 0,
// rope_theta finite and > 0, and a rope scaling the model can compute. Throws
// std::invalid_argument naming the config and the value.
void validate_config(const LlamaConfig& config);

std::string describe(const LlamaConfig& config);  // multi-line, for `harness model`

}  // namespace hx
