#include "harness/plan/gpu_specs.h"

#include <cctype>

namespace hx {
namespace {

constexpr std::string_view kP100 = "NVIDIA Tesla P100 datasheet";
constexpr std::string_view kV100 = "NVIDIA V100 Tensor Core GPU datasheet";
constexpr std::string_view kT4 = "NVIDIA T4 Tensor Core GPU datasheet";
constexpr std::string_view kA10 = "NVIDIA A10 Tensor Core GPU datasheet";
constexpr std::string_view kL4 = "NVIDIA L4 Tensor Core GPU datasheet";
constexpr std::string_view kL40 = "NVIDIA L40 GPU datasheet";
constexpr std::string_view kL40S = "NVIDIA L40S GPU datasheet";
constexpr std::string_view kA100 = "NVIDIA A100 Tensor Core GPU datasheet";
constexpr std::string_view kH100 = "NVIDIA H100 Tensor Core GPU datasheet";
constexpr std::string_view kH200 = "NVIDIA H200 Tensor Core GPU datasheet";

// Datasheets quote tensor-core figures "with sparsity" (2:4) for Ampere and later; the dense
// figure is half of it, and that is what a dense matmul can reach.
constexpr std::array<GpuPeak, 17> kGpuPeaks = {{
    // name, tokens, fp32, fp16, bf16 (TFLOP/s, dense), source
    {"P100 SXM2", {"P100", "SXM2"}, 10.6, 21.2, 0, kP100},
    {"P100 PCIe", {"P100", ""}, 9.3, 18.7, 0, kP100},
    {"V100S PCIe", {"V100S", ""}, 16.4, 130, 0, kV100},
    {"V100 SXM2", {"V100", "SXM2"}, 15.7, 125, 0, kV100},
    {"V100 PCIe", {"V100", ""}, 14, 112, 0, kV100},
    {"T4", {"T4", ""}, 8.1, 65, 0, kT4},
    {"A10", {"A10", ""}, 31.2, 125, 125, kA10},
    {"L4", {"L4", ""}, 30.3, 121, 121, kL4},
    {"L40S", {"L40S", ""}, 91.6, 362.05, 362.05, kL40S},
    {"L40", {"L40", ""}, 90.5, 181.05, 181.05, kL40},
    {"A100 80GB", {"A100", "80GB"}, 19.5, 312, 312, kA100},
    {"A100 40GB", {"A100", ""}, 19.5, 312, 312, kA100},
    {"H100 PCIe", {"H100", "PCIe"}, 51, 756, 756, kH100},
    {"H100 NVL", {"H100", "NVL"}, 60, 835.5, 835.5, kH100},
    {"H100 SXM", {"H100", ""}, 67, 989.5, 989.5, kH100},
    {"H200 NVL", {"H200", "NVL"}, 60, 835.5, 835.5, kH200},
    {"H200 SXM", {"H200", ""}, 67, 989.5, 989.5, kH200},
}};

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

// `token` occurs in `text` (case-insensitively) with no letter or digit on either side.
bool contains_word(std::string_view text, std::string_view token) {
  if (token.empty()) return true;
  for (size_t start = 0; start + token.size() <= text.size(); ++start) {
    bool same = true;
    for (size_t i = 0; i < token.size() && same; ++i) {
      same = lower(text[start + i]) == lower(token[i]);
    }
    if (!same) continue;
    const bool left_ok = start == 0 || !is_word_char(text[start - 1]);
    const size_t end = start + token.size();
    const bool right_ok = end == text.size() || !is_word_char(text[end]);
    if (left_ok && right_ok) return true;
  }
  return false;
}

}  // namespace

std::span<const GpuPeak> gpu_peaks() { return kGpuPeaks; }

const GpuPeak* find_gpu_peak(std::string_view device_name) {
  if (device_name.empty()) return nullptr;
  for (const GpuPeak& gpu : kGpuPeaks) {
    if (contains_word(device_name, gpu.tokens[0]) && contains_word(device_name, gpu.tokens[1])) {
      return &gpu;
    }
  }
  return nullptr;
}

std::optional<double> peak_flops(const GpuPeak& gpu, std::string_view dtype) {
  double tflops = 0;
  if (dtype == "fp32") {
    tflops = gpu.fp32_tflops;
  } else if (dtype == "fp16") {
    tflops = gpu.fp16_tflops;
  } else if (dtype == "bf16") {
    tflops = gpu.bf16_tflops;
  }
  if (tflops <= 0) return std::nullopt;
  return tflops * 1e12;
}

}  // namespace hx
