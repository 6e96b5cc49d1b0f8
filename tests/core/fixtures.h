#pragma once
// Made-up data shared by the tests of report and compare: an environment object
// (worker-protocol.md `env`) and planned fine-tuning runs of a gc x mp matrix.
#include <nlohmann/json.hpp>
#include <string>

#include "harness/spec.h"

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

// The planned run "run-<gc>-<mp>-<repeat>" of batch 1, ga 1, lr 1e-5.
inline RunConfig planned_run(const std::string& gc, const std::string& mp, int repeat) {
  RunConfig run;
  run.run_id = "run-" + gc + "-" + mp + "-" + std::to_string(repeat);
  run.repeat = repeat;
  run.workload = "finetune";
  run.config = {{"batch_size", 1}, {"ga", 1}, {"gc", gc}, {"lr", 1e-5}, {"mp", mp}};
  run.canonical = canonical_json(run.config);
  return run;
}

}  // namespace hx::testing
