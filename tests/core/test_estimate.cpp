// The analytic memory estimate (harness/estimate/estimate.h, docs/memory-model.md): known figures
// of the presets, the behaviour of each technique (QLoRA's stored bits among them), the Alpaca
// lengths, and peaks measured by the worker's counting allocator (libtorch 1.13, CPU) that the
// estimate must reproduce.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "harness/estimate/estimate.h"
#include "harness/plan/spec.h"
#include "model/config.h"

namespace hx {
namespace {

constexpr double kMB = 1024.0 * 1024.0;

// A one-run finetune spec on `preset` with `fixed` config (YAML flow mapping text).
Spec finetune_spec(const std::string& preset, const std::string& fixed,
                   const std::string& data = "{format: random, seq_len: 64}",
                   const std::string& device = "cpu") {
  return parse_spec("name: est\nmodel: {preset: " + preset + ", weights: random, seed: 0}\n" +
                        "workload: finetune\ndevice: " + device + "\ndata: " + data +
                        "\nfixed: " + fixed + "\n",
                    "est.yaml");
}

MemoryEstimate estimate_one(const Spec& spec, const std::string& libtorch = "1.13.0") {
  const auto runs = expand(spec);
  EXPECT_EQ(runs.size(), 1u);
  EstimateOptions options;
  options.libtorch = libtorch;
  return estimate_memory(spec, runs.at(0), options);
}

TEST(Estimate, Llama32_1bFp32WeightsAreParamsTimesFour) {
  const auto e = estimate_one(finetune_spec("llama3.2-1b", "{max_steps: 2, seq_len: 16}"));
  EXPECT_EQ(e.params, 1235814400);
  EXPECT_EQ(e.weights, int64_t{1235814400} * 4);
  EXPECT_EQ(e.trainable, 1235814400);
  EXPECT_EQ(e.grads, int64_t{1235814400} * 4);
  EXPECT_EQ(e.optimizer, 0);  // sgd without momentum
  EXPECT_EQ(e.master, 0);
  EXPECT_GT(e.peak, e.weights + e.grads);
}

TEST(Estimate, Bf16WeightsAreParamsTimesTwo) {
  const auto e =
      estimate_one(finetune_spec("llama3.2-1b", "{max_steps: 2, seq_len: 16, dtype: bf16}"));
  EXPECT_EQ(e.weights, int64_t{1235814400} * 2);
  EXPECT_EQ(e.grads, int64_t{1235814400} * 2);
}

TEST(Estimate, LoraR16OnWqWvOfLlama32_1b) {
  const auto c = config_from_name("llama3.2-1b");
  EXPECT_EQ(lora_param_count(c, 16, {"wq", "wv"}), 1703936);
  EXPECT_EQ(lora_param_count(c, 8, {"wq", "wv"}), 1703936 / 2);
  EXPECT_THROW(lora_param_count(c, 16, {"wz"}), std::invalid_argument);

  const auto e = estimate_one(finetune_spec(
      "llama3.2-1b", "{max_steps: 2, seq_len: 16, lora: on, lora_r: 16, lora_targets: [wq, wv]}"));
  EXPECT_EQ(e.trainable, 1703936);
  EXPECT_EQ(e.weights, (int64_t{1235814400} + 1703936) * 4);
  EXPECT_EQ(e.grads, int64_t{1703936} * 4);
}

TEST(Estimate, AdamwKeepsEightBytesPerTrainableParameter) {
  const auto full = estimate_one(finetune_spec("small", "{max_steps: 2, optimizer: adamw}"));
  EXPECT_EQ(full.optimizer, 8 * full.trainable);
  const auto lora =
      estimate_one(finetune_spec("small", "{max_steps: 2, optimizer: adamw, lora: on}"));
  EXPECT_EQ(lora.optimizer, 8 * lora.trainable);
  const auto sgd = estimate_one(finetune_spec("small", "{max_steps: 2, optimizer: sgd}"));
  EXPECT_EQ(sgd.optimizer, 0);
  // The state lives across steps: the AdamW peak exceeds the SGD one by at least the state.
  EXPECT_GE(full.peak - sgd.peak, full.optimizer);
}

TEST(Estimate, GradientCheckpointingReducesActivationsAndPeak) {
  for (const std::string lora : {"off", "on"}) {
    const std::string base = "{max_steps: 2, batch_size: 2, seq_len: 256, lora: " + lora;
    const auto off = estimate_one(finetune_spec("tiny", base + ", gc: off}"));
    const auto on = estimate_one(finetune_spec("tiny", base + ", gc: on}"));
    EXPECT_LT(on.activations * 4, off.activations) << "lora " << lora;
    EXPECT_LT(on.peak, off.peak) << "lora " << lora;
    EXPECT_EQ(on.weights, off.weights);
    EXPECT_EQ(on.grads, off.grads);
    const auto every2 = estimate_one(finetune_spec("tiny", base + ", gc: on, gc_every: 2}"));
    EXPECT_GT(every2.activations, on.activations);
    EXPECT_LT(every2.activations, off.activations);
  }
}

TEST(Estimate, BatchTwoDoublesActivations) {
  for (const std::string preset : {"tiny", "small"}) {
    const auto b1 = estimate_one(finetune_spec(preset, "{max_steps: 2, batch_size: 1}"));
    const auto b2 = estimate_one(finetune_spec(preset, "{max_steps: 2, batch_size: 2}"));
    const double ratio = static_cast<double>(b2.activations) / static_cast<double>(b1.activations);
    EXPECT_NEAR(ratio, 2.0, 0.05) << preset;
    EXPECT_EQ(b1.weights, b2.weights);
  }
}

TEST(Estimate, LongerSequencesGrowActivationsFasterThanLinearly) {
  // The attention probabilities are heads x s^2 per sequence.
  const auto s128 = estimate_one(finetune_spec("tiny", "{max_steps: 2, seq_len: 128}"));
  const auto s256 = estimate_one(finetune_spec("tiny", "{max_steps: 2, seq_len: 256}"));
  EXPECT_GT(s256.activations, 2 * s128.activations);
  EXPECT_EQ(s256.seq_len, 256);
}

TEST(Estimate, MeanSavingItsInputBeforeLibtorch2) {
  // libtorch 1.13 keeps x^2 of every RMSNorm for backward (measured): two (tokens, dim) fp32
  // tensors per layer more than 2.x.
  const auto spec = finetune_spec("tiny", "{max_steps: 2, batch_size: 2, seq_len: 64}");
  const auto old_torch = estimate_one(spec, "1.13.0");
  const auto new_torch = estimate_one(spec, "2.4.1");
  const auto c = config_from_name("tiny");
  EXPECT_EQ(old_torch.activations - new_torch.activations,
            c.n_layers * 2 * (2 * 64) * c.dim * 4 + (2 * 64) * c.dim * 4);  // + the final norm
}

// Peaks measured by `harness run` on this repository's CPU worker (libtorch 1.13, counting
// allocator, math attention), tiny preset, fp32, random data, max_steps 3: the estimate still
// reproduces them for a 1.13 environment (stored runs of old baselines). The live check on this
// build's libtorch is tests/e2e's EstimateEqualsMeasuredPeaks.
TEST(Estimate, ReproducesMeasuredPeaksOfTiny) {
  struct Case {
    const char* fixed;
    double measured_mb;
  };
  const Case cases[] = {
      {"{optimizer: sgd, lora: off, gc: off, batch_size: 4, seq_len: 256}", 73.672340},
      {"{optimizer: sgd, lora: off, gc: off, batch_size: 1, seq_len: 64}", 7.414074},
      {"{optimizer: sgd, lora: off, gc: on, batch_size: 4, seq_len: 256}", 26.117870},
      {"{optimizer: sgd, lora: on, gc: off, batch_size: 4, seq_len: 256}", 62.777809},
      {"{optimizer: sgd, lora: on, gc: on, batch_size: 1, seq_len: 256}", 9.174999},
      {"{optimizer: adamw, lora: off, gc: off, batch_size: 1, seq_len: 64}", 14.642590},
      {"{optimizer: adamw, lora: off, gc: on, batch_size: 4, seq_len: 64}", 17.499706},
      {"{optimizer: adamw, lora: on, gc: off, batch_size: 1, seq_len: 256}", 18.713390},
  };
  for (const auto& c : cases) {
    std::string fixed = c.fixed;
    fixed.insert(
        1, "attention: math, max_steps: 3, warmup_steps: 1, lr: 1.0e-4, lora_dropout: 0.05, ");
    const auto e = estimate_one(finetune_spec("tiny", fixed));
    EXPECT_NEAR(static_cast<double>(e.peak) / kMB, c.measured_mb, 0.01 * c.measured_mb) << c.fixed;
  }
}

TEST(Estimate, PeakMomentFollowsTheRegime) {
  // Full fine-tuning of a short sequence: the gradients dominate, the peak is late in backward
  // or at the optimizer; LoRA on a long batch: at the loss, where activations are all alive.
  const auto full = estimate_one(finetune_spec("small", "{max_steps: 2, seq_len: 64}"));
  EXPECT_NE(full.peak_at.find("backward"), std::string::npos) << full.peak_at;
  const auto adamw =
      estimate_one(finetune_spec("tiny", "{max_steps: 2, seq_len: 64, optimizer: adamw}"));
  EXPECT_NE(adamw.peak_at.find("optimizer"), std::string::npos) << adamw.peak_at;
  const auto lora =
      estimate_one(finetune_spec("tiny", "{max_steps: 2, batch_size: 4, seq_len: 256, lora: on}"));
  EXPECT_NE(lora.peak_at.find("loss"), std::string::npos) << lora.peak_at;
}

TEST(Estimate, GenerateHoldsWeightsAndKvCache) {
  const auto spec = parse_spec(
      "name: gen\nmodel: {preset: tiny, weights: random, seed: 0}\nworkload: generate\n"
      "device: cpu\nfixed: {prompt_len: 64, new_tokens: 16}\nmatrix:\n  kv_cache: [on, off]\n"
      "  batch_size: [1, 4]\n",
      "gen.yaml");
  const auto c = config_from_name("tiny");
  for (const auto& run : expand(spec)) {
    const auto e = estimate_memory(spec, run);
    const int64_t b = run.config.at("batch_size").get<int64_t>();
    const bool cache = run.config.at("kv_cache").get<std::string>() == "on";
    EXPECT_EQ(e.weights, c.param_count() * 4);
    EXPECT_EQ(e.grads, 0);
    EXPECT_EQ(e.optimizer, 0);
    EXPECT_EQ(e.kv_cache,
              cache ? 2 * c.n_layers * b * c.n_kv_heads * (64 + 16) * c.head_dim() * 4 : 0);
    EXPECT_EQ(e.seq_len, cache ? 64 : 64 + 16 - 1);
    EXPECT_GT(e.peak, e.weights + e.buffers + e.kv_cache);
  }
}

class EstimateAlpaca : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("hx_estimate_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "data.json").string();
    std::ofstream(path_) << R"([
      {"instruction": "Say hi.", "output": "hi"},
      {"instruction": "Repeat", "input": "abc", "output": "abcabc"},
      {"instruction": "Caf\u00e9", "output": "ok"}
    ])";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(EstimateAlpaca, TokenCountsAreTemplateBytesPlusBosEos) {
  const std::string no_input =
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\n";
  const std::string with_input =
      "Below is an instruction that describes a task, paired with an input that provides "
      "further context. Write a response that appropriately completes the request.\n\n"
      "### Instruction:\n";
  const int64_t tail = std::string("\n\n### Response:\n").size();
  const int64_t first = 1 + static_cast<int64_t>(no_input.size()) + 7 + tail + 2 + 1;
  const int64_t second = 1 + static_cast<int64_t>(with_input.size()) + 6 +
                         static_cast<int64_t>(std::string("\n\n### Input:\n").size()) + 3 + tail +
                         6 + 1;
  const int64_t third = 1 + static_cast<int64_t>(no_input.size()) + 5 /* UTF-8 é */ + tail + 2 + 1;
  EXPECT_EQ(alpaca_token_counts(path_, 0, 0), (std::vector<int64_t>{first, second, third}));
  EXPECT_EQ(alpaca_token_counts(path_, 2, 0), (std::vector<int64_t>{first, second}));
  // Truncation to max_seq_len; an example whose response is cut away entirely is left out.
  const int64_t cut = first - 1;
  const auto truncated = alpaca_token_counts(path_, 0, cut);
  ASSERT_EQ(truncated.size(), 2u);  // the second's prompt alone is longer than `cut`
  EXPECT_EQ(truncated[0], cut);
  EXPECT_THROW(alpaca_token_counts(path_, 0, 10), std::invalid_argument);
  EXPECT_THROW(alpaca_token_counts((dir_ / "missing.json").string(), 0, 0), std::invalid_argument);
}

