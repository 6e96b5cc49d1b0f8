#pragma once
// The header of a safetensors file, parsed and checked without libtorch (model/safetensors.h maps
// the data as tensors): an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype":
// "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str} (optional)},
// then the data; offsets count from the byte after the header.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace hx {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // one of safetensors_dtype_names()
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // data_offsets: bytes from the start of the data section
};

struct SafetensorsHeader {
  uint64_t data_start = 0;                      // 8 + N: the data section's offset in the file
  std::vector<SafetensorsEntry> entries;        // sorted by name
  std::map<std::string, std::string> metadata;  // "__metadata__", empty when absent
};

// "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", comma-separated.
std::string safetensors_dtype_names();
// Bytes per element of a dtype name; 0 for a name that is not in the list above.
size_t safetensors_element_size(std::string_view dtype);

// Parses the header of the `size` bytes of a whole file at `file`. Throws std::invalid_argument
// naming `path` for anything malformed: a file shorter than the 8-byte length, a header length past
// the end of the file or above 100 MB, header JSON that does not parse or has the wrong structure,
// an unknown dtype, a shape whose byte count overflows, data_offsets out of the data section or not
// matching dtype and shape.
SafetensorsHeader parse_safetensors_header(const uint8_t* file, uint64_t size,
                                           const std::string& path);

}  // namespace hx
