// The safetensors reader's header (model/safetensors_header.h, what read_safetensors checks before
// it maps any tensor): any bytes either parse into entries that lie inside the data section with
// the byte count of their dtype and shape, or are a std::invalid_argument naming the file.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "model/safetensors_header.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = "input.safetensors";
  try {
    const hx::SafetensorsHeader header = hx::parse_safetensors_header(data, size, path);
    // What read_safetensors relies on to map a tensor (a view of `end - begin` bytes).
    for (const hx::SafetensorsEntry& e : header.entries) {
      uint64_t numel = 1;
      for (const int64_t n : e.shape) numel *= static_cast<uint64_t>(n);
      if (header.data_start + e.end > size || e.begin > e.end ||
          e.end - e.begin != numel * hx::safetensors_element_size(e.dtype)) {
        hx::fuzz::finding("tensor " + e.name + " passed the header checks out of bounds");
      }
    }
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ": ");
  }
  return 0;
}