TEST_F(EstimateAlpaca, BatchesArePaddedToTheirLongestExample) {
  EXPECT_EQ(batch_lengths({5, 9, 7}, 2, 4), (std::vector<int64_t>{9, 7, 9, 9}));
  EXPECT_EQ(batch_lengths({5, 9, 7}, 1, 4), (std::vector<int64_t>{5, 9, 7, 5}));
  const auto spec =
      finetune_spec("tiny", "{max_steps: 3, batch_size: 2}",
                    "{format: alpaca, path: " + path_ + ", samples: 3, max_seq_len: 512}");
  const auto counts = alpaca_token_counts(path_, 0, 512);
  const auto e = estimate_one(spec);
  EXPECT_EQ(e.seq_len, *std::max_element(counts.begin(), counts.end()));
}

TEST(Estimate, RendersEveryPlannedRunOnce) {
  const auto spec = parse_spec(
      "name: r\nmodel: {preset: tiny, weights: random, seed: 0}\nworkload: finetune\n"
      "device: cpu\ndata: {format: random, seq_len: 32}\nfixed: {max_steps: 2}\nrepeats: 2\n"
      "matrix:\n  gc: [off, on]\n",
      "r.yaml");
  const auto planned = expand(spec);
  ASSERT_EQ(planned.size(), 4u);
  const std::string md = render_estimates(spec, planned, ReportFormat::kMarkdown);
  const std::string csv = render_estimates(spec, planned, ReportFormat::kCsv);
  for (const auto& run : planned) {
    const auto count = [&](const std::string& text) {
      size_t n = 0;
      for (size_t at = text.find(run.run_id); at != std::string::npos;
           at = text.find(run.run_id, at + 1))
        ++n;
      return n;
    };
    const size_t expected = run.repeat == 0 ? 1 : 0;  // repeats are estimated once
    EXPECT_EQ(count(md), expected) << run.run_id;
    EXPECT_EQ(count(csv), expected) << run.run_id;
  }
  EXPECT_NE(md.find("| run id | axes |"), std::string::npos);
  EXPECT_EQ(csv.rfind("part,run_id,workload,axes,", 0), 0u);
  const Json metrics = estimate_run(spec, planned[0]);
  EXPECT_GT(metrics.at("est_peak_mem_mb").get<double>(), 0);
  EXPECT_GT(metrics.at("est_weights_mb").get<double>(), 0);
}

