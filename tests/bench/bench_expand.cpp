// Expansion of a big matrix: load_spec (which counts the runs against kMaxRuns and checks that
// some run is left), for_each_run (run ids and canonical configs, one run at a time: what
// `harness expand` walks) and expand() (every RunConfig with its Json config: what `harness run`
// plans with). The argument is the number of axes of 8 values over finetune keys (7: 2,097,152
// combinations), with one excluded pair of values and one include entry.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "harness/plan/spec.h"

namespace {

namespace fs = std::filesystem;

// A spec of `axes` axes (up to 7) of 8 values each.
std::string big_spec(int axes) {
  const char* names[] = {"batch_size", "lora_r",  "max_steps", "warmup_steps",
                         "ga",         "seq_len", "gc_every"};
  std::string text =
      "name: bench_expand\nmodel: {preset: tiny}\nworkload: finetune\ndevice: cpu\n"
      "data: {format: random, seq_len: 32}\n"
      "fixed: {lr: 1.0e-4, optimizer: adamw, lora_alpha: 32, lora_dropout: 0.05, "
      "lora_targets: [wq, wv], threads: 1}\nmatrix:\n";
  std::string include;
  for (int a = 0; a < axes; ++a) {
    text += std::string("  ") + names[a] + ": [";
    for (int v = 0; v < 8; ++v) text += (v > 0 ? ", " : "") + std::to_string(v + 1);
    text += "]\n";
    include += (a > 0 ? ", " : "") + std::string(names[a]) + ": " + (a == 0 ? "99" : "1");
  }
  text += "exclude:\n  - {batch_size: 2, lora_r: 2}\ninclude:\n  - {" + include + "}\n";
  return text;
}

fs::path write_spec(int axes) {
  const fs::path path = fs::temp_directory_path() / ("hx_bench_expand_" + std::to_string(getpid()) +
                                                     "_" + std::to_string(axes) + ".yaml");
  std::ofstream(path) << big_spec(axes);
  return path;
}

void BM_LoadSpec(benchmark::State& state) {
  const fs::path path = write_spec(static_cast<int>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(hx::load_spec(path.string()));
  fs::remove(path);
}

void BM_ForEachRun(benchmark::State& state) {
  const fs::path path = write_spec(static_cast<int>(state.range(0)));
  const hx::Spec spec = hx::load_spec(path.string());
  size_t runs = 0;
  for (auto _ : state) {
    runs = 0;
    hx::for_each_run(spec, [&runs](const hx::RunRef& run) {
      benchmark::DoNotOptimize(run.run_id.data());
      ++runs;
    });
  }
  state.counters["runs"] = static_cast<double>(runs);
  state.counters["runs/s"] = benchmark::Counter(static_cast<double>(runs) * state.iterations(),
                                                benchmark::Counter::kIsRate);
  fs::remove(path);
}

void BM_Expand(benchmark::State& state) {
  const fs::path path = write_spec(static_cast<int>(state.range(0)));
  const hx::Spec spec = hx::load_spec(path.string());
  size_t runs = 0;
  for (auto _ : state) {
    const std::vector<hx::RunConfig> planned = hx::expand(spec);
    runs = planned.size();
    benchmark::DoNotOptimize(planned.data());
  }
  state.counters["runs"] = static_cast<double>(runs);
  state.counters["runs/s"] = benchmark::Counter(static_cast<double>(runs) * state.iterations(),
                                                benchmark::Counter::kIsRate);
  fs::remove(path);
}

}  // namespace

BENCHMARK(BM_LoadSpec)->Arg(5)->Arg(7)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ForEachRun)->Arg(5)->Arg(7)->Unit(benchmark::kMillisecond);
// 2 million RunConfigs would take ~3 GB: 6 axes (262,144 runs) is the biggest.
BENCHMARK(BM_Expand)->Arg(5)->Arg(6)->Unit(benchmark::kMillisecond);
