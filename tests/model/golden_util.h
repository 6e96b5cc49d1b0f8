#pragma once
// Shared by the golden and checkpoint tests: where the golden files are, and the config of a
// golden case (tests/golden/<case>.json, written by llama_reference.py).
#include <nlohmann/json.hpp>

#include <string>

#include "model/config.h"
#include "source_dir.h"

namespace hx::testing {

inline std::string golden_dir() { return std::string(kHxSourceDir) + "/tests/golden/"; }

inline LlamaConfig config_from_golden(const nlohmann::json& j) {
  LlamaConfig c;
  c.name = "golden";
  c.dim = j.at("dim");
  c.n_layers = j.at("n_layers");
  c.n_heads = j.at("n_heads");
  c.n_kv_heads = j.at("n_kv_heads");
  c.vocab_size = j.at("vocab_size");
  c.ffn_hidden = j.at("ffn_hidden");
  c.norm_eps = j.at("norm_eps");
  c.rope_theta = j.at("rope_theta");
  if (!j.at("rope_scaling").is_null()) {
    const auto& s = j.at("rope_scaling");
    c.rope_scaling = RopeScaling{s.at("factor"), s.at("low_freq_factor"), s.at("high_freq_factor"),
                                 s.at("original_max_pos")};
  }
  c.tie_embeddings = j.at("tie_embeddings");
  c.max_seq_len = j.at("max_seq_len");
  return c;
}

}  // namespace hx::testing
