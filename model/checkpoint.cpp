#include "model/checkpoint.h"

#include <torch/csrc/autograd/custom_function.h>

#include "model/compat.h"

namespace hx {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The state a recompute must reproduce, kept in the autograd node's saved data (as a capsule)
// until the node is freed.
struct RecomputeState : torch::CustomClassHolder {
  TransformerBlock block{nullptr};
  int64_t start_pos = 0;
  RopeTables rope;
  torch::Tensor mask;
  compat::AutocastState autocast;
  torch::Tensor cpu_rng;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // `params` are passed explicitly so that autograd routes their gradients through this node.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               torch::TensorList params,
                               const c10::intrusive_ptr<RecomputeState>& state) {
    state->autocast = compat::autocast_state();
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      state->cpu_rng = gen.get_state();
    }
    std::vector<torch::Tensor> saved{x};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    return state->block->forward(x, state->start_pos, state->rope, state->mask, nullptr);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto state = c10::static_intrusive_pointer_cast<RecomputeState>(
        ctx->saved_data["state"].toCapsule());
    auto saved = ctx->get_saved_variables();
    const auto x = saved[0].detach().requires_grad_(saved[0].requires_grad());
    std::vector<torch::Tensor> inputs;
    std::vector<size_t> input_slots;  // index into the returned gradient list
    if (x.requires_grad()) {
      inputs.push_back(x);
      input_slots.push_back(0);
    }
    for (size_t i = 1; i < saved.size(); ++i) {
      if (saved[i].requires_grad()) {
        inputs.push_back(saved[i]);
        input_slots.push_back(i);
      }
    }

    const auto outer_autocast = compat::autocast_state();
    auto gen = at::detail::getDefaultCPUGenerator();
    torch::Tensor outer_rng;
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      outer_rng = gen.get_state();
      gen.set_state(state->cpu_rng);
    }
    compat::set_autocast_state(state->autocast);
    at::autocast::increment_nesting();
    variable_list grads;
    {
      torch::AutoGradMode enable_grad(true);
      // Only y's graph is used, not its value: the last projection's product is left out.
      auto y = state->block->forward(x, state->start_pos, state->rope, state->mask, nullptr,
                                     ProjectionOutput::kUnread);
      grads = torch::autograd::grad({y}, inputs, {grad_outputs[0]}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    }
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    compat::set_autocast_state(outer_autocast);
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(outer_rng);
    }

    variable_list out(saved.size() + 1);  // x, each param, and the (non-tensor) state
    for (size_t i = 0; i < inputs.size(); ++i) out[input_slots[i]] = grads[i];
    return out;
  }
};

}  // namespace

torch::Tensor checkpoint_block(TransformerBlock& block, const torch::Tensor& x, int64_t start_pos,
                               const RopeTables& rope, const torch::Tensor& mask) {
  auto state = c10::make_intrusive<RecomputeState>();
  state->block = block;
  state->start_pos = start_pos;
  state->rope = rope;
  state->mask = mask;
  auto params = block->parameters();
  return CheckpointFunction::apply(x, torch::TensorList(params), state);
}

}  // namespace hx
