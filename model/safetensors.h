#pragma once
// The safetensors format, read and written by us (no dependency): an 8-byte little-endian header
// length N, N bytes of JSON {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {str: str} (optional)}, then the data; offsets count from the byte after the
// header. Reading maps the file (mmap), checks the header (model/safetensors_header.h, no
// libtorch) and returns tensors that are views on the mapping (no copy); the mapping lives as long
// as any of them.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/safetensors_header.h"
#include "model/weights.h"

namespace hx {

struct SafetensorsFile {
  TensorMap tensors;  // views on the mapping (copy-on-write: writes never reach the file)
  std::map<std::string, std::string> metadata;  // "__metadata__", empty when absent
};

// Throws std::invalid_argument naming the file when it cannot be mapped or its header is malformed
// (parse_safetensors_header).
SafetensorsFile read_safetensors(const std::string& path);

// "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"; throws for others.
torch::Dtype safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(torch::Dtype dtype);

// Writes `tensors` in the given order (each made a contiguous CPU tensor), the header padded with
// spaces to a multiple of 8 bytes. Atomic: a temporary file renamed over `path`.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace hx
