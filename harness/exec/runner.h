#pragma once
// Runs the planned runs of a spec, each in its own child process (`harness-worker run`), and
// ingests every outcome into the store as it arrives. No libtorch.
#include <string>
#include <vector>

#include "harness/plan/spec.h"

namespace hx {

// `--backend slurm`: one job array per submission (docs/slurm.md).
struct SlurmOptions {
  std::string partition, gres, account;
  std::string mem;   // sbatch --mem (host memory of a task); "" = the cluster's default
  std::string time;  // --time; "" = the spec's timeout_s plus a margin, in whole minutes
  std::vector<std::string> sbatch_args;  // passed to sbatch as they are
  int cpus_per_task = 0;       // 0: sbatch's default; also the worker's thread count when set
  int max_parallel = 0;        // 0: no limit; else the array throttle (--array=0-N%K)
  bool wait = true;            // follow the array until every task is ingested
  double poll_s = 10;          // squeue interval while waiting
  double result_grace_s = 60;  // a task Slurm calls COMPLETED may take this long to show its
                               // files on a shared file system
  std::string harness_path;    // the `harness` that tasks run; default: this executable
};

struct RunOptions {
  std::string db_path = "results/harness.db";
  std::string runs_dir;       // run files and logs; default: <db dir>/runs/<experiment>
  std::string worker_path;    // default: harness-worker next to this executable
  bool force = false;         // rerun every run
  bool retry_failed = false;  // rerun runs whose stored status is not ok
  int jobs = 1;               // concurrent runs (CPU specs only; CUDA runs go one at a time)
  bool progress = true;
  std::string backend = "local";  // local | slurm
  SlurmOptions slurm;
};

struct RunSummary {
  int planned = 0;
  int already_done = 0;  // skipped because a result is stored (resume)
  int elsewhere = 0;     // run, or running, by another runner on the same database
  int ran = 0;
  int ok = 0;
  int oom = 0;
  int failed = 0;  // timeout, crashed, error
  bool interrupted = false;
  int in_flight = 0;  // Slurm: tasks still queued or running when the command returned
  std::vector<std::string> job_ids;  // Slurm: the arrays submitted by this command
  bool submit_failed = false;        // Slurm: a later array could not be submitted
};

// Throws std::invalid_argument for bad options, std::runtime_error when the store or the worker
// cannot be used. A run's own failure is recorded, never thrown.
RunSummary run_experiment(const Spec& spec, const RunOptions& options);

// Slurm: ingests the results of the experiment's submitted tasks that have finished and are not
// yet ingested (any number of times; nothing is ingested twice); with options.slurm.wait, follows
// the arrays until every task is in.
RunSummary collect_experiment(const Spec& spec, const RunOptions& options);

// "harness collect SPEC [--db DB] [--runs-dir DIR]" as the user's options need it.
std::string collect_hint(const std::string& spec_path, const RunOptions& options);
// Where the Slurm submissions of the spec are kept (<runs dir>/slurm).
std::string slurm_submissions_dir(const Spec& spec, const RunOptions& options);

// Inside a Slurm array task: runs task `index` of the submission in `submission_dir` (its worker,
// with the spec's timeout_s enforced here) and writes the task's outcome file. Returns the exit
// code for the task.
int run_slurm_task(const std::string& submission_dir, int index);

// Directory of the running executable (for finding harness-worker beside it).
std::string executable_dir();
std::string default_worker_path();

}  // namespace hx
