#include "model/weights.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <tuple>

#include "model/torch_pickle.h"

namespace hx {

std::string shape_text(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

namespace {

// The file's bytes as libtorch's zip reader reads them (pickle.h's readers are not exported).
class BytesReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReader(const std::vector<char>& bytes) : bytes_(bytes) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= bytes_.size() || n == 0) return 0;  // n == 0: buf may be null (an empty record)
    n = std::min<size_t>(n, bytes_.size() - pos);
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::vector<char>& bytes_;
};

// A torch.save zip unpickled as torch::pickle_load does (readArchiveAndTensors: data.pkl, storages
// in data/<key>), checked first for what libtorch would trust: the size of each record (allocated
// before it is read; torch.save stores records uncompressed, so none is larger than the file) and
// the memo indices of the pickle (its unpickler sizes a table by them). `record_bytes` gets the
// size of the record behind each storage's data pointer: the unpickler sizes a storage by the
// pickle's claim, whatever the record holds.
c10::IValue unpickle_torch_zip(const std::vector<char>& bytes, const std::string& path,
                               std::map<const void*, size_t>& record_bytes) {
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
  // Not a structured binding: the lambda below captures the size (clang 14 refuses bindings).
  const std::tuple<at::DataPtr, size_t> pickle_record = reader.getRecord("data.pkl");
  const at::DataPtr& pickle = std::get<0>(pickle_record);
  const size_t pickle_size = std::get<1>(pickle_record);
  const auto* pickle_bytes = static_cast<const char*>(pickle.get());
  check_torch_pickle(std::string_view(pickle_bytes, pickle_size), path);
  size_t offset = 0;
  auto read_pickle = [&](char* buffer, size_t n) -> size_t {
    n = std::min(n, pickle_size - offset);
    if (n == 0) return n;
    std::memcpy(buffer, pickle_bytes + offset, n);
    offset += n;
    return n;
  };
  auto read_record = [&](const std::string& key) {
    std::tuple<at::DataPtr, size_t> record = reader.getRecord("data/" + key);
    record_bytes[std::get<0>(record).get()] = std::get<1>(record);
    return std::move(std::get<0>(record));
  };
  torch::jit::Unpickler unpickler(read_pickle, nullptr, nullptr, read_record, std::nullopt);
  unpickler.set_version(reader.version());
  return unpickler.parse_ivalue();
}

// libtorch's unpickler sets a tensor's offset, sizes and strides over its storage without checking
// that they fit (a storage record cut short, or a pickle that claims a larger view): reading such a
// tensor reads past its storage (found by fuzzing: an empty record, a null data pointer); and the
// storage itself is sized by the pickle, not by its record. Wide arithmetic: each term is the
// file's.
bool view_fits_storage(const torch::Tensor& t, const std::map<const void*, size_t>& record_bytes) {
  const auto record = record_bytes.find(t.storage().data());
  const size_t stored = record == record_bytes.end() ? 0 : record->second;
  if (t.storage().nbytes() > stored) return false;
  if (t.storage_offset() < 0) return false;
  __int128 last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) < 0 || t.stride(d) < 0) return false;
    if (t.size(d) == 0) return true;  // no element to read
    last += static_cast<__int128>(t.size(d) - 1) * t.stride(d);
  }
  return (last + 1) * t.element_size() <= static_cast<__int128>(t.storage().nbytes());
}
}  // namespace

TensorMap read_torch_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(path + ": cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  std::map<const void*, size_t> record_bytes;
  try {
    value = unpickle_torch_zip(bytes, path, record_bytes);
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
    if (!view_fits_storage(t, record_bytes))
      throw std::invalid_argument(path + ": tensor " + item.key().toStringRef() + " of shape " +
                                  shape_text(t.sizes()) +
                                  " runs past its storage record: corrupt or truncated");
    out.emplace(item.key().toStringRef(), t);
  }
  return out;
}

}  // namespace hx
