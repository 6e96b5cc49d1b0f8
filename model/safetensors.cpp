#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace hx {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader maps it as is");

// Like the reference implementation: a header above 100 MB is refused (a corrupt length).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeName {
  const char* name;
  torch::Dtype dtype;
};
constexpr DtypeName kDtypes[] = {{"F64", torch::kFloat64}, {"F32", torch::kFloat32},
                                 {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
                                 {"I64", torch::kInt64},   {"I32", torch::kInt32},
                                 {"I16", torch::kInt16},   {"I8", torch::kInt8},
                                 {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};

// A private (copy-on-write) mapping of a whole file, unmapped when the last tensor viewing it
// goes. Writable so that an in-place op on a loaded tensor copies the page instead of crashing;
// the file itself is never written (opened read-only).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::invalid_argument(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw std::invalid_argument(path + ": cannot stat: " + std::strerror(err));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        throw std::invalid_argument(path + ": cannot map: " + std::strerror(err));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t non_negative(const nlohmann::json& v, const std::string& what) {
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
    throw std::invalid_argument(what + " must be a non-negative integer, got " + v.dump());
  return v.get<uint64_t>();
}

}  // namespace

torch::Dtype safetensors_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.dtype;
  std::string known;
  for (const auto& d : kDtypes) known += (known.empty() ? "" : ", ") + std::string(d.name);
  throw std::invalid_argument("unknown dtype \"" + name + "\" (supported: " + known + ")");
}

std::string safetensors_dtype_name(torch::Dtype dtype) {
  for (const auto& d : kDtypes)
    if (d.dtype == dtype) return d.name;
  throw std::invalid_argument(std::string("no safetensors dtype for ") + c10::toString(dtype));
}

SafetensorsFile read_safetensors(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  auto fail = [&](const std::string& msg) -> std::invalid_argument {
    return std::invalid_argument(path + ": " + msg);
  };
  const uint64_t size = file->size();
  if (size < 8)
    throw fail("file of " + std::to_string(size) +
               " bytes is too short for a safetensors header (an 8-byte length first)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);  // little-endian, as the host (static_assert)
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes): truncated, or not a safetensors file");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " above the 100 MB limit");
  const uint8_t* data = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("bad header JSON: ") + e.what());
  }
  if (!header.is_object())
    throw fail("bad header JSON: expected an object, got " + std::string(header.type_name()));

  SafetensorsFile out;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("__metadata__ must be an object of strings");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw fail("__metadata__." + k + " must be a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor \"" + name + "\"";
    if (!entry.is_object()) throw fail(where + ": expected an object {dtype, shape, data_offsets}");
    if (!entry.contains("dtype") || !entry.at("dtype").is_string())
      throw fail(where + ": missing dtype (a string)");
    if (!entry.contains("shape") || !entry.at("shape").is_array())
      throw fail(where + ": missing shape (an array)");
    if (!entry.contains("data_offsets") || !entry.at("data_offsets").is_array() ||
        entry.at("data_offsets").size() != 2)
      throw fail(where + ": missing data_offsets (an array [begin, end])");
    torch::Dtype dtype;
    try {
      dtype = safetensors_dtype(entry.at("dtype").get<std::string>());
    } catch (const std::invalid_argument& e) {
      throw fail(where + ": " + e.what());
    }
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : entry.at("shape")) {
      const uint64_t n = non_negative(d, path + ": " + where + ": shape entries");
      if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n))
        throw fail(where + ": shape " + entry.at("shape").dump() + " is too large");
      numel *= n;
      shape.push_back(static_cast<int64_t>(n));
    }
    const uint64_t begin =
        non_negative(entry.at("data_offsets")[0], path + ": " + where + ": data_offsets");
    const uint64_t end =
        non_negative(entry.at("data_offsets")[1], path + ": " + where + ": data_offsets");
    if (begin > end || end > data_size)
      throw fail(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                 "] out of range of the data section (" + std::to_string(data_size) +
                 " bytes): truncated or corrupt file");
    const uint64_t item = c10::elementSize(dtype);
    if (numel > std::numeric_limits<uint64_t>::max() / item || end - begin != numel * item)
      throw fail(where + ": data_offsets span " + std::to_string(end - begin) + " bytes where " +
                 entry.at("dtype").get<std::string>() + " " + shape_text(shape) + " needs " +
                 std::to_string(numel * item));
    const uint8_t* ptr = data + begin;
    torch::Tensor t;
    if (reinterpret_cast<uintptr_t>(ptr) % item == 0) {
      // A view on the mapping; the deleter holds the mapping until the last view is gone.
      t = torch::from_blob(
          const_cast<uint8_t*>(ptr), shape, [file](void*) {}, torch::TensorOptions().dtype(dtype));
    } else {
      // Misaligned for the element type (a header length not a multiple of 8): copy it.
      t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
      if (numel > 0) std::memcpy(t.data_ptr(), ptr, numel * item);
    }
    out.tensors.emplace(name, std::move(t));
  }
  return out;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> data;
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw std::invalid_argument(path + ": a tensor named __metadata__");
    if (header.contains(name)) throw std::invalid_argument(path + ": tensor " + name + " twice");
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::invalid_argument(tmp + ": cannot create");
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : data)
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    out.flush();
    if (!out) throw std::invalid_argument(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::invalid_argument(path + ": cannot rename from " + tmp + ": " + std::strerror(errno));
}

}  // namespace hx
