// The model: shapes, parameter counts, rotary frequencies, KV cache equivalence, sampling.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "model/compat.h"
#include "model/generate.h"
#include "model/llama.h"

namespace hx {
namespace {

Transformer make_tiny(uint64_t seed = 0) {
  Transformer model(config_from_name("tiny"), ModelOptions{});
  init_random(model, seed);
  model->eval();
  return model;
}

TEST(Presets, ParameterCountsMatchPublishedFigures) {
  // Counted by building the module on the meta device (no memory is allocated).
  EXPECT_EQ(count_params_on_meta(config_from_name("llama3.2-1b")), 1'235'814'400);
  EXPECT_EQ(count_params_on_meta(config_from_name("llama2-7b")), 6'738'415'616);
  for (const auto& name : preset_names()) {
    const auto config = config_from_name(name);
    EXPECT_EQ(count_params_on_meta(config), config.param_count()) << name;
  }
  const int64_t small = config_from_name("small").param_count();
  EXPECT_GT(small, 80'000'000);
  EXPECT_LT(small, 140'000'000);
}

TEST(Presets, UnknownPresetListsKnownOnes) {
  try {
    config_from_name("llama9");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tiny, small, llama3.2-1b, llama2-7b"), std::string::npos);
  }
}

TEST(Rope, Llama3ScalingMatchesReferenceFrequencies) {
  // Reference computed by hand from Meta's apply_scaling for head_dim 64, theta 500000.
  auto config = config_from_name("llama3.2-1b");
  const auto freqs = rope_frequencies(config);
  ASSERT_EQ(freqs.size(0), 32);
  const double theta = 500000.0;
  const double low_wavelen = 8192.0 / 1.0;
  const double high_wavelen = 8192.0 / 4.0;
  int scaled = 0, kept = 0, blended = 0;
  for (int i = 0; i < 32; ++i) {
    const double base = 1.0 / std::pow(theta, 2.0 * i / 64.0);
    const double wavelen = 2 * std::numbers::pi / base;
    double expected = base;
    if (wavelen > low_wavelen) {
      expected = base / 32.0;
      ++scaled;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expected = (1 - smooth) * base / 32.0 + smooth * base;
      ++blended;
    } else {
      ++kept;
    }
    EXPECT_NEAR(freqs[i].item<float>(), expected, 1e-6 * expected) << i;
  }
  // All three regimes are exercised by this preset.
  EXPECT_GT(scaled, 0);
  EXPECT_GT(kept, 0);
  EXPECT_GT(blended, 0);
  // Spot values: the first frequency is 1, the last is divided by 32.
  EXPECT_FLOAT_EQ(freqs[0].item<float>(), 1.0F);
  EXPECT_NEAR(freqs[31].item<float>(), 1.0 / std::pow(theta, 62.0 / 64.0) / 32.0, 1e-12);
}

TEST(Rope, RotationPreservesPairNorms) {
  auto config = config_from_name("tiny");
  auto freqs = rope_frequencies(config);
  auto angles = torch::outer(torch::arange(16, torch::kFloat32), freqs);
  RopeTables rope{torch::cos(angles), torch::sin(angles)};
  auto x = torch::randn({2, 5, 3, config.head_dim()});
  auto y = apply_rope(x, rope, 4);
  auto pair_norm = [](const torch::Tensor& t) { return t.unflatten(-1, {-1, 2}).norm(2, -1); };
  EXPECT_TRUE(torch::allclose(pair_norm(x), pair_norm(y), 1e-5, 1e-6));
  // Position 0 is the identity.
  EXPECT_TRUE(torch::allclose(apply_rope(x, rope, 0).select(1, 0), x.select(1, 0)));
}

TEST(KVCache, SameLogitsAsFullRecomputation) {
  auto model = make_tiny();
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(0, model->config().vocab_size, {2, 12}, torch::kInt64);
  auto full = model->forward(tokens);  // (2, 12, V), no cache
  KVCache cache(model->config(), 2, 12, model->options().tensor_options());
  auto first = model->forward(tokens.narrow(1, 0, 7), 0, &cache);
  EXPECT_TRUE(torch::allclose(first, full.narrow(1, 0, 7), 1e-5, 1e-5));
  for (int64_t pos = 7; pos < 12; ++pos) {
    auto step = model->forward(tokens.narrow(1, pos, 1), pos, &cache);
    EXPECT_LT((step.select(1, 0) - full.select(1, pos)).abs().max().item<float>(), 1e-5) << pos;
  }
}

// The fused kernel (at::scaled_dot_product_attention) and the explicit softmax path compute the
// same function: the same logits on a whole sequence (causal), on a chunk after cached positions
// (explicit mask) and on one-token decode steps (no mask), and the same gradients.
TEST(Attention, FusedKernelMatchesExplicitPath) {
  auto model = make_tiny(5);
  ASSERT_LT(model->config().n_kv_heads, model->config().n_heads);  // exercises grouped queries
  auto tokens = torch::randint(0, model->config().vocab_size, {2, 16}, torch::kInt64);
  const auto logits_and_grads = [&](AttentionKind kind) {
    model->set_attention(kind);
    model->zero_grad();
    auto logits = model->forward(tokens);
    logits.pow(2).mean().backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return std::pair{logits.detach(), grads};
  };
  const auto [math_logits, math_grads] = logits_and_grads(AttentionKind::kMath);
  const auto [sdpa_logits, sdpa_grads] = logits_and_grads(AttentionKind::kSdpa);
  EXPECT_LT((sdpa_logits - math_logits).abs().max().item<float>(), 1e-5);
  ASSERT_EQ(sdpa_grads.size(), math_grads.size());
  for (size_t i = 0; i < math_grads.size(); ++i)
    EXPECT_LT((sdpa_grads[i] - math_grads[i]).abs().max().item<float>(), 1e-5) << i;

  // With the cache: a 5-token prefill, a 6-token chunk at position 5, then single tokens.
  torch::NoGradGuard no_grad;
  const auto cached = [&](AttentionKind kind) {
    model->set_attention(kind);
    KVCache cache(model->config(), 2, 16, model->options().tensor_options());
    std::vector<torch::Tensor> out{model->forward(tokens.narrow(1, 0, 5), 0, &cache),
                                   model->forward(tokens.narrow(1, 5, 6), 5, &cache)};
    for (int64_t pos = 11; pos < 16; ++pos)
      out.push_back(model->forward(tokens.narrow(1, pos, 1), pos, &cache));
    return torch::cat(out, 1);
  };
  const auto with_sdpa = cached(AttentionKind::kSdpa);
  EXPECT_LT((with_sdpa - cached(AttentionKind::kMath)).abs().max().item<float>(), 1e-5);
  EXPECT_LT((with_sdpa - math_logits).abs().max().item<float>(), 1e-5);
}

class GenerateEquivalence : public ::testing::TestWithParam<int64_t> {};

TEST_P(GenerateEquivalence, CacheOnAndOffGiveSameTokensOver32Steps) {
  const int64_t batch = GetParam();
  auto model = make_tiny(3);
  auto prompt = torch::randint(0, model->config().vocab_size, {batch, 9}, torch::kInt64);
  SamplingOptions greedy;
  auto with = generate(model, prompt, 32, /*use_cache=*/true, greedy);
  auto without = generate(model, prompt, 32, /*use_cache=*/false, greedy);
  ASSERT_EQ(with.tokens.sizes(), (std::vector<int64_t>{batch, 32}));
  EXPECT_TRUE(torch::equal(with.tokens, without.tokens));
  EXPECT_GT(with.cache_bytes, 0);
  EXPECT_EQ(without.cache_bytes, 0);
  EXPECT_EQ(with.decode_step_s.size(), 31U);

  // Logits along the generated sequence agree within 1e-5 (fp32).
  torch::NoGradGuard no_grad;
  auto sequence = torch::cat({prompt, with.tokens}, 1);
  auto full = model->forward(sequence);
  KVCache cache(model->config(), batch, sequence.size(1), model->options().tensor_options());
  auto logits = prefill(model, prompt, &cache);
  for (int64_t i = 0; i < 31; ++i) {
    auto expected = full.select(1, prompt.size(1) - 1 + i);
    EXPECT_LT((logits - expected).abs().max().item<float>(), 1e-5) << i;
    logits = decode_one_token(model, with.tokens.narrow(1, i, 1), prompt.size(1) + i, cache);
  }
}

INSTANTIATE_TEST_SUITE_P(Batches, GenerateEquivalence, ::testing::Values(1, 4));

TEST(Sampling, SeededSamplingIsReproducibleAndRespectsTopK) {
  auto logits = torch::randn({3, 50});
  SamplingOptions options;
  options.greedy = false;
  options.temperature = 0.8;
  options.top_k = 5;
  options.top_p = 0.9;
  auto g1 = at::detail::createCPUGenerator(42);
  auto g2 = at::detail::createCPUGenerator(42);
  for (int i = 0; i < 20; ++i) {
    auto a = sample_next(logits, options, g1);
    auto b = sample_next(logits, options, g2);
    EXPECT_TRUE(torch::equal(a, b));
    auto top5 = std::get<1>(logits.topk(5, -1));
    EXPECT_TRUE((top5 == a).any(-1).all().item<bool>());
  }
  SamplingOptions greedy;
  EXPECT_TRUE(torch::equal(sample_next(logits, greedy, g1), logits.argmax(-1, true)));
}

TEST(Model, DtypesBuildAndRun) {
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    Transformer model(config_from_name("tiny"), ModelOptions{torch::kCPU, dtype});
    init_random(model, 0);
    torch::NoGradGuard no_grad;
    auto logits = model->forward(torch::randint(0, 512, {1, 5}, torch::kInt64));
    EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  }
}

// Both kernel modules' first line of /proc/driver/nvidia/version; the open one's (an H200 node)
// once gave "for" as the version.
TEST(Environment, DriverVersionFromEitherKernelModule) {
  EXPECT_EQ(compat::driver_version_from_proc_line(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:25 UTC "
                "2025"),
            "580.65.06");
  EXPECT_EQ(compat::driver_version_from_proc_line(
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release "
                "Build  (dvs-builder@U16-I3-B03-4-3)  Thu Oct 30 2025"),
            "580.159.04");
  EXPECT_EQ(compat::driver_version_from_proc_line("NVRM version: unknown"), "");
  EXPECT_EQ(compat::driver_version_from_proc_line(""), "");
}

}  // namespace
}  // namespace hx
