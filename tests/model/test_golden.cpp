// Golden logits from an independent Python reference (tests/golden/llama_reference.py, written
// from Meta's description of LLaMA), on the same weights.
//
// Tolerance 1e-4 absolute on logits of magnitude <= 9: both sides run the same fp32 operations in
// a different accumulation order (dot products of length <= 172 over 2 layers); the reference's
// own fp32-vs-fp64 error is 7.5e-6, so 1e-4 leaves 10x headroom and still catches real mistakes,
// which show at 1e-2 and above. Greedy tokens must match exactly (smallest top-2 gap 0.017).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "harness/store/json_io.h"
#include "model/generate.h"
#include "model/weights.h"
#include "tests/model/golden_util.h"

namespace hx {
namespace {

using testing::config_from_golden;
using testing::golden_dir;

constexpr double kTolerance = 1e-4;


class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsAndTokensMatchPythonReference) {
  const std::string base = golden_dir() + GetParam();
  const auto meta = nlohmann::json::parse(read_file(base + ".json"));
  Transformer model(config_from_golden(meta), ModelOptions{});
  load_weights(model, read_torch_dict(base + ".weights.pt"), base + ".weights.pt");
  model->eval();
  const auto golden = read_torch_dict(base + ".golden.pt");
  const auto& prompt = golden.at("prompt");

  EXPECT_TRUE(torch::allclose(rope_frequencies(model->config()), golden.at("freqs"), 1e-6, 0));

  torch::NoGradGuard no_grad;
  auto full = model->forward(prompt);
  EXPECT_LT((full - golden.at("logits_full")).abs().max().item<double>(), kTolerance);

  // With the cache: prefill, then greedy decode steps, logits compared at every step.
  const int64_t steps = golden.at("logits_cached_steps").size(1);
  KVCache cache(model->config(), prompt.size(0), prompt.size(1) + steps + 1,
                model->options().tensor_options());
  auto logits = prefill(model, prompt, &cache);
  std::vector<torch::Tensor> tokens{logits.argmax(-1, true)};
  for (int64_t i = 0; i < steps; ++i) {
    logits = decode_one_token(model, tokens.back(), prompt.size(1) + i, cache);
    EXPECT_LT((logits - golden.at("logits_cached_steps").select(1, i)).abs().max().item<double>(),
              kTolerance)
        << "step " << i;
    tokens.push_back(logits.argmax(-1, true));
  }
  EXPECT_TRUE(torch::equal(torch::cat(tokens, 1), golden.at("greedy_tokens")));

  // Without the cache the same tokens come out of the generation loop.
  auto uncached = generate(model, prompt, steps + 1, /*use_cache=*/false, {});
  EXPECT_TRUE(torch::equal(uncached.tokens, golden.at("greedy_tokens")));
}

INSTANTIATE_TEST_SUITE_P(Cases, Golden, ::testing::Values("tiny_llama3", "tiny_llama2"));

TEST(Weights, StrictLoadingNamesKeyAndShapes) {
  const std::string path = golden_dir() + "tiny_llama3.weights.pt";
  const auto meta = nlohmann::json::parse(read_file(golden_dir() + "tiny_llama3.json"));
  Transformer model(config_from_golden(meta), ModelOptions{});
  auto tensors = read_torch_dict(path);

  auto missing = tensors;
  missing.erase("layers.1.attention.wk.weight");
  try {
    load_weights(model, missing, path);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor layers.1.attention.wk.weight"),
              std::string::npos);
  }
  auto extra = tensors;
  extra["output.weight"] = torch::zeros({4, 4});
  EXPECT_THROW(load_weights(model, extra, path), std::invalid_argument);
  auto wrong = tensors;
  wrong["norm.weight"] = torch::zeros({63});
  try {
    load_weights(model, wrong, path);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("norm.weight: shape [63] where the model expects [64]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace hx
