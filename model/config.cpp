#include "model/config.h"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace hx {
namespace {

LlamaConfig tiny() {
  // A few million parameters: a fine-tuning step in milliseconds on a CPU, big enough that
  // every technique has something to act on (several layers, GQA, a vocabulary above 256 bytes).
  LlamaConfig c;
  c.name = "tiny";
  c.dim = 128;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 512;
  c.ffn_hidden = 384;
  c.norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{};
  c.max_seq_len = 1024;
  return c;
}

LlamaConfig small() {
  // About 100M parameters: the benchmark size (weights 0.4 GB in fp32).
  LlamaConfig c;
  c.name = "small";
  c.dim = 768;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 4;
  c.vocab_size = 32000;
  c.ffn_hidden = 2048;
  c.norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{};
  c.max_seq_len = 2048;
  return c;
}

LlamaConfig llama32_1b() {
  LlamaConfig c;
  c.name = "llama3.2-1b";
  c.dim = 2048;
  c.n_layers = 16;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.vocab_size = 128256;
  c.ffn_hidden = 8192;
  c.norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = RopeScaling{32.0, 1.0, 4.0, 8192};
  c.tie_embeddings = true;
  c.max_seq_len = 4096;
  return c;
}

LlamaConfig llama2_7b() {
  LlamaConfig c;
  c.name = "llama2-7b";
  c.dim = 4096;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.vocab_size = 32000;
  c.ffn_hidden = 11008;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_embeddings = false;
  c.max_seq_len = 4096;
  return c;
}

struct Preset {
  std::string_view name;
  LlamaConfig (*make)();
};
constexpr Preset kPresets[] = {
    {"tiny", tiny}, {"small", small}, {"llama3.2-1b", llama32_1b}, {"llama2-7b", llama2_7b}};

}  // namespace

int64_t LlamaConfig::param_count() const {
  const int64_t hd = head_dim();
  const int64_t attention = dim * n_heads * hd * 2 + dim * n_kv_heads * hd * 2;
  const int64_t feed_forward = 3 * dim * ffn_hidden;
  const int64_t per_layer = attention + feed_forward + 2 * dim;
  const int64_t embeddings = vocab_size * dim * (tie_embeddings ? 1 : 2);
  return embeddings + n_layers * per_layer + dim;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& p : kPresets) names.emplace_back(p.name);
  return names;
}

LlamaConfig config_from_name(std::string_view name) {
  for (const auto& p : kPresets)
    if (p.name == name) return p.make();
  std::string known;
  for (const auto& p : kPresets) known += (known.empty() ? "" : ", ") + std::string(p.name);
  throw std::invalid_argument("unknown model preset \"" + std::string(name) +
                              "\" (known: " + known + ")");
}

void validate_config(const LlamaConfig& c) {
  auto fail = [&](const std::string& msg) {
    throw std::invalid_argument("model config " + c.name + ": " + msg);
  };
  const std::pair<const char*, int64_t> sizes[] = {{"dim", c.dim},
                                                   {"n_layers", c.n_layers},
                                                   {"n_heads", c.n_heads},
                                                   {"n_kv_heads", c.n_kv_heads},
                                                   {"vocab_size", c.vocab_size},
                                                   {"ffn_hidden", c.ffn_hidden},
                                                   {"max_seq_len", c.max_seq_len}};
  for (const auto& [name, value] : sizes) {
    if (value <= 0)
      fail("all sizes must be positive (" + std::string(name) + " is " + std::to_string(value) +
           ")");
    if (value > kMaxModelSize)
      fail(std::string(name) + " " + std::to_string(value) + " is above the limit of 2^31");
  }
  if (c.dim % c.n_heads != 0) fail("dim must be a multiple of n_heads");
  if (c.n_heads % c.n_kv_heads != 0) fail("n_heads must be a multiple of n_kv_heads");
  if (c.head_dim() % 2 != 0) fail("head_dim must be even for rotary embeddings");
  // param_count() in double: sizes below 2^31 keep every product far from double's range.
  const double dim = static_cast<double>(c.dim), hd = static_cast<double>(c.head_dim());
  const double params = static_cast<double>(c.vocab_size) * dim * (c.tie_embeddings ? 1 : 2) +
                        static_cast<double>(c.n_layers) *
                            (2 * dim * hd * static_cast<double>(c.n_heads + c.n_kv_heads) +
                             3 * dim * static_cast<double>(c.ffn_hidden) + 2 * dim) +
                        dim;
  if (params > kMaxModelParams) {
    char count[32];
    std::snprintf(count, sizeof count, "%.3g", params);
    fail(std::string(count) + " parameters: above the limit of 10^13");
  }
  if (!std::isfinite(c.norm_eps) || c.norm_eps < 0) fail("norm_eps must be finite and >= 0");
  if (!std::isfinite(c.rope_theta) || c.rope_theta <= 0) fail("rope_theta must be finite and > 0");
  if (c.rope_scaling) {
    const RopeScaling& s = *c.rope_scaling;
    // Meta's apply_scaling divides by factor, low_freq_factor and their difference.
    if (!std::isfinite(s.factor) || s.factor <= 0 || !std::isfinite(s.low_freq_factor) ||
        s.low_freq_factor <= 0 || !std::isfinite(s.high_freq_factor) ||
        s.high_freq_factor <= s.low_freq_factor || s.original_max_pos <= 0)
      fail(
          "rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
          "original_max_position_embeddings > 0");
  }
}

std::string describe(const LlamaConfig& c) {
  std::ostringstream out;
  out << "preset        " << c.name << "\n"
      << "dim           " << c.dim << "\n"
      << "n_layers      " << c.n_layers << "\n"
      << "n_heads       " << c.n_heads << "\n"
      << "n_kv_heads    " << c.n_kv_heads << "\n"
      << "head_dim      " << c.head_dim() << "\n"
      << "ffn_hidden    " << c.ffn_hidden << "\n"
      << "vocab_size    " << c.vocab_size << "\n"
      << "norm_eps      " << c.norm_eps << "\n"
      << "rope_theta    " << c.rope_theta << "\n";
  if (c.rope_scaling) {
    out << "rope_scaling  factor " << c.rope_scaling->factor << ", low_freq_factor "
        << c.rope_scaling->low_freq_factor << ", high_freq_factor "
        << c.rope_scaling->high_freq_factor << ", original_max_pos "
        << c.rope_scaling->original_max_pos << "\n";
  } else {
    out << "rope_scaling  none\n";
  }
  out << "tied output   " << (c.tie_embeddings ? "yes" : "no") << "\n"
      << "max_seq_len   " << c.max_seq_len << "\n";
  return out.str();
}

}  // namespace hx
