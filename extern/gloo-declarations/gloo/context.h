#pragma once
// Declarations only (see ../README.md): ProcessGroupGloo::setTimeout (inline) calls setTimeout.
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
