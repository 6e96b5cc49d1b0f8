#pragma once
// Stable hashing for identifiers that end up in the database (run ids, environment ids). FNV-1a
// 64 is tiny, has no dependency, and gives the same digits on every platform and compiler, which
// std::hash does not promise.
#include <cstdint>
#include <string>
#include <string_view>

namespace hx {

uint64_t fnv1a64(std::string_view text);

// 16 lowercase hex digits of fnv1a64(text), zero-padded.
std::string fnv1a64_hex(std::string_view text);

}  // namespace hx
