#pragma once
// The pieces of the LLaMA 3 (tiktoken-style) tokenizer, exposed for unit tests.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hx::bpe {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using RankMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// tiktoken's byte-pair merge of one pre-tokenised piece: repeatedly merges the adjacent pair whose
// concatenation has the lowest rank (the leftmost one on a tie) until no pair is a token; returns
// the ranks of the parts. Pieces longer than `heap_above` bytes use a heap (O(n log n)), shorter
// ones tiktoken's own linear scan; both give the same result. Every single byte must be a token.
// (The whole-piece lookup comes before this, in the caller.)
std::vector<int32_t> merge_piece(const RankMap& ranks, std::string_view piece,
                                 size_t heap_above = 64);

// Offset of the first byte that is not part of valid UTF-8 (overlongs, surrogates and code points
// above U+10FFFF are invalid), or npos.
size_t invalid_utf8_offset(std::string_view text);

// Python's str.isspace() (what Meta's tokenizer.py uses to bound runs).
bool is_python_space(char32_t c);

// Meta's tokenizer.py before tiktoken: chunks of at most 400,000 code points, each split so that
// no part holds more than `max_run` (25,000) consecutive whitespace or non-whitespace code points.
// `text` must be valid UTF-8.
std::vector<std::string_view> split_like_meta(std::string_view text, size_t max_chunk = 400000,
                                              size_t max_run = 25000);

// Standard base64 (with padding, as tiktoken files have it); false on malformed input.
bool base64_decode(std::string_view in, std::string& out);

}  // namespace hx::bpe
