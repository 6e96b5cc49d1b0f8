#pragma once
// Declarations only (see ../README.md): ProcessGroupGloo.hpp includes this header for names it
// does not use in what the harness compiles.
namespace gloo {
class Algorithm;
}  // namespace gloo
