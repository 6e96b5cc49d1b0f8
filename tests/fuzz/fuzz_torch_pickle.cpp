// The check of a torch.save pickle (model/torch_pickle.h, what read_torch_dict runs on data.pkl
// before libtorch's unpickler): any bytes are either accepted, or a std::invalid_argument naming
// the file. A libtorch-free target, so the fuzzer sees the check's own branches.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "model/torch_pickle.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = "consolidated.00.pth";
  try {
    hx::check_torch_pickle(std::string_view(reinterpret_cast<const char*>(data), size), path);
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ": ");
  }
  return 0;
}
