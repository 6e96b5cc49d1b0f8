#pragma once
// Small file helpers shared by parent and worker.
#include <cstddef>
#include <string>
#include <string_view>

namespace hx {
std::string read_file(const std::string& path);  // throws std::runtime_error naming path
void write_file_atomic(const std::string& path, const std::string& bytes);  // temp + fsync + rename

// The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not count;
// the text need not be valid JSON). nlohmann's parser does not recurse, but copying, comparing and
// dumping a value do, once per level: a file of "[[[[..." nested 100,000 deep exhausts the stack.
// Readers of a user's JSON check this first (kMaxJsonDepth) where the value is copied or compared.
size_t json_nesting_depth(std::string_view text);
inline constexpr size_t kMaxJsonDepth = 64;
}  // namespace hx
