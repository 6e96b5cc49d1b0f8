#pragma once
// Runs the planned runs of a spec, each in its own child process (`harness-worker run`), and
// ingests every outcome into the store as it arrives. No libtorch.
#include <string>

#include "harness/spec.h"

namespace hx {

struct RunOptions {
  std::string db_path = "results/harness.db";
  std::string runs_dir;     // run files and logs; default: <db dir>/runs/<experiment>
  std::string worker_path;  // default: harness-worker next to this executable
  bool force = false;         // rerun every run
  bool retry_failed = false;  // rerun runs whose stored status is not ok
  int jobs = 1;               // concurrent runs (CPU specs only; CUDA runs go one at a time)
  bool progress = true;
};

struct RunSummary {
  int planned = 0;
  int already_done = 0;  // skipped because a result is stored (resume)
  int ran = 0;
  int ok = 0;
  int oom = 0;
  int failed = 0;  // timeout, crashed, error
  bool interrupted = false;
};

// Throws std::invalid_argument for bad options, std::runtime_error when the store or the worker
// cannot be used. A run's own failure is recorded, never thrown.
RunSummary run_experiment(const Spec& spec, const RunOptions& options);

// Directory of the running executable (for finding harness-worker beside it).
std::string executable_dir();
std::string default_worker_path();

}  // namespace hx
