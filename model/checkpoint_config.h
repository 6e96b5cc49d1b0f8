#pragma once
// What a checkpoint's JSON says, read without libtorch: HF config.json and Meta params.json ->
// LlamaConfig (model/checkpoint_io.h reads the tensors). And the typed field reads that every
// reader of a checkpoint's JSON here uses: an error names the file and the key.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "model/config.h"

namespace hx {

// HF config.json -> LlamaConfig. `source` names the file in errors. Rejects what the model
// cannot compute (biases, another activation, a head_dim other than hidden/heads, rope scaling
// other than "llama3").
LlamaConfig config_from_hf_json(const nlohmann::json& j, const std::string& source);

// Meta params.json -> LlamaConfig. vocab_size <= 0 (Llama 2's files say -1) is left 0 for the
// caller to take from the embedding's shape. use_scaled_rope gives Llama 3.1's scaling with
// factor `rope_scaling_factor` (8 when absent, as in Meta's code; Llama 3.2 1B/3B use 32 but
// their params.json does not say so: add "rope_scaling_factor": 32 to it).
LlamaConfig config_from_meta_params(const nlohmann::json& j, const std::string& source);
// Meta's FeedForward size: int(2 * 4 * dim / 3), times ffn_dim_multiplier, rounded up to a
// multiple of multiple_of; 0 (a size validate_config refuses) when dim or multiple_of is not in
// [1, kMaxModelSize] or the multiplied size is not in [0, kMaxModelSize].
int64_t meta_ffn_hidden(int64_t dim, int64_t multiple_of, std::optional<double> ffn_dim_multiplier);

namespace checked_json {

// A value as an error message shows it: a scalar as written, an array or object by its type
// (the text of a deeply nested one would exhaust the stack of the recursive dump).
inline std::string shown(const nlohmann::json& v) {
  return v.is_structured() ? std::string("an ") + v.type_name() : v.dump();
}

// The value of `key` as T (bool, std::string, an integer or a floating type); a missing or null
// key, or a value of another type, is a std::invalid_argument naming `source` and the key.
template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null())
    throw std::invalid_argument(source + ": missing key \"" + key + "\"");
  const nlohmann::json& v = j.at(key);
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean())
      throw std::invalid_argument(source + ": " + key + ": expected true or false, got " +
                                  shown(v));
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string())
      throw std::invalid_argument(source + ": " + key + ": expected a string, got " + shown(v));
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer())
      throw std::invalid_argument(source + ": " + key + ": expected an integer, got " + shown(v));
  } else {
    if (!v.is_number())
      throw std::invalid_argument(source + ": " + key + ": expected a number, got " + shown(v));
  }
  return v.get<T>();
}

// `fallback` when `key` is missing or null; else field<T>.
template <typename T>
T field_or(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return field<T>(j, key, source);
}

// `j` itself when it is an object; else a std::invalid_argument naming `source`.
inline const nlohmann::json& object_of(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw std::invalid_argument(source + ": expected a JSON object");
  return j;
}

}  // namespace checked_json
}  // namespace hx
