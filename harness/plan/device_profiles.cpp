#include "harness/plan/device_profiles.h"

#include <array>

#include "harness/plan/gpu_specs.h"

namespace hx {
namespace {

constexpr std::array kProfiles{
    DeviceProfile{"p100", "P100 PCIe", 16280},        DeviceProfile{"v100", "V100 SXM2", 16160},
    DeviceProfile{"v100-32gb", "V100 SXM2", 32510},   DeviceProfile{"t4", "T4", 15360},
    DeviceProfile{"a10", "A10", 22731},               DeviceProfile{"l4", "L4", 22478},
    DeviceProfile{"l40", "L40", 46068},               DeviceProfile{"l40s", "L40S", 46068},
    DeviceProfile{"a100-40gb", "A100 40GB", 40536},   DeviceProfile{"a100-80gb", "A100 80GB", 81920},
    DeviceProfile{"h100", "H100 SXM", 81559},         DeviceProfile{"h200", "H200 SXM", 143771},
};

}  // namespace

std::span<const DeviceProfile> device_profiles() { return kProfiles; }

const DeviceProfile* find_device_profile(std::string_view key) {
  for (const auto& p : kProfiles)
    if (p.key == key) return &p;
  return nullptr;
}

std::string device_profile_keys() {
  std::string out;
  for (const auto& p : kProfiles) out += (out.empty() ? "" : ", ") + std::string(p.key);
  return out;
}

bool profile_has_bf16(const DeviceProfile& profile) {
  for (const auto& gpu : gpu_peaks())
    if (gpu.name == profile.gpu_name) return gpu.bf16_tflops > 0;
  return false;
}

}  // namespace hx
