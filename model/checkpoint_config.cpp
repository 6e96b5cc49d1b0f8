// HF config.json and Meta params.json -> LlamaConfig (moved here from checkpoint_io.cpp so that
// they build without libtorch: tests/fuzz/fuzz_checkpoint_config.cpp).
#include "model/checkpoint_config.h"

#include <algorithm>

namespace hx {

using Json = nlohmann::json;
using checked_json::field;
using checked_json::field_or;
using checked_json::object_of;

LlamaConfig config_from_hf_json(const Json& j, const std::string& source) {
  object_of(j, source);
  const auto model_type = field_or<std::string>(j, "model_type", "llama", source);
  if (model_type != "llama")
    throw std::invalid_argument(source + ": model_type \"" + model_type + "\" (expected llama)");
  const auto act = field_or<std::string>(j, "hidden_act", "silu", source);
  if (act != "silu")
    throw std::invalid_argument(source + ": hidden_act \"" + act + "\" (the model computes silu)");
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (field_or<bool>(j, bias, false, source))
      throw std::invalid_argument(source + ": " + bias + " is true (the model has no biases)");
  LlamaConfig c;
  c.dim = field<int64_t>(j, "hidden_size", source);
  c.n_layers = field<int64_t>(j, "num_hidden_layers", source);
  c.n_heads = field<int64_t>(j, "num_attention_heads", source);
  c.n_kv_heads = field_or<int64_t>(j, "num_key_value_heads", c.n_heads, source);
  c.vocab_size = field<int64_t>(j, "vocab_size", source);
  c.ffn_hidden = field<int64_t>(j, "intermediate_size", source);
  c.norm_eps = field_or<double>(j, "rms_norm_eps", 1e-6, source);  // HF's LlamaConfig default
  c.tie_embeddings = field_or<bool>(j, "tie_word_embeddings", false, source);
  c.max_seq_len = field_or<int64_t>(j, "max_position_embeddings", 2048, source);
  if (c.n_heads > 0) {
    const int64_t head_dim = field_or<int64_t>(j, "head_dim", c.dim / c.n_heads, source);
    if (head_dim != c.dim / c.n_heads || c.dim % c.n_heads != 0)
      throw std::invalid_argument(source + ": head_dim " + std::to_string(head_dim) +
                                  " is not hidden_size / num_attention_heads (unsupported)");
  }
  // transformers >= 5 writes rope_theta and the scaling into one "rope_parameters" object
  // (rope_type "default" when unscaled); older files have top-level rope_theta and rope_scaling.
  const char* rope_key = nullptr;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j.at(key).is_null()) continue;
    if (rope_key != nullptr && j.at(key) != j.at(rope_key))
      throw std::invalid_argument(source + ": rope_parameters and rope_scaling differ");
    rope_key = key;
  }
  c.rope_theta = field_or<double>(j, "rope_theta", 10000.0, source);
  if (rope_key != nullptr) {
    const Json& s = j.at(rope_key);
    const std::string where = source + ": " + rope_key;
    object_of(s, where);
    if (s.contains("rope_theta") && !s.at("rope_theta").is_null()) {
      const double theta = field<double>(s, "rope_theta", where);
      if (j.contains("rope_theta") && !j.at("rope_theta").is_null() && theta != c.rope_theta)
        throw std::invalid_argument(where + ": rope_theta " + s.at("rope_theta").dump() +
                                    " differs from the top-level rope_theta " +
                                    j.at("rope_theta").dump());
      c.rope_theta = theta;
    }
    const auto type = s.contains("rope_type") ? field<std::string>(s, "rope_type", where)
                                              : field<std::string>(s, "type", where);
    if (type == "llama3") {
      c.rope_scaling =
          RopeScaling{field<double>(s, "factor", where), field<double>(s, "low_freq_factor", where),
                      field<double>(s, "high_freq_factor", where),
                      field<int64_t>(s, "original_max_position_embeddings", where)};
    } else if (type != "default") {
      throw std::invalid_argument(where + ": rope_type \"" + type +
                                  "\" is not supported (expected llama3 or default)");
    }
  }
  return c;
}

int64_t meta_ffn_hidden(int64_t dim, int64_t multiple_of, std::optional<double> multiplier) {
  // Meta's FeedForward: hidden = int(2 * (4 * dim) / 3); int(multiplier * hidden); round up.
  // Out of range, 0 instead of a signed overflow (dim, the multiplier and multiple_of are a
  // user's file's numbers); validate_config refuses the size.
  if (dim <= 0 || dim > kMaxModelSize || multiple_of <= 0 || multiple_of > kMaxModelSize) return 0;
  int64_t hidden = 2 * (4 * dim) / 3;
  if (multiplier) {
    const double scaled = *multiplier * static_cast<double>(hidden);
    if (!(scaled >= 0 && scaled <= static_cast<double>(kMaxModelSize))) return 0;  // NaN too
    hidden = static_cast<int64_t>(scaled);
  }
  return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

LlamaConfig config_from_meta_params(const Json& j, const std::string& source) {
  object_of(j, source);
  LlamaConfig c;
  c.dim = field<int64_t>(j, "dim", source);
  c.n_layers = field<int64_t>(j, "n_layers", source);
  c.n_heads = field<int64_t>(j, "n_heads", source);
  c.n_kv_heads = field_or<int64_t>(j, "n_kv_heads", c.n_heads, source);
  c.vocab_size = std::max<int64_t>(0, field_or<int64_t>(j, "vocab_size", 0, source));
  const int64_t multiple_of = field_or<int64_t>(j, "multiple_of", 256, source);
  if (multiple_of <= 0) throw std::invalid_argument(source + ": multiple_of must be positive");
  std::optional<double> multiplier;
  if (j.contains("ffn_dim_multiplier") && !j.at("ffn_dim_multiplier").is_null())
    multiplier = field<double>(j, "ffn_dim_multiplier", source);
  c.ffn_hidden = meta_ffn_hidden(c.dim, multiple_of, multiplier);
  c.norm_eps = field_or<double>(j, "norm_eps", 1e-5, source);
  c.rope_theta = field_or<double>(j, "rope_theta", 10000.0, source);
  if (field_or<bool>(j, "use_scaled_rope", false, source)) {
    c.rope_scaling =
        RopeScaling{field_or<double>(j, "rope_scaling_factor", 8.0, source), 1.0, 4.0, 8192};
  }
  // Meta's code takes max_seq_len when it builds the model; params.json rarely says.
  c.max_seq_len = field_or<int64_t>(j, "max_seq_len", 8192, source);
  return c;
}

}  // namespace hx
