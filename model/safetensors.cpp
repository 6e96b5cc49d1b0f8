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
  const SafetensorsHeader header = parse_safetensors_header(file->data(), file->size(), path);
  SafetensorsFile out;
  out.metadata = header.metadata;
  for (const SafetensorsEntry& e : header.entries) {
    const torch::Dtype dtype = safetensors_dtype(e.dtype);
    const uint64_t item = c10::elementSize(dtype);
    if (item != safetensors_element_size(e.dtype))
      throw std::logic_error("safetensors: two element sizes for " + e.dtype);
    const uint8_t* ptr = file->data() + header.data_start + e.begin;
    torch::Tensor t;
    if (reinterpret_cast<uintptr_t>(ptr) % item == 0) {
      // A view on the mapping; the deleter holds the mapping until the last view is gone.
      t = torch::from_blob(
          const_cast<uint8_t*>(ptr), e.shape, [file](void*) {},
          torch::TensorOptions().dtype(dtype));
    } else {
      // Misaligned for the element type (a header length not a multiple of 8): copy it.
      t = torch::empty(e.shape, torch::TensorOptions().dtype(dtype));
      if (e.end > e.begin) std::memcpy(t.data_ptr(), ptr, e.end - e.begin);
    }
    out.tensors.emplace(e.name, std::move(t));
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
