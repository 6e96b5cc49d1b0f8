#include "model/safetensors_header.h"

#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace hx {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors lengths are little-endian; this reader reads them as is");

using Json = nlohmann::json;

// Like the reference implementation: a header above 100 MB is refused (a corrupt length).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeSize {
  std::string_view name;
  size_t bytes;
};
constexpr DtypeSize kDtypeSizes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                     {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A value as an error message shows it: scalars as written, an array or object by its type (their
// text can be nested deeply enough to exhaust the stack of a recursive dump).
std::string shown(const Json& v) {
  return v.is_structured() ? std::string("an ") + v.type_name() : v.dump();
}

uint64_t non_negative(const Json& v, const std::string& what) {
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
    throw std::invalid_argument(what + " must be a non-negative integer, got " + shown(v));
  return v.get<uint64_t>();
}

}  // namespace

std::string safetensors_dtype_names() {
  std::string known;
  for (const auto& d : kDtypeSizes) known += (known.empty() ? "" : ", ") + std::string(d.name);
  return known;
}

size_t safetensors_element_size(std::string_view dtype) {
  for (const auto& d : kDtypeSizes)
    if (dtype == d.name) return d.bytes;
  return 0;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t size,
                                           const std::string& path) {
  auto fail = [&](const std::string& msg) -> std::invalid_argument {
    return std::invalid_argument(path + ": " + msg);
  };
  if (size < 8)
    throw fail("file of " + std::to_string(size) +
               " bytes is too short for a safetensors header (an 8-byte length first)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file, 8);  // little-endian, as the host (static_assert)
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes): truncated, or not a safetensors file");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " above the 100 MB limit");
  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  const uint64_t data_size = size - out.data_start;

  Json header;
  try {
    header = Json::parse(file + 8, file + out.data_start);
  } catch (const Json::exception& e) {
    throw fail(std::string("bad header JSON: ") + e.what());
  }
  if (!header.is_object())
    throw fail("bad header JSON: expected an object, got " + std::string(header.type_name()));

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
    SafetensorsEntry e;
    e.name = name;
    e.dtype = entry.at("dtype").get<std::string>();
    const uint64_t item = safetensors_element_size(e.dtype);
    if (item == 0)
      throw fail(where + ": unknown dtype \"" + e.dtype +
                 "\" (supported: " + safetensors_dtype_names() + ")");
    // numel, and the product of the non-zero sizes (what a tensor library multiplies in int64).
    uint64_t numel = 1, extent = 1;
    constexpr auto kMaxExtent = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    for (const auto& d : entry.at("shape")) {
      const uint64_t n = non_negative(d, path + ": " + where + ": shape entries");
      if (n != 0 && extent > kMaxExtent / n)
        throw fail(where + ": shape " + shape_text(e.shape) + " times " + std::to_string(n) +
                   " is too large (more than 2^63 - 1 elements)");
      if (n != 0) extent *= n;
      numel = n == 0 ? 0 : numel * n;
      e.shape.push_back(static_cast<int64_t>(n));
    }
    const auto& offsets = entry.at("data_offsets");
    e.begin = non_negative(offsets[0], path + ": " + where + ": data_offsets");
    e.end = non_negative(offsets[1], path + ": " + where + ": data_offsets");
    if (e.begin > e.end || e.end > data_size)
      throw fail(where + ": data_offsets [" + std::to_string(e.begin) + ", " +
                 std::to_string(e.end) + "] out of range of the data section (" +
                 std::to_string(data_size) + " bytes): truncated or corrupt file");
    if (numel > std::numeric_limits<uint64_t>::max() / item || e.end - e.begin != numel * item)
      throw fail(where + ": data_offsets span " + std::to_string(e.end - e.begin) +
                 " bytes where " + e.dtype + " " + shape_text(e.shape) + " needs " +
                 (numel > std::numeric_limits<uint64_t>::max() / item
                      ? std::string("more than 2^64")
                      : std::to_string(numel * item)));
    out.entries.push_back(std::move(e));
  }
  return out;
}

}  // namespace hx
