#pragma once
// Loading weights strictly: every parameter of the model found once, with its shape; extra keys
// are an error. Errors name the key, the source and both shapes.
#include <map>
#include <string>

#include "model/llama.h"

namespace hx {

using TensorMap = std::map<std::string, torch::Tensor>;

// "[2, 3]": a tensor's sizes for error messages.
std::string shape_text(c10::IntArrayRef sizes);

// A Python `torch.save` of a plain dict {name: tensor} (zip format, >= 2 entries).
TensorMap read_torch_dict(const std::string& path);

// Copies `tensors` into the model's parameters (converting dtype and device).
void load_weights(Transformer& model, const TensorMap& tensors, const std::string& source);

}  // namespace hx
