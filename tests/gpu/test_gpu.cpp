// Tests that need a CUDA device (ctest label `gpu`): built wherever libtorch is linked with CUDA
// (CI too, which has the toolkit but no GPU: there every test reports itself skipped). fp16
// autocast with the dynamic loss scaler exists only on CUDA, so its loss-curve test lives here.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "harness/worker/data.h"
#include "harness/worker/trainer.h"
#include "model/compat.h"
#include "model/generate.h"
#include "model/llama.h"
#include "model/lora.h"
#include "model/quant4.h"
#include "tests/model/loss_curve.h"

namespace hx {
namespace {

// Every test of this file needs a device; without one it says so and is skipped, not failed.
class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!hx::compat::cuda_usable())
      GTEST_SKIP() << "no CUDA device visible (torch::cuda::is_available() is false): skipped";
  }
};

Transformer cuda_model(uint64_t seed) {
  Transformer model(config_from_name("tiny"), ModelOptions{torch::Device(torch::kCUDA)});
  init_random(model, seed);  // drawn on the CPU: the same weights as the CPU tests
  return model;
}

std::vector<double> cuda_loss_curve(const std::string& mp, int64_t steps, int64_t* skipped) {
  return testing::loss_curve(mp, steps, torch::Device(torch::kCUDA), skipped);
}

// The tolerances of the CPU bf16 test (tests/model/test_techniques.cpp): 0.5% at step 0, 5% at
// every step, 2.5% on average over 20 steps. fp16 keeps 11 mantissa bits, so it tracks closer.
void expect_tracks(const std::vector<double>& fp32, const std::vector<double>& low,
                   const char* what) {
  ASSERT_EQ(fp32.size(), low.size());
  EXPECT_NEAR(low[0], fp32[0], 0.005 * fp32[0]) << what;
  double mean_rel = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_NEAR(low[i], fp32[i], 0.05 * fp32[i]) << what << " step " << i;
    mean_rel += std::abs(low[i] - fp32[i]) / fp32[i] / static_cast<double>(fp32.size());
  }
  EXPECT_LT(mean_rel, 0.025) << what;
}

TEST_F(Gpu, Fp16WithLossScalingAndBf16TrackTheFp32LossCurve) {
  const auto fp32 = cuda_loss_curve("off", 20, nullptr);
  int64_t skipped = -1;
  const auto fp16 = cuda_loss_curve("fp16", 20, &skipped);
  const auto bf16 = cuda_loss_curve("bf16", 20, nullptr);
  expect_tracks(fp32, fp16, "fp16");
  expect_tracks(fp32, bf16, "bf16");
  EXPECT_EQ(skipped, 0);  // no overflow at the initial scale on this model
  EXPECT_LT(fp32.back(), fp32.front() * 0.9);
  EXPECT_LT(fp16.back(), fp16.front() * 0.9);
}

TEST_F(Gpu, KvCacheGivesTheSameTokensAndLogits) {
  auto model = cuda_model(2);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto prompt = torch::randint(3, 512, {4, 8}, torch::kInt64).to(torch::kCUDA);
  const auto cached = generate(model, prompt, 32, true, SamplingOptions{});
  const auto uncached = generate(model, prompt, 32, false, SamplingOptions{});
  EXPECT_TRUE(torch::equal(cached.tokens.cpu(), uncached.tokens.cpu()));
}

// The fused kernels of the device (flash, memory-efficient or cuDNN attention) against the
// explicit path: fp32 within 1e-4 (TF32 off), bf16 within bf16's rounding.
TEST_F(Gpu, FusedAttentionMatchesExplicitPath) {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    Transformer model(config_from_name("tiny"), ModelOptions{torch::Device(torch::kCUDA), dtype});
    init_random(model, 4);
    model->eval();
    torch::NoGradGuard no_grad;
    const auto tokens = torch::randint(3, 512, {2, 64}, torch::kInt64).to(torch::kCUDA);
    model->set_attention(AttentionKind::kMath);
    const auto math = model->forward(tokens);
    model->set_attention(AttentionKind::kSdpa);
    const auto fused = model->forward(tokens);
    const float tolerance = dtype == torch::kFloat32 ? 1e-4F : 0.1F;
    EXPECT_LT((fused - math).abs().max().item<float>(), tolerance) << dtype;
  }
}

