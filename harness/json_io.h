#pragma once
// Small file helpers shared by parent and worker.
#include <string>

namespace hx {
std::string read_file(const std::string& path);              // throws std::runtime_error naming path
void write_file_atomic(const std::string& path, const std::string& bytes);  // temp + fsync + rename
}  // namespace hx
