#pragma once
// Stable hashing for identifiers that end up in the database (run ids, environment ids). FNV-1a
// 64 is tiny, has no dependency, and gives the same digits on every platform and compiler, which
// std::hash does not promise.
#include <cstdint>
#include <string>
#include <string_view>

namespace hx {

inline constexpr uint64_t kFnv1a64OffsetBasis = 14695981039346656037ULL;

uint64_t fnv1a64(std::string_view text);

// The hash continued over `text`: fnv1a64_update(fnv1a64(a), b) == fnv1a64(a + b), so that a
// common prefix is hashed once.
uint64_t fnv1a64_update(uint64_t hash, std::string_view text);

// 16 lowercase hex digits of fnv1a64(text), zero-padded.
std::string fnv1a64_hex(std::string_view text);

// 16 lowercase hex digits of `hash`, zero-padded, written to out[0..15].
void hex64(uint64_t hash, char* out);

}  // namespace hx
