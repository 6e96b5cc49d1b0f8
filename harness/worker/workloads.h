#pragma once
// The child's side of one run: read run.json, build the model, run the workload, measure.
#include <nlohmann/json.hpp>

namespace hx {

// Environment of this process: host, CPU, GPU, libtorch, compiler, build, threads.
nlohmann::json environment_json(bool cuda);

// Runs the workload of `run` (docs/worker-protocol.md) and returns the result object
// (status "ok"). Throws c10::OutOfMemoryError on out-of-memory, std::exception otherwise.
nlohmann::json run_workload(const nlohmann::json& run);

}  // namespace hx