TEST(Estimate, AddEstimatesFillsStoredRunsOfThePlan) {
  auto spec = finetune_spec("tiny", "{max_steps: 2}");
  const auto planned = expand(spec);
  std::vector<StoredRun> unasked(1);
  unasked[0].run_id = planned[0].run_id;
  add_estimates(spec, planned, unasked);  // no table lists the row: nothing computed
  EXPECT_FALSE(unasked[0].metrics.count("est_peak_mem_mb"));

  TableSpec table;
  table.title = "Memory";
  table.rows = {"peak_mem_mb", "est_peak_mem_mb"};
  spec.tables.push_back(table);
  std::vector<StoredRun> runs(3);
  runs[0].run_id = planned[0].run_id;
  runs[0].env = {{"libtorch", "1.13.0"}};
  runs[1].run_id = "not-planned";
  runs[2].run_id = planned[0].run_id;
  runs[2].metrics["est_peak_mem_mb"] = 1.5;  // already there: kept
  add_estimates(spec, planned, runs);
  ASSERT_TRUE(runs[0].metrics.count("est_peak_mem_mb"));
  EstimateOptions options;
  options.libtorch = "1.13.0";
  EXPECT_DOUBLE_EQ(runs[0].metrics.at("est_peak_mem_mb"),
                   static_cast<double>(estimate_memory(spec, planned[0], options).peak) / kMB);
  EXPECT_FALSE(runs[1].metrics.count("est_peak_mem_mb"));
  EXPECT_DOUBLE_EQ(runs[2].metrics.at("est_peak_mem_mb"), 1.5);
}

