#pragma once
// Peak dense FLOP/s of the GPUs the harness is run on, from the vendors' datasheets, for MFU
// (model FLOPs utilisation) in `harness compare`. No libtorch. Sources and the rules behind
// each figure: docs/compare-and-gate.md "The peak table".
#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace hx {

struct GpuPeak {
  std::string_view name;  // how reports name the product: "A100 80GB", "H100 SXM"
  // Every token must occur in the CUDA device name as a whole word (neither neighbour a letter
  // or digit), so "A10" matches "NVIDIA A10" and not "NVIDIA A100-SXM4-80GB" or "NVIDIA A10G".
  // Empty tokens are ignored.
  std::array<std::string_view, 2> tokens;
  // Dense peak in TFLOP/s (no 2:4 sparsity). fp32: the CUDA cores (libtorch leaves TF32 off
  // for matmuls by default); fp16/bf16: the tensor cores (P100: packed half on the CUDA cores).
  // 0 = the GPU has no such arithmetic.
  double fp32_tflops = 0;
  double fp16_tflops = 0;
  double bf16_tflops = 0;
  std::string_view source;  // the datasheet
};

// In matching order: more specific entries before the ones they would otherwise hit.
std::span<const GpuPeak> gpu_peaks();

// The entry whose tokens all occur in `device_name` (torch.cuda.get_device_name /
// cudaDeviceProp::name, e.g. "NVIDIA A100-SXM4-80GB"); nullptr for an unknown GPU.
const GpuPeak* find_gpu_peak(std::string_view device_name);

// The peak in FLOP/s for "fp32", "fp16" or "bf16"; nullopt when the GPU has no such arithmetic
// or the dtype is unknown.
std::optional<double> peak_flops(const GpuPeak& gpu, std::string_view dtype);

}  // namespace hx
