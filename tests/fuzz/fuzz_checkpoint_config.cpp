// A checkpoint's config: HF config.json and Meta params.json (model/checkpoint_config.h), each
// followed by validate_config and the parameter count, as the checkpoint loaders do. Any bytes are
// either a config the model can be built from or a std::invalid_argument naming the file (or, for
// a config that parses but does not fit together, the config).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "model/checkpoint_config.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

template <typename Read>
void check(const nlohmann::json& j, const std::string& path, Read read) {
  hx::LlamaConfig config;
  try {
    config = read(j, path);
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ": ");
    return;
  }
  config.name = "input";
  if (config.vocab_size <= 0) config.vocab_size = 32000;  // Meta's -1: the embedding's rows
  try {
    hx::validate_config(config);
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, "model config input: ");
    return;
  }
  // What the worker computes from a valid config before allocating anything.
  if (config.param_count() <= 0 || config.head_dim() <= 0) {
    hx::fuzz::finding("a valid config with " + std::to_string(config.param_count()) +
                      " parameters and head_dim " + std::to_string(config.head_dim()));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // the loaders report "FILE: bad JSON: ..." (read_json_file)
  }
  check(j, "config.json", &hx::config_from_hf_json);
  check(j, "params.json", &hx::config_from_meta_params);
  return 0;
}
