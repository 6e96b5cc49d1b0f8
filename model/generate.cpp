#include "model/generate.h"

#include <chrono>

namespace hx {
namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

torch::Tensor sample_next(const torch::Tensor& logits, const SamplingOptions& options,
                          at::Generator& generator) {
  if (options.greedy) return logits.argmax(-1, /*keepdim=*/true);
  auto scaled = logits.to(torch::kFloat32) / options.temperature;
  if (options.top_k > 0 && options.top_k < scaled.size(-1)) {
    auto kth = std::get<0>(scaled.topk(options.top_k, -1)).narrow(-1, options.top_k - 1, 1);
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(scaled, -1);
  if (options.top_p < 1.0) {
    // Nucleus: keep the smallest prefix of the sorted distribution whose mass reaches top_p.
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    auto before = sorted.cumsum(-1) - sorted;  // mass strictly before each token
    sorted = sorted.masked_fill(before > options.top_p, 0.0);
    probs = torch::zeros_like(probs).scatter(-1, order, sorted);
    probs = probs / probs.sum(-1, true);
  }
  // Sampled on the CPU with a seeded generator: the same tokens on every device.
  return torch::multinomial(probs.cpu(), 1, /*replacement=*/false, generator).to(logits.device());
}

torch::Tensor prefill(Transformer& model, const torch::Tensor& prompt, KVCache* cache) {
  auto h = model->hidden(prompt, 0, cache);
  return model->logits(h.select(1, h.size(1) - 1));  // only the last position's logits
}

torch::Tensor decode_one_token(Transformer& model, const torch::Tensor& token, int64_t pos,
                               KVCache& cache) {
  return model->logits(model->hidden(token, pos, &cache).select(1, 0));
}

GenerateResult generate(Transformer& model, const torch::Tensor& prompt, int64_t new_tokens,
                        bool use_cache, const SamplingOptions& sampling,
                        const std::function<void()>& synchronize) {
  torch::NoGradGuard no_grad;
  const int64_t batch = prompt.size(0);
  const int64_t prompt_len = prompt.size(1);
  auto generator = at::detail::createCPUGenerator(sampling.seed);
  GenerateResult result;
  std::optional<KVCache> cache;
  if (use_cache) {
    cache.emplace(model->config(), batch, prompt_len + new_tokens,
                  model->options().tensor_options());
    result.cache_bytes = cache->bytes();
  }
  std::vector<torch::Tensor> generated;
  generated.reserve(static_cast<size_t>(new_tokens));

  synchronize();
  auto start = std::chrono::steady_clock::now();
  auto logits = prefill(model, prompt, cache ? &*cache : nullptr);
  generated.push_back(sample_next(logits, sampling, generator));
  synchronize();
  result.prefill_s = seconds_since(start);

  // Without a cache the whole sequence so far is fed again at every step.
  torch::Tensor sequence = use_cache ? torch::Tensor() : prompt;
  for (int64_t i = 1; i < new_tokens; ++i) {
    auto step_start = std::chrono::steady_clock::now();
    const auto& last = generated.back();
    if (use_cache) {
      logits = decode_one_token(model, last, prompt_len + i - 1, *cache);
    } else {
      sequence = torch::cat({sequence, last}, 1);
      logits = prefill(model, sequence, nullptr);
    }
    generated.push_back(sample_next(logits, sampling, generator));
    synchronize();
    result.decode_step_s.push_back(seconds_since(step_start));
    result.decode_s += result.decode_step_s.back();
  }
  result.tokens = torch::cat(generated, 1);
  return result;
}

}  // namespace hx
