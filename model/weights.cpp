#include "model/weights.h"

#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <stdexcept>

namespace hx {
namespace {
std::string shape_text(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}
}  // namespace

TensorMap read_torch_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    throw std::invalid_argument(path + ": not a readable torch.save file: " +
                                e.what_without_backtrace());
  }
  if (!value.isGenericDict()) throw std::invalid_argument(path + ": expected a dict of tensors");
  TensorMap out;
  for (const auto& item : value.toGenericDict()) {
    if (!item.key().isString() || !item.value().isTensor())
      throw std::invalid_argument(path + ": expected a dict of str -> tensor");
    out.emplace(item.key().toStringRef(), item.value().toTensor());
  }
  return out;
}

void load_weights(Transformer& model, const TensorMap& tensors, const std::string& source) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& item : model->named_parameters()) {
    const auto& name = item.key();
    auto it = tensors.find(name);
    if (it == tensors.end()) throw std::invalid_argument(source + ": missing tensor " + name);
    if (it->second.sizes() != item.value().sizes())
      throw std::invalid_argument(source + ": " + name + ": shape " +
                                  shape_text(it->second.sizes()) + " where the model expects " +
                                  shape_text(item.value().sizes()));
    item.value().copy_(it->second);
    used.insert(name);
  }
  for (const auto& [name, tensor] : tensors)
    if (!used.count(name)) throw std::invalid_argument(source + ": unexpected tensor " + name);
}

}  // namespace hx
