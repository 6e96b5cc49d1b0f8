#pragma once
// The loss curve of `tiny` trained with AdamW on random tokens, shared by the CPU test of bf16
// (tests/model) and the CUDA test of fp16 and bf16 (tests/gpu).
#include <cstdint>
#include <string>
#include <vector>

#include "harness/worker/data.h"
#include "harness/worker/trainer.h"
#include "model/llama.h"

namespace hx::testing {

// Losses of `steps` steps with mixed precision `mp` (off | fp16 | bf16) on `device`; the number
// of steps the loss scaler skipped goes to *skipped when given.
inline std::vector<double> loss_curve(const std::string& mp, int64_t steps,
                                      torch::Device device = torch::kCPU,
                                      int64_t* skipped = nullptr) {
  Transformer model(config_from_name("tiny"), ModelOptions{device});
  init_random(model, 1);  // drawn on the CPU: the same weights on every device
  model->train();
  TrainOptions options;
  options.mp = mp;
  options.optimizer = "adamw";
  options.lr = 1e-3;
  Trainer trainer(model, options);
  auto data = DataSource::random(512, 32, 2, 3, 4);
  std::vector<double> losses;
  for (int64_t i = 0; i < steps; ++i) losses.push_back(trainer.step(data).loss);
  if (skipped != nullptr) *skipped = trainer.skipped_steps();
  return losses;
}

}  // namespace hx::testing
