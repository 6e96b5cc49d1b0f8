#pragma once
// LoRA on named linear layers. Adapter parameters are named `<linear>.lora_a.weight` and
// `<linear>.lora_b.weight`, so "trainable" is a filter on names and a merged model has exactly
// the base names again.
#include <string>
#include <vector>

#include "model/llama.h"

namespace hx {

// Known LoRA targets: the linear layers of a block.
const std::vector<std::string>& lora_target_names();  // wq wk wv wo w1 w2 w3

// Adds adapters to the `targets` of every block and freezes every base parameter. A is drawn
// from `seed` (Kaiming-uniform as in PEFT), B is zero, so the adapted model equals the base.
void apply_lora(Transformer& model, const std::vector<std::string>& targets,
                const LoraOptions& options, uint64_t seed);
// QLoRA's base: the `targets` of every block (lora_target_names()) in 4-bit form, frozen
// (LinearImpl::quantize). Before apply_lora.
void quantize_targets(Transformer& model, const std::vector<std::string>& targets,
                      const Quant4Options& options);
// The bytes of every quantised weight (packed codes and scales): buffers, not parameters.
int64_t quantized_weight_bytes(const Transformer& model);

// Folds every adapter into its base weight; the adapters stay (inactive) so that unmerge_lora
// can take them out again (PEFT's merge_adapter / unmerge_adapter).
void merge_lora(Transformer& model);
void unmerge_lora(Transformer& model);
// Folds every adapter into its base weight and removes it: the base parameter names again.
void merge_and_unload_lora(Transformer& model);

bool is_lora_param(const std::string& name);
// Parameters with requires_grad, in named order.
std::vector<torch::Tensor> trainable_parameters(const Transformer& model);
int64_t trainable_param_count(const Transformer& model);

}  // namespace hx
