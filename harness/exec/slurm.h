#pragma once
// The Slurm backend's view of the queue: parsing squeue/sacct output and mapping Slurm job states
// to run statuses. The backend itself (submission, following, collecting) is behind
// run_experiment / collect_experiment (runner.h). No libtorch.
#include <ctime>
#include <map>
#include <optional>
#include <string>

#include "harness/plan/vocabulary.h"

namespace hx {

struct SlurmTaskState {
  std::string state;  // PENDING, RUNNING, COMPLETED, TIMEOUT, ... ("CANCELLED by 0" -> CANCELLED)
  std::string node;   // "" while pending
  std::optional<std::time_t> end;  // when the task ended (final states), local time
  std::string reason;              // squeue's %r: why a task is pending ("None", "Priority", ...)
};

// Parses lines "JOBID_TASK|STATE|NODE|END[|REASON]" (squeue -h -r -t all -o '%i|%T|%N|%e|%r', or
// sacct -n -P -X -o JobID,State,NodeList,End) into task index -> state for array job `job_id`.
// Ranges such as "12_[3-5,7%2]" count for each index; lines of other jobs and job steps are
// ignored.
std::map<int, SlurmTaskState> parse_slurm_array_states(const std::string& text,
                                                       const std::string& job_id);

// Whether a task in this state has ended (COMPLETED, FAILED, TIMEOUT, CANCELLED, ...).
bool slurm_state_is_final(const std::string& state);

// The run status and message for a task that ended in `state` without writing its outcome file
// (the task's own verdict always wins when it exists).
struct SlurmVerdict {
  Status status = Status::kError;  // oom | timeout | crashed | error
  std::string error;
};
SlurmVerdict slurm_verdict(const SlurmTaskState& task, const std::string& time_limit);

// sbatch --time for a run timeout: timeout_s plus a 2-minute margin, in whole minutes, as
// "[D-]HH:MM:SS"; "" for no timeout.
std::string slurm_time_limit(double timeout_s);

// Seconds in a Slurm time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS");
// nullopt when it is not one.
std::optional<double> parse_slurm_time(const std::string& text);

}  // namespace hx
