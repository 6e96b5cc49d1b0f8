#pragma once
// Gradient checkpointing of one transformer block: forward keeps only the block's input; backward
// recomputes the block (same autocast state, same RNG state, so dropout masks repeat) and takes
// the gradients of its input and parameters from the recomputed graph.
#include "model/llama.h"

namespace hx {

torch::Tensor checkpoint_block(TransformerBlock& block, const torch::Tensor& x, int64_t start_pos,
                               const RopeTables& rope, const torch::Tensor& mask);

}  // namespace hx
