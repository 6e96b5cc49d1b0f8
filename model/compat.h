#pragma once
// The calls that differ between a CPU-only and a CUDA build of libtorch 2.x live here, so the rest
// of the code has no #if. The project has one libtorch (PyTorch's wheel, built with CUDA; see
// CMakeLists.txt), and HX_WITH_CUDA is 0 only where it was linked without the CUDA toolkit.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "torch_features.h"  // generated: HX_WITH_CUDA

#if HX_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif
#include <algorithm>
#include <cctype>
#include <fstream>
#include <string>

namespace hx::compat {

inline constexpr bool kWithCuda = HX_WITH_CUDA != 0;

// The autocast state of the current thread: saved by gradient checkpointing in forward and
// restored for the recompute in backward, else the recomputed block runs in another precision.
struct AutocastState {
  bool cpu_enabled = false;
  bool cuda_enabled = false;
  at::ScalarType cpu_dtype = at::kBFloat16;
  at::ScalarType cuda_dtype = at::kHalf;
};

inline AutocastState autocast_state() {
  return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::is_autocast_enabled(at::kCUDA),
          at::autocast::get_autocast_dtype(at::kCPU), at::autocast::get_autocast_dtype(at::kCUDA)};
}

inline void set_autocast_state(const AutocastState& s) {
  at::autocast::set_autocast_dtype(at::kCPU, s.cpu_dtype);
  at::autocast::set_autocast_dtype(at::kCUDA, s.cuda_dtype);
  at::autocast::set_autocast_enabled(at::kCPU, s.cpu_enabled);
  at::autocast::set_autocast_enabled(at::kCUDA, s.cuda_enabled);
}

// The dtype torch::linear computes x W^T in: the autocast dtype where autocast is on for x's
// device (linear is on its lower-precision list on the CPU and on CUDA), else x's.
inline at::ScalarType linear_compute_dtype(const torch::Tensor& x) {
  const auto device = x.device().type();
  if ((device == c10::kCPU || device == c10::kCUDA) && at::autocast::is_autocast_enabled(device))
    return at::autocast::get_autocast_dtype(device);
  return x.scalar_type();
}

// RAII autocast scope, as Python's torch.autocast (libtorch has no C++ one). The autocast cache
// (low-precision copies of weights) is cleared when the outermost scope ends, as torch.autocast
// does.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, at::ScalarType dtype) : saved_(autocast_state()) {
    AutocastState s = saved_;
    if (device == c10::kCUDA) {
      s.cuda_enabled = true;
      s.cuda_dtype = dtype;
    } else {
      s.cpu_enabled = true;
      s.cpu_dtype = dtype;
    }
    set_autocast_state(s);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_autocast_state(saved_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  AutocastState saved_;
};

// Device memory of the CUDA caching allocator; zeros without CUDA.
struct CudaMemory {
  int64_t allocated = 0, reserved = 0, peak_allocated = 0, peak_reserved = 0, total = 0;
};

// Whether a CUDA device can be used in this process. A CUDA link on a machine without a driver or
// device must not touch the CUDA runtime at all (it raises "driver version is insufficient"), so
// every call below checks this first. Asked once: the answer does not change in a process.
inline bool cuda_usable() {
#if HX_WITH_CUDA
  // Initialises CUDA here, not at the first allocation: the caching allocator's stats and caps
  // below assert "did you call init?" before that.
  static const bool usable = [] {
    if (!torch::cuda::is_available()) return false;
    at::globalContext().lazyInitDevice(at::kCUDA);
    // libtorch 2.11 tries cuDNN's fused attention first on Hopper and newer, and cuDNN builds an
    // execution plan for every new shape (0.2-2 s each, measured on the H200 in phase 4: every
    // new sequence length of a variable-length batch, every decoding step's longer KV cache), a
    // cost a benchmark would report as step time. Without it SDPA picks FlashAttention (then
    // the memory-efficient kernel, then math), as on the GPUs before Hopper.
    at::globalContext().setSDPUseCuDNN(false);
    return true;
  }();
  return usable;
#else
  return false;
#endif
}