TEST_F(Gpu, MemoryProbeAndDriverVersion) {
  auto before = compat::cuda_memory();
  EXPECT_GT(before.total, 0);
  const auto x = torch::empty({64, 1024, 1024}, torch::TensorOptions().device(torch::kCUDA));
  EXPECT_GE(compat::cuda_memory().allocated - before.allocated, x.nbytes());
  EXPECT_FALSE(compat::cuda_driver_version().empty());
  EXPECT_FALSE(compat::cuda_device_name().empty());
  // CUDA's one init point takes cuDNN out of SDPA's order (its plan per new shape, compat.h).
  EXPECT_FALSE(at::globalContext().userEnabledCuDNNSDP());
}

// QLoRA's 4-bit weights on the GPU: the same libtorch ops as on the CPU (whose bytes equal
// bitsandbytes', tests/hf/test_bnb4bit.py), so the same bytes without double quantisation; with
// it the offset is a mean whose summation order differs by device (a few fp32 ulps), and so may
// an 8-bit scale code at a rounding boundary. A QLoRA model trains on the device.
TEST_F(Gpu, Quant4MatchesTheCpuAndQloraTrains) {
  const auto w = torch::randn({96, 256}) * 0.02;
  for (const QuantType type : {QuantType::kNf4, QuantType::kFp4}) {
    const auto cpu = quantize_4bit(w, type, 64, false);
    const auto gpu = quantize_4bit(w.cuda(), type, 64, false);
    EXPECT_TRUE(torch::equal(gpu.packed.cpu(), cpu.packed)) << quant_type_name(type);
    EXPECT_TRUE(torch::equal(gpu.absmax.cpu(), cpu.absmax)) << quant_type_name(type);
    EXPECT_TRUE(torch::equal(dequantize_4bit(gpu, torch::kFloat32).cpu(),
                             dequantize_4bit(cpu, torch::kFloat32)));
    const auto cpu_dq = quantize_4bit(w, type, 64, true);
    const auto gpu_dq = quantize_4bit(w.cuda(), type, 64, true);
    EXPECT_TRUE(torch::equal(gpu_dq.packed.cpu(), cpu_dq.packed));
    EXPECT_NEAR(gpu_dq.offset.item<double>(), cpu_dq.offset.item<double>(),
                1e-6 * std::abs(cpu_dq.offset.item<double>()));
    EXPECT_LT(
        (dequantize_4bit(gpu_dq, torch::kFloat32).cpu() - dequantize_4bit(cpu_dq, torch::kFloat32))
            .abs()
            .max()
            .item<double>(),
        1e-3 * w.abs().max().item<double>());
    // Linear4bit's product in bf16 on the device against fp32 on the CPU: bf16's rounding.
    const auto x = torch::randn({3, 256});
    const auto y_cpu = quant4_linear(x, cpu, torch::kFloat32);
    const auto y_gpu = quant4_linear(x.cuda(), gpu, torch::kBFloat16).cpu();
    EXPECT_LT((y_gpu - y_cpu).abs().max().item<double>(), 0.02 * y_cpu.abs().max().item<double>());
  }

  auto model = cuda_model(3);
  Quant4Options options;
  options.double_quant = true;
  options.compute_dtype = torch::kBFloat16;
  quantize_targets(model, lora_target_names(), options);
  apply_lora(model, {"wq", "wv"}, LoraOptions{8, 16.0, 0.0}, 1);
  model->train();
  TrainOptions train;
  train.optimizer = "adamw";
  train.lr = 1e-3;
  train.mp = "bf16";
  Trainer trainer(model, train);
  auto data = DataSource::random(512, 32, 2, 3, 4);
  const double first = trainer.step(data).loss;
  double last = first;
  for (int i = 0; i < 9; ++i) last = trainer.step(data).loss;
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, first);
}

}  // namespace
}  // namespace hx
