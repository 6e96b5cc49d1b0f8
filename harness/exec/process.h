#pragma once
// Runs one child process (argv, never a shell) in its own process group, with its stdout and
// stderr in files, a wall-clock timeout that kills the whole group, and graceful Ctrl-C handling.
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hx {

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0] is the executable's path (PATH is not searched)
  std::map<std::string, std::string> extra_env;  // added to (or replacing) the parent's env
  std::string stderr_path;  // truncated and created; empty: /dev/null (and no stderr_tail)
  std::string stdout_path;  // as stderr_path; the same path for both shares one file
  double timeout_s = 0;     // <= 0: no timeout
  // Ctrl-C neither kills this child nor stops the wait (e.g. sbatch: killed half-way, it may
  // have queued a job that nobody then knows of). It is still started after an interrupt.
  bool keep_on_interrupt = false;
};

struct ChildOutcome {
  bool timed_out = false;        // outlived timeout_s; the group was killed with SIGKILL
  bool interrupted = false;      // the parent got SIGINT/SIGTERM; the group was killed
  std::optional<int> exit_code;  // set when the child exited normally
  std::optional<int> signal;     // set when the child died by a signal (SIGKILL on timeout)
  double seconds = 0;            // wall time from spawn to reap
  std::string stderr_tail;       // the last ~40 lines / 4 KB of the stderr file
};

// Blocking; safe to call from several threads at once. The child inherits the parent's
// environment plus extra_env, reads /dev/null as stdin and starts in a process group of its own;
// when it ends, anything left in that group (e.g. `cmd &`) is killed too. Throws std::runtime_error
// (naming the path) when the executable or an output file cannot be opened; a child that starts and
// then fails is reported in the outcome instead. When interrupted() is already true nothing is
// started and the outcome has interrupted = true and neither exit_code nor signal.
ChildOutcome run_child(const ChildSpec& spec);

// Installs SIGINT/SIGTERM handlers (idempotent). On a signal the handler kills the process group
// of every live child (SIGKILL), sets interrupted(), and wakes every run_child wait, which then
// returns with interrupted = true. The handler resets itself, so a second Ctrl-C terminates the
// parent at once. Deciding to exit is left to the caller (e.g. exit code 128 + signal).
void install_interrupt_handler();
bool interrupted();
int interrupt_signal();  // the signal that interrupted us, 0 if none

}  // namespace hx
