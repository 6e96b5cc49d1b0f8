#pragma once
// The statistics that tables, the gate and the worker share: one median, one spread.
// Header-only and libtorch-free, so that the worker can use it too.
#include <algorithm>
#include <stdexcept>
#include <vector>

namespace hx {

// The median of a non-empty sample (the mean of the middle two for an even count).
inline double median_of(std::vector<double> values) {
  if (values.empty()) throw std::invalid_argument("median of an empty sample");
  const size_t n = values.size();
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(n / 2);
  std::nth_element(values.begin(), middle, values.end());
  const double upper = *middle;
  if (n % 2 == 1) return upper;
  return (*std::max_element(values.begin(), middle) + upper) / 2;
}

// Half the range, (max - min) / 2, of a non-empty sample: the spread tables show next to a
// median (with few repeats a standard deviation would be a guess; the range is what was seen).
inline double half_range(const std::vector<double>& values) {
  if (values.empty()) throw std::invalid_argument("range of an empty sample");
  const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
  return (*hi - *lo) / 2;
}

}  // namespace hx
