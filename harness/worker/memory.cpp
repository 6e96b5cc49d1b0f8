#include "harness/worker/memory.h"

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/compat.h"

namespace hx {
namespace {

// A 64-byte header in front of every block holds its size and the block malloc returned, so the
// deleter needs only the data pointer (oneDNN requires context == data and uses raw_deleter());
// the data is aligned to 64 bytes, libtorch's alignment, by hand: posix_memalign asks glibc for
// the size plus the alignment plus a minimum chunk, so a block freed by a tensor could never
// serve the next tensor of the same size, and loading a 4-bit model (one weight-sized source
// freed and allocated again per weight) grew the heap by about the whole fp32 model.
struct Header {
  int64_t size;
  void* block;
};
constexpr size_t kHeader = 64;
constexpr size_t kAlignment = 64;
static_assert(sizeof(Header) <= kHeader);

std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_cap{0};
std::atomic<bool> g_installed{false};

void raise_peak(int64_t value) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (value > peak && !g_peak.compare_exchange_weak(peak, value, std::memory_order_relaxed)) {
  }
}

void counting_delete(void* data) {
  if (data == nullptr) return;
  const auto* header = reinterpret_cast<const Header*>(static_cast<char*>(data) - kHeader);
  g_current.fetch_sub(header->size, std::memory_order_relaxed);
  std::free(header->block);
}

class Allocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const auto size = static_cast<int64_t>(n);
    const int64_t now = g_current.fetch_add(size, std::memory_order_relaxed) + size;
    const int64_t cap = g_cap.load(std::memory_order_relaxed);
    if (cap > 0 && now > cap) {
      g_current.fetch_sub(size, std::memory_order_relaxed);
      C10_THROW_ERROR(OutOfMemoryError,
                      "CPU memory cap exceeded: tried to allocate " + std::to_string(n) +
                          " bytes with " + std::to_string(now - size) + " of " +
                          std::to_string(cap) + " bytes in use (memory_limit_mb)");
    }
    raise_peak(now);
    void* block = std::malloc(n + kHeader + kAlignment);
    if (block == nullptr) {
      g_current.fetch_sub(size, std::memory_order_relaxed);
      C10_THROW_ERROR(OutOfMemoryError, "CPU allocation of " + std::to_string(n) + " bytes failed");
    }
    const auto first = reinterpret_cast<uintptr_t>(block) + kHeader;
    void* data = reinterpret_cast<void*>((first + kAlignment - 1) / kAlignment * kAlignment);
    *reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader) = {size, block};
    return {data, data, &counting_delete, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counting_delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

Allocator g_allocator;

}  // namespace

void CountingAllocator::install() {
  if (g_installed.exchange(true)) return;
  c10::SetCPUAllocator(&g_allocator, /*priority=*/100);
}
bool CountingAllocator::installed() { return g_installed.load(); }
int64_t CountingAllocator::current_bytes() { return g_current.load(); }
int64_t CountingAllocator::peak_bytes() { return g_peak.load(); }
void CountingAllocator::reset_peak() { g_peak.store(g_current.load()); }
void CountingAllocator::set_cap(int64_t bytes) { g_cap.store(bytes); }
int64_t CountingAllocator::cap() { return g_cap.load(); }

void MemoryProbe::reset_peak() const {
  if (cuda) {
    compat::cuda_synchronize();
    compat::cuda_reset_peak();
  } else {
    CountingAllocator::reset_peak();
  }
}
int64_t MemoryProbe::current() const {
  return cuda ? compat::cuda_memory().allocated : CountingAllocator::current_bytes();
}
int64_t MemoryProbe::peak() const {
  return cuda ? compat::cuda_memory().peak_allocated : CountingAllocator::peak_bytes();
}
int64_t MemoryProbe::peak_reserved() const {
  return cuda ? compat::cuda_memory().peak_reserved : CountingAllocator::peak_bytes();
}

}  // namespace hx
