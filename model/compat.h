#pragma once
// Every call whose API differs between libtorch 1.13 (Debian, CPU, CI) and 2.x (the PyTorch
// installation of GPU machines) lives here, so the rest of the code is version-free.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "torch_features.h"  // generated: HX_WITH_CUDA

#if HX_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <ATen/cuda/CUDAContext.h>
#endif
#include <string>

namespace hx::compat {

inline constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;
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
  AutocastState s;
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR >= 3
  s.cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
  s.cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
  s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
  s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#else
  s.cpu_enabled = at::autocast::is_cpu_enabled();
  s.cuda_enabled = at::autocast::is_enabled();
  s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
  s.cuda_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
  return s;
}

inline void set_autocast_state(const AutocastState& s) {
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR >= 3
  at::autocast::set_autocast_dtype(at::kCPU, s.cpu_dtype);
  at::autocast::set_autocast_dtype(at::kCUDA, s.cuda_dtype);
  at::autocast::set_autocast_enabled(at::kCPU, s.cpu_enabled);
  at::autocast::set_autocast_enabled(at::kCUDA, s.cuda_enabled);
#else
  at::autocast::set_autocast_cpu_dtype(s.cpu_dtype);
  at::autocast::set_autocast_gpu_dtype(s.cuda_dtype);
  at::autocast::set_cpu_enabled(s.cpu_enabled);
  at::autocast::set_enabled(s.cuda_enabled);
#endif
}

// RAII autocast scope (1.13 has none). The autocast cache (low-precision copies of weights) is
// cleared when the outermost scope ends, as torch.autocast does.
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

inline void cuda_synchronize() {
#if HX_WITH_CUDA
  c10::cuda::device_synchronize();
#endif
}

// Returns the caching allocator's unused blocks to the device (a no-op without CUDA).
inline void cuda_empty_cache() {
#if HX_WITH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

inline void cuda_reset_peak() {
#if HX_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
#endif
}

inline CudaMemory cuda_memory() {
  CudaMemory m;
#if HX_WITH_CUDA
  using c10::cuda::CUDACachingAllocator::StatType;
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

}  // namespace hx::compat
