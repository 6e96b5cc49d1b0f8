#pragma once
// One optimizer step of fine-tuning: `ga` micro-batches (loss scaled by 1/ga), mixed precision by
// autocast (fp16 with a dynamic loss scaler), then the optimizer on the trainable parameters.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "harness/worker/data.h"
#include "model/llama.h"

namespace hx {

// Mean cross-entropy of next-token prediction over labels != kIgnoreIndex.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& labels);

// Dynamic loss scaling for fp16 (as torch.cuda.amp.GradScaler): scale the loss, unscale the
// gradients, skip the step and back off on inf/NaN, grow after `growth_interval` good steps.
class LossScaler {
 public:
  explicit LossScaler(double init_scale = 65536.0, double growth_factor = 2.0,
                      double backoff_factor = 0.5, int64_t growth_interval = 2000);
  double scale() const { return scale_; }
  // Divides gradients by the scale; returns false (and backs off) when any is not finite.
  bool unscale_and_check(const std::vector<torch::Tensor>& params);
  void update(bool step_taken);
  int64_t skipped_steps() const { return skipped_; }

 private:
  double scale_, growth_factor_, backoff_factor_;
  int64_t growth_interval_, good_steps_ = 0, skipped_ = 0;
};

struct TrainOptions {
  int64_t ga = 1;
  std::string mp = "off";  // off | fp16 | bf16
  std::string optimizer = "sgd";
  double lr = 1e-5;
  double weight_decay = 0.0;
  double max_grad_norm = 0.0;  // > 0: clip the gradients' global L2 norm before each step
  // Dynamic loss scaling; by default on exactly for fp16.
  std::optional<bool> loss_scaling;
};

struct StepStats {
  double loss = 0;         // mean over the micro-batches (unscaled)
  int64_t tokens = 0;      // real (unpadded) tokens
  bool skipped = false;    // fp16 overflow: no update
  int64_t grad_bytes = 0;  // gradients held just before the optimizer ran
  // Bytes the forward pass left held for backward (activations, and the low-precision weight
  // copies of autocast), at the largest micro-batch: measured right after the loss, before
  // backward, so neither gradients nor optimizer temporaries are in it. 0 without a probe.
  int64_t activation_bytes = 0;
};

// Data parallelism's part of a step (harness/worker/data_parallel.h): told before each
// micro-batch's backward whether it is the step's last (gradients are communicated only then);
// finish() returns when every rank holds the averaged gradients.
class GradientSync {
 public:
  virtual ~GradientSync() = default;
  virtual void begin_backward(bool last_micro_step) = 0;
  virtual void finish() = 0;
  virtual double mean(double value) = 0;  // over the ranks (the recorded loss)
  // ZeRO-1: the parameters whose optimizer state this rank keeps (all without sharding), and,
  // after each step, the exchange that gives every rank the others' updated parameters.
  virtual std::vector<torch::Tensor> optimizer_shard(const std::vector<torch::Tensor>& params) {
    return params;
  }
  virtual void after_step() {}
  // ZeRO-2: the parameters' gradients are gone after finish() (the optimizer's shards hold this
  // rank's part), so nothing that reads them (clipping, fp16's overflow check) can run.
  virtual bool shards_gradients() const { return false; }
};

class Trainer {
 public:
  Trainer(Transformer& model, TrainOptions options);
  StepStats step(DataSource& data);
  const TrainOptions& options() const { return options_; }
  int64_t skipped_steps() const { return scaler_ ? scaler_->skipped_steps() : 0; }
  // Bytes of optimizer state (momentum/variance) currently held.
  int64_t optimizer_state_bytes() const;
  // Hook for tests: runs after backward, before unscale/step (e.g. to inject an inf).
  std::function<void()> after_backward;
  // Bytes currently held on the device (the worker's memory probe); optional.
  std::function<int64_t()> memory_now;
  // Data parallelism: averages the gradients over ranks before the step (and with ZeRO-1 shards
  // the optimizer state); optional, set before the first step.
  void set_gradient_sync(GradientSync* sync);

 private:
  Transformer model_;
  TrainOptions options_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<LossScaler> scaler_;
  GradientSync* gradient_sync_ = nullptr;
};

}  // namespace hx
