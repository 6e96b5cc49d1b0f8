#pragma once
// Memory probes of the child. On CPU a counting allocator wraps libtorch's CPU allocator and
// gives the bytes held by tensors (current and peak) and an optional cap that fails allocations
// with c10::OutOfMemoryError, as CUDA does. On CUDA the caching allocator's own statistics.
#include <cstdint>

namespace hx {

class CountingAllocator {
 public:
  // Installs the allocator for all CPU tensors; call once at the start of main, before threads.
  static void install();
  static bool installed();
  static int64_t current_bytes();
  static int64_t peak_bytes();
  static void reset_peak();            // peak := current
  static void set_cap(int64_t bytes);  // 0 = no cap
  static int64_t cap();
};

// One interface for both devices; `cuda` selects the caching allocator's figures.
struct MemoryProbe {
  bool cuda = false;
  void reset_peak() const;
  int64_t current() const;        // bytes held by tensors
  int64_t peak() const;           // since the last reset
  int64_t peak_reserved() const;  // CUDA: reserved by the caching allocator; CPU: == peak
};

}  // namespace hx