// A data-parallel rank's GPU: rank r of a node takes device r modulo the devices it sees (Slurm's
// --gpus-per-task shows each task one). Returns the device index (0 without CUDA).
inline int cuda_select_device_for_rank(int rank) {
#if HX_WITH_CUDA
  if (!cuda_usable()) return 0;
  const int index = rank % std::max<int>(1, static_cast<int>(torch::cuda::device_count()));
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
  return index;
#else
  (void)rank;
  return 0;
#endif
}

inline void cuda_synchronize() {
#if HX_WITH_CUDA
  if (cuda_usable()) c10::cuda::device_synchronize();
#endif
}

// Returns the caching allocator's unused blocks to the device (a no-op without CUDA).
inline void cuda_empty_cache() {
#if HX_WITH_CUDA
  if (cuda_usable()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

inline void cuda_reset_peak() {
#if HX_WITH_CUDA
  if (cuda_usable()) c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
#endif
}

inline CudaMemory cuda_memory() {
  CudaMemory m;
#if HX_WITH_CUDA
  if (!cuda_usable()) return m;
  using c10::CachingAllocator::StatType;
  const auto device = c10::cuda::current_device();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  const auto agg = static_cast<size_t>(StatType::AGGREGATE);
  m.allocated = stats.allocated_bytes[agg].current;
  m.reserved = stats.reserved_bytes[agg].current;
  m.peak_allocated = stats.allocated_bytes[agg].peak;
  m.peak_reserved = stats.reserved_bytes[agg].peak;
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  m.total = static_cast<int64_t>(total_bytes);
#endif
  return m;
}

// Caps the caching allocator (emulating a smaller GPU); beyond it allocations raise
// c10::OutOfMemoryError as a real out-of-memory does.
inline void cuda_set_memory_cap(int64_t bytes) {
#if HX_WITH_CUDA
  if (!cuda_usable()) return;
  const auto m = cuda_memory();
  if (m.total > 0 && bytes > 0) {
    const double fraction = std::min(1.0, static_cast<double>(bytes) / m.total);
    c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, c10::cuda::current_device());
  }
#else
  (void)bytes;
#endif
}

inline std::string cuda_device_name() {
#if HX_WITH_CUDA
  if (!cuda_usable()) return "";
  return at::cuda::getCurrentDeviceProperties()->name;
#else
  return "";
#endif
}

inline std::string cuda_version() {
#if HX_WITH_CUDA && defined(CUDA_VERSION)
  return std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION % 1000 / 10);
#else
  return "";
#endif
}

// The driver version in a line of /proc/driver/nvidia/version: its first token made of digits
// and dots. The proprietary module writes "...Kernel Module  580.65.06  Sun Jul 27 ...", the open
// one "...Open Kernel Module for x86_64  580.159.04  Release Build ..."; empty if there is none.
inline std::string driver_version_from_proc_line(const std::string& line) {
  size_t pos = 0;
  while (pos < line.size()) {
    const auto begin = line.find_first_not_of(' ', pos);
    if (begin == std::string::npos) break;
    const auto end = std::min(line.find(' ', begin), line.size());
    const std::string token = line.substr(begin, end - begin);
    const bool version = std::isdigit(static_cast<unsigned char>(token.front())) &&
                         token.find('.') != std::string::npos &&
                         token.find_first_not_of("0123456789.") == std::string::npos;
    if (version) return token;
    pos = end;
  }
  return "";
}

// The NVIDIA driver's version ("580.65.06"), from the kernel module (what nvidia-smi shows);
// where that file is missing (containers without /proc/driver), the CUDA version the driver
// supports ("CUDA 13.0 driver API"); empty without CUDA.
inline std::string cuda_driver_version() {
#if HX_WITH_CUDA
  std::ifstream in("/proc/driver/nvidia/version");
  std::string line;
  if (std::getline(in, line)) {
    if (auto version = driver_version_from_proc_line(line); !version.empty()) return version;
  }
  int api = 0;
  if (cudaDriverGetVersion(&api) == cudaSuccess && api > 0)
    return "CUDA " + std::to_string(api / 1000) + "." + std::to_string(api % 1000 / 10) +
           " driver API";
#endif
  return "";
}

}  // namespace hx::compat
