#pragma once
// Small helpers for lists of words in messages: "a, b, c" and membership.
#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>

namespace hx {

template <typename Range>
bool contains_word(const Range& range, std::string_view word) {
  return std::find(std::begin(range), std::end(range), word) != std::end(range);
}

template <typename Range>
std::string join_words(const Range& range) {
  std::string out;
  for (const auto& item : range) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

}  // namespace hx