// Elements of the seven projections of every block: what QLoRA stores in 4 bits.
int64_t block_linear_params(const LlamaConfig& c) {
  const int64_t hd = c.head_dim();
  const int64_t per_layer =
      2 * c.dim * c.n_heads * hd + 2 * c.dim * c.n_kv_heads * hd + 3 * c.dim * c.ffn_hidden;
  return per_layer * c.n_layers;
}

// The bytes of bitsandbytes' layout (tests/model/test_qlora.cpp measures the same on `small` with
// the counting allocator: 4.5 and 4.127 bits per quantised weight); the 4-bit weights are
// frozen, only the adapters have gradients and AdamW state.
TEST(Estimate, QloraWeightsAreStoredBits) {
  const auto c = config_from_name("small");
  const int64_t quantised = block_linear_params(c);
  const int64_t adapters = lora_param_count(c, 16, {"wq", "wv"});
  for (const bool dq : {false, true}) {
    const auto e = estimate_one(finetune_spec(
        "small", std::string("{max_steps: 2, seq_len: 16, lora: on, optimizer: adamw, quant: nf4, "
                             "double_quant: ") +
                     (dq ? "on" : "off") + "}"));
    const double bits = 8.0 * static_cast<double>(e.weights_4bit) / static_cast<double>(quantised);
    EXPECT_NEAR(bits, dq ? 4.127 : 4.5, 0.001) << dq;
    EXPECT_EQ(e.weights, e.weights_4bit + (c.param_count() - quantised + adapters) * 4) << dq;
    EXPECT_EQ(e.trainable, adapters);
    EXPECT_EQ(e.grads, adapters * 4);
    EXPECT_EQ(e.optimizer, adapters * 8);
    EXPECT_GT(e.buffers, 2 * c.max_seq_len * (c.head_dim() / 2) * 4);  // + the code tables
  }
  // Per weight of n elements: n/2 + 4 ceil(n/block), or ceil(n/block) + 4 + 4 ceil(blocks/256).
  const auto tiny = config_from_name("tiny");
  const auto two = estimate_one(finetune_spec(
      "tiny", "{max_steps: 2, lora: on, quant: fp4, quant_block: 128, quant_targets: [wq, w2]}"));
  const int64_t wq = tiny.dim * tiny.n_heads * tiny.head_dim();
  const int64_t w2 = tiny.ffn_hidden * tiny.dim;
  EXPECT_EQ(two.weights_4bit, tiny.n_layers * (wq / 2 + 4 * wq / 128 + w2 / 2 + 4 * w2 / 128));
  const auto nested = estimate_one(finetune_spec(
      "tiny", "{max_steps: 2, lora: on, quant: nf4, double_quant: on, quant_targets: [w2]}"));
  EXPECT_EQ(nested.weights_4bit, tiny.n_layers * (w2 / 2 + w2 / 64 + 4 + 4 * 3));  // 768 blocks
}

