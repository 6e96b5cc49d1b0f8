// The Meta .pth reader (model/weights.h read_torch_dict: libtorch's torch::pickle_load of a
// torch.save zip, then a dict of str -> tensor): any bytes are either such a dict or a
// std::invalid_argument naming the file. Built only with libtorch (not HARNESS_PARENT_ONLY); the
// parsing itself is libtorch's, so the fuzzer's coverage guidance covers only our side of it.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "model/weights.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hx::fuzz::input_file(data, size, "consolidated.00.pth");
  try {
    const hx::TensorMap tensors = hx::read_torch_dict(path);
    // What read_meta does next with every tensor: its shape, and a copy.
    for (const auto& [name, tensor] : tensors) {
      if (tensor.defined() && tensor.numel() < (1 << 20)) (void)tensor.contiguous().sum();
    }
  } catch (const std::invalid_argument& e) {
    hx::fuzz::require_prefix(e, path + ": ");
  }
  return 0;
}
