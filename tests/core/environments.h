#pragma once
// Environment objects (worker-protocol.md `env`) of made-up machines, shared by the tests of
// report, compare and gate.
#include <nlohmann/json.hpp>

namespace hx::testing {

inline nlohmann::json p100_env() {
  return {{"host", "node7"},
          {"cpu", "Intel Xeon E5-2690 v4"},
          {"gpu_name", "Tesla P100-PCIE-16GB"},
          {"gpu_mem_mb", 16280},
          {"driver", "535.54.03"},
          {"cuda", "12.2"},
          {"libtorch", "2.1.0"},
          {"compiler", "GCC 12.2.0"},
          {"build_type", "Release"},
          {"git_commit", "0123456789ab"},
          {"threads", 4}};
}

}  // namespace hx::testing
