#include "model/weights.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>

#include "model/torch_pickle.h"

namespace hx {
namespace {
std::string shape_text(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

// The file's bytes as libtorch's zip reader reads them (pickle.h's readers are not exported).
class BytesReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReader(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::vector<char>& bytes_;
};

// What libtorch would trust in a torch.save zip: the size of each record (allocated before it is
// read; torch.save stores records uncompressed, so none is larger than the file) and the memo
// indices of the pickle (its unpickler sizes a table by them).
void check_torch_zip(const std::vector<char>& bytes, const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(std::make_shared<BytesReader>(bytes));
  for (const std::string& name : reader.getAllRecords()) {
    const size_t size = reader.getRecordSize(name);
    if (size > bytes.size())
      throw std::invalid_argument(path + ": record " + name + " claims " + std::to_string(size) +
                                  " bytes in a file of " + std::to_string(bytes.size()) +
                                  ": corrupt, or not a torch.save file");
  }
  if (!reader.hasRecord("data.pkl"))
    throw std::invalid_argument(path + ": no data.pkl record: not a torch.save file");
  const auto [data, size] = reader.getRecord("data.pkl");
  check_torch_pickle(std::string_view(static_cast<const char*>(data.get()), size), path);
}
}  // namespace

TensorMap read_torch_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    check_torch_zip(bytes, path);
    value = torch::pickle_load(bytes);
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const c10::Error& e) {
    throw std::invalid_argument(path +
                                ": not a readable torch.save file: " + e.what_without_backtrace());
  } catch (const std::exception& e) {  // e.g. bad_alloc: a size the file claims
    throw std::invalid_argument(path + ": not a readable torch.save file: " + e.what());
  }
  if (!value.isGenericDict()) throw std::invalid_argument(path + ": expected a dict of tensors");
  TensorMap out;
  for (const auto& item : value.toGenericDict()) {
    if (!item.key().isString() || !item.value().isTensor())
      throw std::invalid_argument(path + ": expected a dict of str -> tensor");
    const torch::Tensor& t = item.value().toTensor();
    // Weights are dense CPU tensors; a pickle can also rebuild quantized or sparse ones, on which
    // the copies that follow fail inside libtorch (an internal assert, for a quantizer it lacks).
    if (!t.defined() || t.is_quantized() || t.layout() != torch::kStrided || !t.device().is_cpu())
      throw std::invalid_argument(path + ": tensor " + item.key().toStringRef() +
                                  " is not a dense CPU tensor (quantized, sparse or undefined)");
    // And of a dtype that weights have (as safetensors.h): many ops lack kernels for the others
    // (Int1, Float8, complex...).
    static const torch::Dtype kWeightDtypes[] = {
        torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64,
        torch::kInt32,   torch::kInt16,   torch::kInt8,    torch::kUInt8,    torch::kBool};
    if (std::find(std::begin(kWeightDtypes), std::end(kWeightDtypes), t.scalar_type()) ==
        std::end(kWeightDtypes))
      throw std::invalid_argument(path + ": tensor " + item.key().toStringRef() + " has dtype " +
                                  c10::toString(t.scalar_type()) +
                                  " (weights are floating point, integer or bool)");
    out.emplace(item.key().toStringRef(), t);
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
