#include "harness/plan/hash.h"

#include <array>

namespace hx {

uint64_t fnv1a64(std::string_view text) { return fnv1a64_update(kFnv1a64OffsetBasis, text); }

uint64_t fnv1a64_update(uint64_t hash, std::string_view text) {
  constexpr uint64_t kPrime = 1099511628211ULL;
  for (const char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= kPrime;
  }
  return hash;
}

void hex64(uint64_t hash, char* out) {
  constexpr std::array<char, 16> kDigits = {'0', '1', '2', '3', '4', '5', '6', '7',
                                            '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  for (int i = 15; i >= 0; --i) {
    out[i] = kDigits[hash & 0xF];
    hash >>= 4;
  }
}

std::string fnv1a64_hex(std::string_view text) {
  std::string out(16, '0');
  hex64(fnv1a64(text), out.data());
  return out;
}

}  // namespace hx
