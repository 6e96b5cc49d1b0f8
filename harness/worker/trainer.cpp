#include "harness/worker/trainer.h"

#include <optional>
#include <stdexcept>

#include "model/compat.h"
#include "model/lora.h"

namespace hx {

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t t = logits.size(1);
  auto predicted = logits.narrow(1, 0, t - 1).reshape({-1, logits.size(-1)});
  auto target = labels.narrow(1, 1, t - 1).reshape({-1});
  return torch::nn::functional::cross_entropy(
      predicted.to(torch::kFloat32), target,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

LossScaler::LossScaler(double init_scale, double growth_factor, double backoff_factor,
                       int64_t growth_interval)
    : scale_(init_scale),
      growth_factor_(growth_factor),
      backoff_factor_(backoff_factor),
      growth_interval_(growth_interval) {}

bool LossScaler::unscale_and_check(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.mutable_grad());
  if (grads.empty()) return true;
  // GradScaler's fused kernel: one pass and one device sync per step, not one per parameter
  // (146 syncs made an fp16 step on a GPU slower than an fp32 one).
  const auto device = grads.front().device();
  auto found_inf = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  const auto inv_scale =
      torch::full({1}, 1.0 / scale_, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
  return found_inf.item<float>() == 0.0F;
}

void LossScaler::update(bool step_taken) {
  if (!step_taken) {
    scale_ *= backoff_factor_;
    good_steps_ = 0;
    ++skipped_;
    return;
  }
  if (++good_steps_ >= growth_interval_) {
    scale_ *= growth_factor_;
    good_steps_ = 0;
  }
}

namespace {
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const TrainOptions& o,
                                                        const std::vector<torch::Tensor>& params) {
  if (o.optimizer == "sgd")
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(o.lr).weight_decay(o.weight_decay));
  if (o.optimizer == "adamw")
    return std::make_unique<torch::optim::AdamW>(
        params, torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  throw std::invalid_argument("unknown optimizer \"" + o.optimizer + "\" (expected sgd, adamw)");
}
}  // namespace

Trainer::Trainer(Transformer& model, TrainOptions options)
    : model_(model), options_(std::move(options)), params_(trainable_parameters(model)) {
  if (params_.empty()) throw std::invalid_argument("no trainable parameters");
  optimizer_ = make_optimizer(options_, params_);
  if (options_.loss_scaling.value_or(options_.mp == "fp16"))
    scaler_ = std::make_unique<LossScaler>();
  if (options_.mp != "off" && options_.mp != "fp16" && options_.mp != "bf16")
    throw std::invalid_argument("unknown mp \"" + options_.mp + "\" (expected off, fp16, bf16)");
}

void Trainer::set_gradient_sync(GradientSync* sync) {
  if (sync != nullptr && sync->shards_gradients()) {
    if (options_.max_grad_norm > 0)
      throw std::invalid_argument(
          "zero 2 with max_grad_norm: the gradients are sharded over the "
          "ranks, their global norm is not computed (use zero 0 or 1)");
    if (scaler_)
      throw std::invalid_argument(
          "zero 2 with fp16's loss scaling: the overflow check needs "
          "the whole gradients (use bf16, or zero 0 or 1)");
  }
  gradient_sync_ = sync;
  // ZeRO-1: this rank's optimizer holds the state of its shard only (before any step: no state
  // is lost).
  if (sync != nullptr) optimizer_ = make_optimizer(options_, sync->optimizer_shard(params_));
}

int64_t Trainer::optimizer_state_bytes() const {
  int64_t total = 0;
  for (const auto& [key, state] : optimizer_->state()) {
    if (auto* adam = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
      for (const auto* t : {&adam->exp_avg(), &adam->exp_avg_sq(), &adam->max_exp_avg_sq()})
        if (t->defined()) total += t->nbytes();
    } else if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(state.get())) {
      if (sgd->momentum_buffer().defined()) total += sgd->momentum_buffer().nbytes();
    }
  }
  return total;
}

StepStats Trainer::step(DataSource& data) {
  StepStats stats;
  const auto device = model_->options().device;
  for (int64_t micro = 0; micro < options_.ga; ++micro) {
    auto batch = data.next();
    auto tokens = batch.tokens.to(device);
    auto labels = batch.labels.to(device);
    torch::Tensor loss;
    const int64_t before = memory_now ? memory_now() : 0;
    {
      std::optional<compat::AutocastGuard> autocast;
      if (options_.mp != "off")
        autocast.emplace(device.type(), options_.mp == "fp16" ? at::kHalf : at::kBFloat16);
      loss = lm_loss(model_->forward(tokens), labels);
    }
    if (memory_now)
      stats.activation_bytes = std::max(stats.activation_bytes, memory_now() - before);
    stats.loss += loss.item<double>() / static_cast<double>(options_.ga);
    stats.tokens += batch.real_tokens;
    auto scaled = loss / static_cast<double>(options_.ga);
    if (scaler_) scaled = scaled * scaler_->scale();
    if (gradient_sync_ != nullptr) gradient_sync_->begin_backward(micro == options_.ga - 1);
    scaled.backward();
  }
  if (gradient_sync_ != nullptr) {
    gradient_sync_->finish();
    stats.loss = gradient_sync_->mean(stats.loss);
  }
  if (after_backward) after_backward();
  for (const auto& p : params_)
    if (p.grad().defined()) stats.grad_bytes += p.grad().nbytes();
  // ZeRO-2: the parameters have none; this rank's chunks hold the gradients it keeps.
  if (gradient_sync_ != nullptr && gradient_sync_->shards_gradients()) {
    for (const auto& p : optimizer_->parameters())
      if (p.grad().defined()) stats.grad_bytes += p.grad().nbytes();
  }

  bool take_step = true;
  if (scaler_) {
    take_step = scaler_->unscale_and_check(params_);
    scaler_->update(take_step);
  }
  // After unscaling, as torch.amp documents: the norm is that of the true gradients.
  if (take_step && options_.max_grad_norm > 0)
    torch::nn::utils::clip_grad_norm_(params_, options_.max_grad_norm);
  if (take_step) optimizer_->step();
  // Every rank takes or skips the step alike (their gradients are the same after averaging).
  if (take_step && gradient_sync_ != nullptr) gradient_sync_->after_step();
  stats.skipped = !take_step;
  // Gradients are released, not zeroed (set_to_none): between steps they hold no memory.
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
  return stats;
}

}  // namespace hx
