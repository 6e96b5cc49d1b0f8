// Prefill and per-token decode of the LLaMA model, with and without the KV cache; QLoRA's 4-bit
// dequantisation of one weight beside the product it feeds.
//   build/tests/bench/bench_model [--threads N via HX_THREADS]
// Compare ratios measured in one run; the machines are shared and noisy.
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "model/generate.h"
#include "model/quant4.h"

namespace hx {
namespace {

struct Fixture {
  Transformer model{nullptr};
  torch::Tensor prompt;
};

Fixture& fixture(const std::string& preset, int64_t batch, int64_t prompt_len) {
  static std::map<std::string, Fixture> cache;
  const std::string key = preset + "/" + std::to_string(batch) + "/" + std::to_string(prompt_len);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Fixture f;
  f.model = Transformer(config_from_name(preset), ModelOptions{});
  init_random(f.model, 0);
  f.model->eval();
  f.prompt = torch::randint(3, f.model->config().vocab_size, {batch, prompt_len}, torch::kInt64);
  return cache.emplace(key, std::move(f)).first->second;
}

void set_threads() {
  const char* env = std::getenv("HX_THREADS");
  at::set_num_threads(env ? std::atoi(env) : 2);
}

// state.range(0): batch; prompt of 128 tokens.
void BM_Prefill(benchmark::State& state, const std::string& preset) {
  set_threads();
  auto& f = fixture(preset, state.range(0), 128);
  torch::NoGradGuard no_grad;
  for (auto _ : state) {
    KVCache cache(f.model->config(), f.prompt.size(0), 160, f.model->options().tensor_options());
    benchmark::DoNotOptimize(prefill(f.model, f.prompt, &cache));
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(f.prompt.numel()),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

// One new token after a 128-token prompt: with the cache one position, without it all 129.
void BM_DecodeToken(benchmark::State& state, const std::string& preset, bool use_cache) {
  set_threads();
  auto& f = fixture(preset, state.range(0), 128);
  torch::NoGradGuard no_grad;
  KVCache cache(f.model->config(), f.prompt.size(0), 160, f.model->options().tensor_options());
  auto logits = prefill(f.model, f.prompt, &cache);
  auto next = logits.argmax(-1, true);
  auto sequence = torch::cat({f.prompt, next}, 1);
  for (auto _ : state) {
    if (use_cache) {
      benchmark::DoNotOptimize(decode_one_token(f.model, next, 128, cache));
    } else {
      benchmark::DoNotOptimize(prefill(f.model, sequence, nullptr));
    }
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(f.prompt.size(0)),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK_CAPTURE(BM_Prefill, tiny, std::string("tiny"))
    ->Arg(1)
    ->Arg(4)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Prefill, small, std::string("small"))->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeToken, tiny_cache, std::string("tiny"), true)
    ->Arg(1)
    ->Arg(4)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeToken, tiny_nocache, std::string("tiny"), false)
    ->Arg(1)
    ->Arg(4)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeToken, small_cache, std::string("small"), true)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeToken, small_nocache, std::string("small"), false)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond);

// small's w1 (2048 x 768), NF4 with double quantisation: dequantised to fp32 (arg 0) or bf16
// (arg 1), as Quant4Matmul does twice a step (three times with checkpointing). BM_Dequantize4bit
// is the path the model takes (the AVX-512 pass where the CPU has it), BM_Dequantize4bitOps the
// libtorch-op path (CUDA's, and the CPU's without AVX-512): their ratio is the kernel's gain.
template <torch::Tensor (*Dequantize)(const Quant4Weight&, torch::Dtype)>
void dequantize_small_w1(benchmark::State& state) {
  set_threads();
  const auto q = quantize_4bit(torch::randn({2048, 768}) * 0.02, QuantType::kNf4, 64, true);
  const auto dtype = state.range(0) == 0 ? torch::kFloat32 : torch::kBFloat16;
  for (auto _ : state) benchmark::DoNotOptimize(Dequantize(q, dtype));
}
void BM_Dequantize4bit(benchmark::State& state) { dequantize_small_w1<dequantize_4bit>(state); }
void BM_Dequantize4bitOps(benchmark::State& state) {
  dequantize_small_w1<dequantize_4bit_ops>(state);
}
BENCHMARK(BM_Dequantize4bit)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Dequantize4bitOps)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// The product that weight feeds in a step of batch 1 x 256 tokens, fp32: the dequantisation's
// share of a 4-bit linear is BM_Dequantize4bit/0 over this.
void BM_LinearOfThatWeight(benchmark::State& state) {
  set_threads();
  const auto w = torch::randn({2048, 768});
  const auto x = torch::randn({256, 768});
  for (auto _ : state) benchmark::DoNotOptimize(torch::linear(x, w));
}
BENCHMARK(BM_LinearOfThatWeight)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace hx

BENCHMARK_MAIN();