// phase 4's shape: the 4-bit base of LLaMA-2-7B (NF4, double quantisation) is 3.34 GB against
// 27 GB in fp32; the embedding and head stay in the model dtype.
TEST(Estimate, QloraOfLlama2_7bFitsWhereLoraDoesNot) {
  const auto c = config_from_name("llama2-7b");
  const std::string common =
      "{max_steps: 2, seq_len: 256, lora: on, optimizer: adamw, gc: on, mp: bf16, "
      "lora_targets: [wq, wk, wv, wo, w1, w2, w3]";
  const auto lora = estimate_one(
      finetune_spec("llama2-7b", common + "}", "{format: random, seq_len: 256}", "cuda"), "2.4.1");
  const auto qlora = estimate_one(
      finetune_spec("llama2-7b", common + ", quant: nf4, double_quant: on, compute_dtype: bf16}",
                    "{format: random, seq_len: 256}", "cuda"),
      "2.4.1");
  EXPECT_NEAR(static_cast<double>(qlora.weights_4bit) / 1e9, 3.34, 0.01);
  EXPECT_NEAR(static_cast<double>(lora.weights - qlora.weights) / 1e9,
              4.0 * static_cast<double>(block_linear_params(c)) / 1e9 - 3.34, 0.01);
  EXPECT_EQ(qlora.trainable, lora.trainable);
  EXPECT_EQ(qlora.optimizer, lora.optimizer);
  EXPECT_LT(qlora.peak, 16 * 1024 * kMB);  // one 16 GB card
  EXPECT_GT(lora.peak, 24 * 1024 * kMB);
}

TEST(Estimate, GenerationFromFourBitWeights) {
  const auto spec = parse_spec(
      "name: gen\nmodel: {preset: tiny, weights: random, seed: 0}\nworkload: generate\n"
      "device: cpu\nfixed: {prompt_len: 32, new_tokens: 8}\nmatrix:\n  quant: [off, nf4]\n",
      "gen.yaml");
  const auto runs = expand(spec);
  ASSERT_EQ(runs.size(), 2u);
  const auto plain = estimate_memory(spec, runs[0]);
  const auto nf4 = estimate_memory(spec, runs[1]);
  const int64_t quantised = block_linear_params(config_from_name("tiny"));
  EXPECT_EQ(plain.weights_4bit, 0);
  EXPECT_EQ(nf4.weights_4bit, quantised / 2 + 4 * quantised / 64);
  EXPECT_EQ(plain.weights - nf4.weights, quantised * 4 - nf4.weights_4bit);
  EXPECT_LT(nf4.peak, plain.peak);
}

TEST(Estimate, RejectsWhatTheWorkerRejects) {
  const auto long_seq = finetune_spec("tiny", "{max_steps: 2, seq_len: 4096}");
  EXPECT_THROW(estimate_memory(long_seq, expand(long_seq).at(0)), std::invalid_argument);
  // A 4-bit base alone does not fine-tune (QLoRA is adapters on it).
  const auto bare = finetune_spec("tiny", "{max_steps: 2, quant: nf4}");
  EXPECT_THROW(estimate_memory(bare, expand(bare).at(0)), std::invalid_argument);
}

}  // namespace
}  // namespace hx
