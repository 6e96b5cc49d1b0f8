#pragma once
// Hardware profiles (`device_profile: p100` in a spec): the memory a GPU gives to CUDA and what
// arithmetic it has, so that a spec can emulate a smaller GPU on a bigger one (memory cap) and
// never runs what the hardware cannot do (bf16 on a P100 is `skipped`, with the reason).
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace hx {

struct DeviceProfile {
  std::string_view key;       // as written in specs: p100, a100-80gb, ...
  std::string_view gpu_name;  // the product in gpu_specs.h (its peaks say whether bf16 exists)
  // Memory CUDA reports for the device (total of cudaMemGetInfo, as nvidia-smi shows it), MiB:
  // a little below the marketed size.
  int64_t memory_mb = 0;
};

std::span<const DeviceProfile> device_profiles();
const DeviceProfile* find_device_profile(std::string_view key);
std::string device_profile_keys();  // "p100, v100, ..." for messages
bool profile_has_bf16(const DeviceProfile& profile);

}  // namespace hx
