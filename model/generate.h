#pragma once
// Prefill, one decode step, and the generation loop, with the KV cache as an explicit object:
// "without a cache" recomputes the whole prefix at every step.
#include <functional>
#include <vector>

#include "model/llama.h"

namespace hx {

struct SamplingOptions {
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0: no top-k filter
  double top_p = 1.0;  // 1: no nucleus filter
  uint64_t seed = 0;
};

// logits (B, vocab) -> next tokens (B, 1), int64.
torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& options,
                          at::Generator& generator);

// Logits (B, vocab) of the last prompt position; fills `cache` when given.
torch::Tensor prefill(Transformer& model, const torch::Tensor& prompt, KVCache* cache);
// Logits (B, vocab) of the next position after feeding `token` (B, 1) at position `pos`.
torch::Tensor decode_one_token(Transformer& model, const torch::Tensor& token, int64_t pos,
                               KVCache& cache);

struct GenerateResult {
  torch::Tensor tokens;  // (B, new_tokens), prompt excluded
  double prefill_s = 0;
  double decode_s = 0;                 // all decode steps
  std::vector<double> decode_step_s;   // per step
  int64_t cache_bytes = 0;
};

// Batched prompts of equal length (B, T). `synchronize` is called before every clock read (the
// device's synchronisation; no-op on CPU). The first new token comes from the prefill.
GenerateResult generate(Transformer& model, const torch::Tensor& prompt, int64_t new_tokens,
                        bool use_cache, const SamplingOptions& sampling,
                        const std::function<void()>& synchronize = [] {});

}  // namespace hx
