// The Slurm backend: one job array per submission; each task runs `harness task DIR INDEX`,
// which runs the worker with the spec's timeout and writes an outcome file beside the run's
// result; the parent follows the array with squeue (sacct where accounting exists) and ingests
// each outcome as it appears. Files of a submission (docs/slurm.md):
//   <runs_dir>/slurm/<token>/submission.json  tasks, worker, timeout, job id (parent)
//   <runs_dir>/slurm/<token>/collected.json   task indices already ingested (parent)
//   <runs_dir>/slurm/<token>/task.sh          the array's batch script
//   <runs_dir>/slurm/<token>/slurm-%A_%a.out  Slurm's own output of each task
//   <runs_dir>/<run_id>/<attempt>/run.<token>.json, result.<token>.json, outcome.<token>.json,
//     *.log (the attempt is the run's claim, docs/concurrency.md)
#include "harness/exec/slurm.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "harness/exec/process.h"
#include "harness/exec/ranks.h"
#include "harness/exec/runner.h"
#include "harness/exec/runner_internal.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace fs = std::filesystem;

// ---- Parsing and mapping (slurm.h) ----

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string field;
  std::istringstream in(text);
  while (std::getline(in, field, sep)) out.push_back(field);
  if (!text.empty() && text.back() == sep) out.emplace_back();
  return out;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::optional<int> to_int(const std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::stoi(s);
}

// "3" or "[3-5,7%2]" -> indices.
std::vector<int> array_indices(std::string text) {
  std::vector<int> out;
  if (!text.empty() && text.front() == '[') {
    text = text.substr(1, text.find(']') - 1);
    text = text.substr(0, text.find('%'));  // the throttle
  }
  for (const std::string& piece : split(text, ',')) {
    const auto dash = piece.find('-');
    const auto first = to_int(piece.substr(0, dash));
    const auto last = dash == std::string::npos ? first : to_int(piece.substr(dash + 1));
    if (!first || !last) continue;
    for (int i = *first; i <= *last; ++i) out.push_back(i);
  }
  return out;
}

std::optional<std::time_t> parse_local_time(const std::string& text) {
  std::tm tm{};
  if (strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr) return std::nullopt;
  tm.tm_isdst = -1;
  return std::mktime(&tm);
}

}  // namespace

std::map<int, SlurmTaskState> parse_slurm_array_states(const std::string& text,
                                                       const std::string& job_id) {
  std::map<int, SlurmTaskState> out;
  for (const std::string& line : split(text, '\n')) {
    const auto fields = split(trim(line), '|');
    if (fields.size() < 2) continue;
    const std::string& id = fields[0];
    if (id.rfind(job_id + "_", 0) != 0) continue;  // another job, or not an array element
    const std::string task = id.substr(job_id.size() + 1);
    if (task.find('.') != std::string::npos) continue;  // a job step (sacct without -X)
    SlurmTaskState state;
    state.state = trim(fields[1]).substr(0, trim(fields[1]).find(' '));  // "CANCELLED by 0"
    if (fields.size() > 2 && fields[2] != "(null)" && fields[2] != "None assigned")
      state.node = trim(fields[2]);
    if (fields.size() > 3) state.end = parse_local_time(trim(fields[3]));
    if (fields.size() > 4) state.reason = trim(fields[4]);
    for (int index : array_indices(task)) out[index] = state;
  }
  return out;
}

bool slurm_state_is_final(const std::string& state) {
  static const std::set<std::string> kFinal = {
      "COMPLETED", "CANCELLED", "FAILED",        "TIMEOUT",      "NODE_FAIL", "PREEMPTED",
      "BOOT_FAIL", "DEADLINE",  "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"};
  return kFinal.contains(state);
}

SlurmVerdict slurm_verdict(const SlurmTaskState& task, const std::string& time_limit) {
  const std::string where = task.node.empty() ? "" : " on node " + task.node;
  const std::string s = task.state;
  if (s == "OUT_OF_MEMORY")
    return {Status::kOom,
            "Slurm killed the task for exceeding the job's host memory limit (--mem; "
            "OUT_OF_MEMORY" +
                where + ")"};
  if (s == "TIMEOUT" || s == "DEADLINE")
    return {Status::kTimeout, "Slurm's time limit" +
                                  (time_limit.empty() ? "" : " (--time " + time_limit + ")") +
                                  " ended the task (" + s + where + ")"};
  if (s == "NODE_FAIL" || s == "BOOT_FAIL")
    return {Status::kCrashed, "node failure (" + s + where + ")"};
  if (s == "CANCELLED" || s == "PREEMPTED" || s == "REVOKED")
    return {Status::kError, "cancelled in Slurm (" + s + where + ")"};
  if (s == "COMPLETED")
    return {Status::kCrashed,
            "Slurm says COMPLETED" + where +
                ", but the task's outcome file never appeared (is the runs directory "
                "on a file system the nodes share?)"};
  if (s.empty())
    return {Status::kError,
            "Slurm no longer knows the task and it wrote no outcome (cancelled while "
            "pending, or purged from the queue)"};
  return {Status::kCrashed,
          "the task failed in Slurm (" + s + where + ") before writing its outcome"};
}

std::string slurm_time_limit(double timeout_s) {
  if (!(timeout_s > 0) || !std::isfinite(timeout_s)) return "";
  const auto minutes = static_cast<long long>(std::ceil((timeout_s + 120) / 60));
  char buf[48];
  constexpr long long kDay = 24LL * 60;
  if (minutes >= kDay) {
    std::snprintf(buf, sizeof buf, "%lld-%02lld:%02lld:00", minutes / kDay, minutes / 60 % 24,
                  minutes % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld:00", minutes / 60, minutes % 60);
  }
  return buf;
}

std::optional<double> parse_slurm_time(const std::string& text) {
  std::string rest = text;
  double days = 0;
  if (const auto dash = rest.find('-'); dash != std::string::npos) {
    const auto d = to_int(rest.substr(0, dash));
    if (!d) return std::nullopt;
    days = *d;
    rest = rest.substr(dash + 1);
  }
  const auto parts = split(rest, ':');
  std::vector<int> v;
  for (const auto& p : parts) {
    const auto n = to_int(p);
    if (!n) return std::nullopt;
    v.push_back(*n);
  }
  if (v.empty() || v.size() > 3) return std::nullopt;
  double seconds = 0;
  if (text.find('-') != std::string::npos) {  // D-HH[:MM[:SS]]
    const std::array<double, 3> unit = {3600, 60, 1};
    for (size_t i = 0; i < v.size() && i < unit.size(); ++i) seconds += v[i] * unit[i];
  } else if (v.size() == 1) {
    seconds = v[0] * 60.0;  // MM
  } else if (v.size() == 2) {
    seconds = v[0] * 60.0 + v[1];  // MM:SS
  } else {
    seconds = v[0] * 3600.0 + v[1] * 60.0 + v[2];
  }
  return days * 86400 + seconds;
}

// ---- The backend ----

namespace {
using namespace runner_detail;
using Clock = std::chrono::steady_clock;

struct Task {
  std::string run_id, run_json, result, outcome;
};

struct Submission {
  fs::path dir;
  std::string token, experiment, job_id, time_limit, worker;
  double timeout_s = 0;
  std::vector<Task> tasks;
  std::set<int> collected;
  // Collected without an outcome (Slurm said the task ended): their outcome files are looked for
  // again later, since a requeued task or a slow shared file system can still deliver one.
  std::set<int> late;

  bool done() const { return collected.size() >= tasks.size(); }
  // sbatch --job-name: with the token, so that a submission whose job id was never saved (the
  // parent died during sbatch) can be found in the queue.
  std::string job_name() const { return "harness-" + experiment + "-" + token; }
};

Json to_json(const Submission& s) {
  Json tasks = Json::array();
  for (const Task& t : s.tasks) {
    tasks.push_back({{"run_id", t.run_id},
                     {"run_json", t.run_json},
                     {"result", t.result},
                     {"outcome", t.outcome}});
  }
  return {{"token", s.token},   {"experiment", s.experiment},
          {"job_id", s.job_id}, {"time_limit", s.time_limit},
          {"worker", s.worker}, {"timeout_s", s.timeout_s},
          {"tasks", tasks}};
}

Submission load_submission(const fs::path& dir) {
  const fs::path file = dir / "submission.json";
  Submission s;
  try {
    const Json j = Json::parse(read_file(file.string()));
    s.dir = dir;
    s.token = j.at("token").get<std::string>();
    s.experiment = j.at("experiment").get<std::string>();
    s.job_id = j.value("job_id", std::string());
    s.time_limit = j.value("time_limit", std::string());
    s.worker = j.at("worker").get<std::string>();
    s.timeout_s = j.value("timeout_s", 0.0);
    for (const Json& t : j.at("tasks")) {
      s.tasks.push_back({t.at("run_id").get<std::string>(), t.at("run_json").get<std::string>(),
                         t.at("result").get<std::string>(), t.at("outcome").get<std::string>()});
    }
  } catch (const Json::exception& e) {
    throw std::runtime_error(file.string() + ": not a harness submission file: " + e.what());
  }
  const fs::path collected = dir / "collected.json";
  if (fs::exists(collected)) {
    try {
      const Json j = Json::parse(read_file(collected.string()));
      for (const Json& i : j.at("collected")) s.collected.insert(i.get<int>());
      for (const Json& i : j.at("late")) s.late.insert(i.get<int>());
    } catch (const Json::exception& e) {
      throw std::runtime_error(collected.string() + ": unreadable: " + e.what());
    }
  }
  return s;
}

void save_collected(const Submission& s) {
  write_file_atomic((s.dir / "collected.json").string(),
                    Json{{"collected", s.collected}, {"late", s.late}}.dump() + "\n");
}

// The experiment's submissions with tasks not yet ingested (or ingested without an outcome),
// oldest first.
std::vector<Submission> open_submissions(const fs::path& runs_dir, const std::string& experiment) {
  std::vector<Submission> out;
  const fs::path root = runs_dir / "slurm";
  if (!fs::is_directory(root)) return out;
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(root))
    if (fs::exists(entry.path() / "submission.json")) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());  // tokens start with the UTC time
  for (const auto& dir : dirs) {
    Submission s = load_submission(dir);
    if (s.experiment == experiment && (!s.done() || !s.late.empty())) out.push_back(std::move(s));
  }
  return out;
}

// PATH lookup (run_child executes paths only).
std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (const std::string& dir : split(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs a Slurm client command and captures its output; throws when it cannot be started.
// Dates in the standard format whatever the user's SLURM_TIME_FORMAT says.
CommandResult run_command(const std::vector<std::string>& argv, double timeout_s = 60,
                          bool keep_on_interrupt = false) {
  const std::string exe = find_program(argv[0]);
  if (exe.empty())
    throw std::runtime_error(argv[0] +
                             " not found in PATH: the Slurm backend needs Slurm's client commands "
                             "(sbatch, squeue) on this machine");
  static std::atomic<int> counter{0};
  const fs::path base =
      fs::temp_directory_path() / ("harness-" + argv[0] + "." + std::to_string(::getpid()) + "." +
                                   std::to_string(counter.fetch_add(1)));
  ChildSpec child;
  child.argv = argv;
  child.argv[0] = exe;
  child.stdout_path = base.string() + ".out";
  child.stderr_path = base.string() + ".err";
  child.timeout_s = timeout_s;
  child.extra_env = {{"SLURM_TIME_FORMAT", "standard"}};
  child.keep_on_interrupt = keep_on_interrupt;
  const ChildOutcome outcome = run_child(child);
  CommandResult result;
  result.exit_code = outcome.exit_code.value_or(-1);
  result.out = read_file(child.stdout_path);
  result.err = trim(outcome.stderr_tail);
  if (outcome.timed_out)
    result.err = argv[0] + " did not answer within " + std::to_string(int(timeout_s)) + " s";
  fs::remove(child.stdout_path);
  fs::remove(child.stderr_path);
  return result;
}

// Task index -> state for one array job, from squeue (jobs the controller still holds) and, for
// tasks squeue no longer lists, sacct where accounting is enabled. nullopt when the controller
// cannot be asked (then nothing is decided this round).
std::optional<std::map<int, SlurmTaskState>> query_states(const std::string& job_id,
                                                          const std::set<int>& wanted,
                                                          std::string* problem) {
  const CommandResult q =
      run_command({"squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i|%T|%N|%e|%r"});
  std::map<int, SlurmTaskState> states;
  if (q.exit_code == 0) {
    states = parse_slurm_array_states(q.out, job_id);
  } else if (q.err.find("Invalid job id") == std::string::npos) {
    *problem = "squeue failed: " + q.err;
    return std::nullopt;
  }
  // sacct knows jobs that the controller has purged; without accounting it fails, which is fine.
  // Asked only when squeue lacks a task (it goes to the accounting database).
  const bool all_known =
      std::all_of(wanted.begin(), wanted.end(), [&](int i) { return states.contains(i); });
  if (!all_known && !find_program("sacct").empty()) {
    const CommandResult a =
        run_command({"sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,NodeList,End"});
    if (a.exit_code == 0) {
      for (auto& [index, state] : parse_slurm_array_states(a.out, job_id))
        states.try_emplace(index, std::move(state));
    }
  }
  return states;
}

ChildOutcome outcome_from_json(const Json& j) {
  ChildOutcome o;
  if (j.contains("exit_code") && !j["exit_code"].is_null()) o.exit_code = j["exit_code"].get<int>();
  if (j.contains("signal") && !j["signal"].is_null()) o.signal = j["signal"].get<int>();
  o.timed_out = j.value("timed_out", false);
  o.seconds = j.value("seconds", 0.0);
  o.stderr_tail = j.value("stderr_tail", std::string());
  return o;
}

// A submission holds its runs' claims until they are collected (Store::claim_run).
Claimant submission_claimant(const std::string& token) {
  Claimant c;
  c.id = "slurm:" + token;
  c.pid = 0;
  return c;
}

class Follower {
 public:
  Follower(const Spec& spec, const std::vector<RunConfig>& plan, Progress& progress,
           const RunOptions& options)
      : spec_(spec), progress_(progress), options_(options) {
    for (const auto& run : plan) by_id_.emplace(run.run_id, &run);
  }

  // One pass over the submissions: ingests every task that has an outcome or a final Slurm
  // state. Returns the number of tasks still queued or running (or waiting for their files).
  int poll(std::vector<Submission>& submissions) {
    int open = 0;
    for (Submission& s : submissions) open += poll(s);
    return open;
  }

  // Run ids of tasks that are queued or running now (not to be submitted again).
  const std::set<std::string>& in_flight() const { return in_flight_; }

 private:
  int poll(Submission& s) {
    if (s.done()) {
      find_late_outcomes(s);
      return 0;
    }
    if (s.job_id.empty()) find_job_id(s);
    std::set<int> wanted;
    for (int i = 0; i < static_cast<int>(s.tasks.size()); ++i)
      if (!s.collected.contains(i)) wanted.insert(i);
    const std::optional<std::map<int, SlurmTaskState>> states = states_of(s, wanted);
    int open = 0;
    int running = 0;
    std::map<std::string, int> pending;  // reason -> tasks
    for (int i : wanted) {
      const Task& task = s.tasks[static_cast<size_t>(i)];
      const SlurmTaskState* state = nullptr;
      if (states && states->contains(i)) state = &states->at(i);
      double seconds = 0;
      bool late = false;
      const std::optional<RunRecord> record =
          settle(s, i, states.has_value(), state, &seconds, &late);
      if (!record) {
        ++open;
        in_flight_.insert(task.run_id);
        if (state != nullptr && state->state == "PENDING") ++pending[state->reason];
        if (state != nullptr && state->state == "RUNNING") ++running;
        continue;
      }
      in_flight_.erase(task.run_id);
      ingest(s, task, *record, seconds);
      s.collected.insert(i);
      if (late) s.late.insert(i);
      save_collected(s);
    }
    if (options_.progress && open > 0) print_queue_line(s, pending, running);
    return open;
  }

  // What Slurm says of the submission's `wanted` tasks; nullopt when nothing may be decided from
  // Slurm this round (it did not answer, or Ctrl-C: then outcome files only).
  std::optional<std::map<int, SlurmTaskState>> states_of(const Submission& s,
                                                         const std::set<int>& wanted) {
    if (interrupted()) return std::nullopt;
    if (s.job_id.empty()) {
      // sbatch never queued it (or Slurm forgot it): after 10 minutes every task is unknown.
      if (submission_age_s(s) > 600) return std::map<int, SlurmTaskState>{};
      return std::nullopt;
    }
    std::string problem;
    auto states = query_states(s.job_id, wanted, &problem);
    if (!problem.empty() && problem != last_problem_) {
      std::fprintf(stderr, "warning: job %s: %s (will ask again)\n", s.job_id.c_str(),
                   problem.c_str());
      last_problem_ = problem;
    }
    return states;
  }

  // Stores a task's record (through the progress line) unless its run left the spec.
  void ingest(const Submission& s, const Task& task, const RunRecord& record, double seconds) {
    if (auto it = by_id_.find(task.run_id); it != by_id_.end()) {
      const Claimant owner = submission_claimant(s.token);
      progress_.finish(*it->second, record, seconds, &owner);
    } else {
      std::fprintf(stderr, "note: run %s of Slurm job %s is no longer in the spec: not ingested\n",
                   task.run_id.c_str(), s.job_id.c_str());
    }
  }

  // Tasks recorded without an outcome whose outcome has appeared since (a requeued task, a slow
  // shared file system): the outcome's record replaces the earlier one.
  void find_late_outcomes(Submission& s) {
    for (auto it = s.late.begin(); it != s.late.end();) {
      const Task& task = s.tasks[static_cast<size_t>(*it)];
      if (!fs::exists(task.outcome)) {
        ++it;
        continue;
      }
      double seconds = 0;
      ingest(s, task, from_outcome(task, nullptr, &seconds), seconds);
      it = s.late.erase(it);
      save_collected(s);
    }
  }

  static double submission_age_s(const Submission& s) {
    std::error_code ec;
    const auto written = fs::last_write_time(s.dir / "submission.json", ec);
    if (ec) return 0;
    return std::chrono::duration<double>(fs::file_time_type::clock::now() - written).count();
  }

  // A submission whose parent died during sbatch has no job id: look for its job by name.
  static void find_job_id(Submission& s) {
    if (interrupted()) return;
    const CommandResult q =
        run_command({"squeue", "-h", "-t", "all", "--name=" + s.job_name(), "-o", "%F"});
    std::string id = q.exit_code == 0 ? trim(q.out.substr(0, q.out.find('\n'))) : "";
    if (id.empty() && !find_program("sacct").empty()) {
      const CommandResult a =
          run_command({"sacct", "-n", "-X", "-P", "--name=" + s.job_name(), "-o", "JobID"});
      if (a.exit_code == 0) id = trim(a.out.substr(0, a.out.find_first_of("_\n")));
    }
    if (id.empty() || !to_int(id)) return;
    s.job_id = id;
    write_file_atomic((s.dir / "submission.json").string(), to_json(s).dump(1) + "\n");
    std::fprintf(stderr, "found Slurm job %s of submission %s by its name\n", id.c_str(),
                 s.token.c_str());
  }

  // The record of a task that has ended, or nullopt while it is queued, running, or finished
  // with its files not visible yet. `known`: Slurm answered this round. *late: recorded without
  // an outcome.
  std::optional<RunRecord> settle(const Submission& s, int index, bool known,
                                  const SlurmTaskState* state, double* seconds, bool* late) {
    const Task& task = s.tasks[static_cast<size_t>(index)];
    if (fs::exists(task.outcome)) {
      // A worker killed by SIGKILL: Slurm may be about to say OUT_OF_MEMORY; wait for its verdict.
      if (state != nullptr && !slurm_state_is_final(state->state) && killed_by_sigkill(task))
        return std::nullopt;
      return from_outcome(task, state, seconds);
    }
    if (!known || (state != nullptr && !slurm_state_is_final(state->state))) return std::nullopt;
    // Ended without an outcome. A COMPLETED task may still be flushing its files to a shared
    // file system: a grace period from its end (or from when we first saw it ended).
    if (state != nullptr && state->state == "COMPLETED") {
      const auto first =
          first_seen_ended_.try_emplace(s.token + "/" + std::to_string(index), Clock::now())
              .first->second;
      double waited = std::chrono::duration<double>(Clock::now() - first).count();
      if (state->end) waited = std::max(waited, std::difftime(std::time(nullptr), *state->end));
      if (waited < options_.slurm.result_grace_s) return std::nullopt;
    }
    *late = true;
    return without_outcome(s, index, state == nullptr ? SlurmTaskState{} : *state);
  }

  static bool killed_by_sigkill(const Task& task) {
    try {
      const Json j = Json::parse(read_file(task.outcome));
      return j.contains("signal") && j["signal"].is_number() && j["signal"].get<int>() == SIGKILL;
    } catch (const std::exception&) {
      return false;
    }
  }

  // "slurm job 123: 4 pending (Priority), 2 running, 6/12 done" on change, at most every 10 s
  // (the per-run lines carry the news).
  void print_queue_line(const Submission& s, const std::map<std::string, int>& pending,
                        int running) {
    int waiting = 0;
    std::string reasons;
    for (const auto& [reason, n] : pending) {
      waiting += n;
      if (reason.empty() || reason == "None") continue;
      reasons += (reasons.empty() ? "" : ", ") + reason;
    }
    const std::string line = "slurm job " + s.job_id + ": " + std::to_string(waiting) + " pending" +
                             (reasons.empty() ? "" : " (" + reasons + ")") + ", " +
                             std::to_string(running) + " running, " +
                             std::to_string(s.collected.size()) + "/" +
                             std::to_string(s.tasks.size()) + " done";
    auto& last = last_queue_line_[s.token];
    if (line != last.first &&
        (last.first.empty() || Clock::now() - last.second > std::chrono::seconds(10))) {
      std::fprintf(stderr, "%s\n", line.c_str());
      last = {line, Clock::now()};
    }
  }

  RunRecord from_outcome(const Task& task, const SlurmTaskState* state, double* seconds) {
    const RunConfig& run = config_of(task);
    RunRecord record = make_run_record(spec_.name, run);
    Json j;
    try {
      j = Json::parse(read_file(task.outcome));
    } catch (const std::exception& e) {
      record.status = Status::kCrashed;
      record.error = std::string("unreadable outcome file: ") + e.what();
      record.finished_at = utc_now_iso8601();
      return record;
    }
    const std::string host = j.value("host", std::string("?"));
    if (j.contains("error")) {  // the task itself failed before or around the worker
      record.status = Status::kError;
      record.error = "the Slurm task on " + host + ": " + j.value("error", std::string());
      record.started_at = j.value("started_at", "");
      record.finished_at = j.value("finished_at", utc_now_iso8601());
      return record;
    }
    const ChildOutcome outcome = outcome_from_json(j);
    *seconds = outcome.seconds;
    record = verdict(spec_, run, outcome, task.result, j.value("started_at", ""));
    record.finished_at = j.value("finished_at", record.finished_at);
    if (record.status == Status::kTimeout)
      record.error += " (enforced by the Slurm task on " + host + ")";
    // A cgroup OOM kill takes the worker with SIGKILL; Slurm names the cause.
    if (state != nullptr && state->state == "OUT_OF_MEMORY" && outcome.signal == SIGKILL) {
      record.status = Status::kOom;
      record.error = slurm_verdict(*state, "").error;
    }
    return record;
  }

  RunRecord without_outcome(const Submission& s, int index, const SlurmTaskState& state) {
    const Task& task = s.tasks[static_cast<size_t>(index)];
    RunRecord record = make_run_record(spec_.name, config_of(task));
    const SlurmVerdict v = slurm_verdict(state, s.time_limit);
    record.status = v.status;
    record.error = v.error + " [job " + (s.job_id.empty() ? "?" : s.job_id) + "]";
    const fs::path log = s.dir / ("slurm-" + s.job_id + "_" + std::to_string(index) + ".out");
    if (!s.job_id.empty() && fs::exists(log)) record.error += "; Slurm's output: " + log.string();
    record.finished_at = utc_now_iso8601();
    return record;
  }

  const RunConfig& config_of(const Task& task) {
    if (auto it = by_id_.find(task.run_id); it != by_id_.end()) return *it->second;
    // Not in the spec any more: a placeholder that names the run (it is not ingested).
    placeholder_ = RunConfig{};
    placeholder_.run_id = task.run_id;
    return placeholder_;
  }

  const Spec& spec_;
  Progress& progress_;
  const RunOptions& options_;
  std::map<std::string, const RunConfig*> by_id_;
  std::set<std::string> in_flight_;
  std::map<std::string, std::pair<std::string, Clock::time_point>> last_queue_line_;
  std::map<std::string, Clock::time_point> first_seen_ended_;  // "<token>/<index>"
  std::string last_problem_;
  RunConfig placeholder_;
};

// "20261123T101500Z-1234": sorts by time; unique per parent process and second.
std::string new_token() {
  std::string t = utc_now_iso8601();
  t.erase(std::remove_if(t.begin(), t.end(), [](char c) { return c == '-' || c == ':'; }), t.end());
  static int counter = 0;
  return t + "-" + std::to_string(::getpid()) +
         (counter++ > 0 ? "-" + std::to_string(counter) : "");
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// sbatch's resource options: the user's, and for a data-parallel array (all its runs of this
// world size) one Slurm task per rank, one GPU each on CUDA (Slurm spreads them over nodes as the
// cluster allows).
void append_resource_options(const SlurmOptions& so, const std::string& time_limit, int world_size,
                             bool cuda, std::vector<std::string>& argv) {
  if (!time_limit.empty()) argv.push_back("--time=" + time_limit);
  if (!so.partition.empty()) argv.push_back("--partition=" + so.partition);
  if (!so.gres.empty()) argv.push_back("--gres=" + so.gres);
  if (!so.account.empty()) argv.push_back("--account=" + so.account);
  if (!so.mem.empty()) argv.push_back("--mem=" + so.mem);
  if (so.cpus_per_task > 0) argv.push_back("--cpus-per-task=" + std::to_string(so.cpus_per_task));
  if (world_size > 1) {
    argv.push_back("--ntasks=" + std::to_string(world_size));
    if (cuda) argv.push_back("--gpus-per-task=1");
  }
}

// Writes the run files and the submission of `runs` and submits one array; returns it.
Submission submit(const Spec& spec, const std::vector<const RunConfig*>& runs,
                  const std::map<std::string, int>& attempts, const std::string& token,
                  const std::map<std::string, std::string>& tokens, const fs::path& runs_dir,
                  const std::string& worker, const RunOptions& options) {
  const SlurmOptions& so = options.slurm;
  const int world_size = runs.front()->config.value("world_size", 1);
  Submission s;
  s.token = token;
  s.dir = runs_dir / "slurm" / s.token;
  s.experiment = spec.name;
  s.worker = worker;
  s.timeout_s = spec.timeout_s;
  s.time_limit = so.time.empty() ? slurm_time_limit(spec.timeout_s) : so.time;
  fs::create_directories(s.dir);
  const int threads = so.cpus_per_task > 0 ? so.cpus_per_task : 1;
  try {
    for (const RunConfig* run : runs) {
      const fs::path dir = attempt_dir(runs_dir, run->run_id, attempts.at(run->run_id));
      Task task{run->run_id, (dir / ("run." + s.token + ".json")).string(),
                (dir / ("result." + s.token + ".json")).string(),
                (dir / ("outcome." + s.token + ".json")).string()};
      write_file_atomic(task.run_json,
                        run_file(spec, *run, threads, task.result,
                                 tokens.contains(run->run_id) ? tokens.at(run->run_id) : "")
                                .dump(1) +
                            "\n");
      s.tasks.push_back(std::move(task));
    }
  } catch (...) {
    fs::remove_all(s.dir);  // nothing was submitted: no submission to wait for
    throw;
  }
  const std::string harness =
      so.harness_path.empty() ? executable_dir() + "/harness" : so.harness_path;
  const fs::path script = s.dir / "task.sh";
  write_file_atomic(script.string(),
                    "#!/bin/sh\n# One run of harness submission " + s.token +
                        "; the index comes from Slurm.\nexec " + shell_quote(harness) + " task " +
                        shell_quote(s.dir.string()) + " \"$SLURM_ARRAY_TASK_ID\"\n");
  fs::permissions(script, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read);
  write_file_atomic((s.dir / "submission.json").string(), to_json(s).dump(1) + "\n");

  std::vector<std::string> argv = {"sbatch", "--parsable", "--job-name=" + s.job_name(),
                                   "--output=" + (s.dir / "slurm-%A_%a.out").string()};
  std::string array = "--array=0-" + std::to_string(runs.size() - 1);
  if (so.max_parallel > 0) array += "%" + std::to_string(so.max_parallel);
  argv.push_back(array);
  append_resource_options(so, s.time_limit, world_size, spec.device == "cuda", argv);
  argv.insert(argv.end(), so.sbatch_args.begin(), so.sbatch_args.end());
  argv.push_back(script.string());
  // Not killed by Ctrl-C and given time on a busy controller: a half-finished sbatch may have
  // queued the job, which the submission (found again by its job name) must then follow.
  const CommandResult r = run_command(argv, 600, /*keep_on_interrupt=*/true);
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  const std::string job_id = trim(r.out).substr(0, trim(r.out).find(';'));
  if (r.exit_code != 0 || job_id.empty() || !to_int(job_id)) {
    if (r.exit_code > 0) fs::remove_all(s.dir);  // sbatch refused: nothing was queued
    throw std::runtime_error(
        "sbatch failed (exit " + std::to_string(r.exit_code) +
        "): " + (r.err.empty() ? trim(r.out) : r.err) + "\n  command: " + cmd +
        (r.exit_code > 0 ? ""
                         : "\n  if it queued the job after all, `harness collect` finds it by "
                           "its name " +
                               s.job_name()));
  }
  s.job_id = job_id;
  write_file_atomic((s.dir / "submission.json").string(), to_json(s).dump(1) + "\n");
  return s;
}

// Tasks per array: the cluster's MaxArraySize - 1 (indices run from 0), or 1000 (Slurm's default
// MaxArraySize is 1001) when scontrol cannot tell.
size_t max_array_tasks() {
  try {
    const CommandResult r = run_command({"scontrol", "show", "config"});
    for (const std::string& line : split(r.out, '\n')) {
      const auto eq = line.find('=');
      if (eq == std::string::npos || trim(line.substr(0, eq)) != "MaxArraySize") continue;
      const auto n = to_int(trim(line.substr(eq + 1)));
      if (n && *n > 1) return static_cast<size_t>(*n - 1);
    }
  } catch (const std::exception&) {
  }
  return 1000;
}

void sleep_interruptibly(double seconds) {
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(seconds));
  while (Clock::now() < until && !interrupted())
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

// Follows the submissions until every task is ingested (wait) or once (collect).
void follow(Follower& follower, std::vector<Submission>& submissions, bool wait, double poll_s,
            RunSummary& summary) {
  for (;;) {
    summary.in_flight = follower.poll(submissions);
    if (!wait || summary.in_flight == 0 || interrupted()) break;
    sleep_interruptibly(poll_s);
  }
  summary.interrupted = interrupted();
}

std::string job_list(const std::vector<Submission>& submissions) {
  std::string out;
  for (const auto& s : submissions) out += (out.empty() ? "" : ", ") + s.job_id;
  return out;
}

}  // namespace

namespace runner_detail {

namespace {
// Checks the options and the Slurm client; returns the worker's absolute path.
std::string check_slurm_setup(const Spec& spec, const RunOptions& options) {
  const SlurmOptions& so = options.slurm;
  if (!so.time.empty() && !parse_slurm_time(so.time))
    throw std::invalid_argument("--time " + so.time +
                                ": not a Slurm time (MM, HH:MM:SS, D-HH:MM:SS, ...)");
  if (const auto t = parse_slurm_time(so.time);
      t && spec.timeout_s > 0 && *t < spec.timeout_s && options.progress) {
    std::fprintf(stderr,
                 "note: --time %s is shorter than the spec's timeout_s (%g s): Slurm may end "
                 "runs first (they are recorded as timeout)\n",
                 so.time.c_str(), spec.timeout_s);
  }
  if (find_program("sbatch").empty() || find_program("squeue").empty())
    throw std::runtime_error(
        "--backend slurm needs sbatch and squeue in PATH (run on a Slurm login node; "
        "scripts/slurm-local.sh start makes a single-node cluster here)");
  std::string worker =
      fs::absolute(options.worker_path.empty() ? default_worker_path() : options.worker_path)
          .string();
  if (::access(worker.c_str(), X_OK) != 0)
    throw std::runtime_error("worker executable not found: " + worker);
  if (spec.device == "cuda" && so.gres.empty() && options.progress)
    std::fprintf(stderr, "note: device cuda without --gres: tasks may get no GPU\n");
  return worker;
}
}  // namespace

namespace {

// The pending runs this process claims to submit (with their attempt numbers); a run that
// another runner holds is counted as theirs, a run the device profile cannot do is stored as
// skipped. Claimed first, as the local backend does: a run that another runner (local, or another
// submission) holds is not submitted.
struct ToSubmit {
  std::vector<const RunConfig*> runs;
  std::map<std::string, int> attempts;
};

ToSubmit claim_for_submission(const Spec& spec, const RunOptions& options, Store& store,
                              const Claimant& me, Progress& progress,
                              const std::vector<const RunConfig*>& pending) {
  ToSubmit out;
  for (const RunConfig* run : pending) {
    const ClaimResult claim =
        store.claim_run(spec.name, run->run_id, me, options.force, options.retry_failed);
    if (claim.outcome != ClaimOutcome::kClaimed) {
      progress.add_to_total(1);
      progress.not_ours(*run, claim);
      continue;
    }
    if (!claim.takeover.empty())
      std::fprintf(stderr, "taking over run %s: %s\n", run->run_id.c_str(), claim.takeover.c_str());
    if (run->skip_reason.empty()) {
      out.runs.push_back(run);
      out.attempts[run->run_id] = claim.attempt;
    } else {
      progress.add_to_total(1);
      progress.finish(*run, skipped_record(spec, *run), 0.0, &me);
    }
  }
  return out;
}

// The runs of one world size per array (its --ntasks), each group in chunks of at most
// `max_tasks`.
std::vector<std::vector<const RunConfig*>> array_chunks(const std::vector<const RunConfig*>& runs,
                                                        size_t max_tasks) {
  std::map<int, std::vector<const RunConfig*>> by_world;
  for (const RunConfig* run : runs) by_world[run->config.value("world_size", 1)].push_back(run);
  std::vector<std::vector<const RunConfig*>> chunks;
  for (const auto& [world, group] : by_world) {
    for (size_t first = 0; first < group.size(); first += max_tasks) {
      const size_t last = std::min(group.size(), first + max_tasks);
      chunks.emplace_back(group.begin() + static_cast<long>(first),
                          group.begin() + static_cast<long>(last));
    }
  }
  return chunks;
}

// Submits the claimed runs as job arrays, appending each to `submissions`. Array indices must
// stay below the cluster's MaxArraySize: larger matrices go in several arrays.
void submit_arrays(const Spec& spec, const RunOptions& options, Store& store, const Claimant& me,
                   const ToSubmit& to_submit, const std::map<std::string, std::string>& tokens,
                   const fs::path& runs_dir, const std::string& worker,
                   std::vector<Submission>& submissions, RunSummary& summary) {
  const size_t kMaxArray = max_array_tasks();
  const std::vector<const RunConfig*>& runs = to_submit.runs;
  for (const auto& chunk : array_chunks(runs, kMaxArray)) {
    if (interrupted()) break;
    // The submission holds the claims from now until `harness collect` ingests its tasks.
    const std::string token = new_token();
    const Claimant submission = submission_claimant(token);
    std::vector<std::string> ids;
    for (const RunConfig* run : chunk) ids.push_back(run->run_id);
    store.transfer_claims(ids, me, submission);
    try {
      submissions.push_back(
          submit(spec, chunk, to_submit.attempts, token, tokens, runs_dir, worker, options));
    } catch (const std::exception& e) {
      // Nothing of this chunk was queued (a queued one is followed, not thrown): the runs are
      // free for the next runner, as are the chunks after it.
      for (const auto& id : ids) store.release_claim(id, submission);
      if (summary.job_ids.empty()) {
        for (const RunConfig* run : runs) store.release_claim(run->run_id, me);
        throw;
      }
      // Arrays already queued are followed all the same; the rest waits for the next run.
      std::fprintf(stderr, "error: %s\n", e.what());
      summary.submit_failed = true;
      break;
    }
    summary.job_ids.push_back(submissions.back().job_id);
    if (options.progress) {
      std::fprintf(stderr, "submitted Slurm job %s: %zu tasks (time limit %s), files in %s\n",
                   submissions.back().job_id.c_str(), chunk.size(),
                   submissions.back().time_limit.empty() ? "the partition's"
                                                         : submissions.back().time_limit.c_str(),
                   submissions.back().dir.c_str());
    }
  }
}

}  // namespace

RunSummary run_experiment_slurm(const Spec& spec, const RunOptions& options) {
  const SlurmOptions& so = options.slurm;
  const std::string worker = check_slurm_setup(spec, options);

  const auto plan = expand(spec);
  Store store(options.db_path, Store::Mode::kCreate);
  store.upsert_experiment(spec.name, spec.path, spec.text);
  const fs::path runs_dir = runs_dir_of(spec, options);
  fs::create_directories(runs_dir);
  install_interrupt_handler();

  RunSummary summary;
  // Earlier submissions first: what has finished is ingested, and runs still queued or running
  // are not submitted again.
  std::vector<Submission> submissions = open_submissions(runs_dir, spec.name);
  Progress progress(spec, store, summary, 0, options.progress);
  Follower follower(spec, plan, progress, options);
  if (!submissions.empty()) {
    for (const auto& sub : submissions)
      progress.add_to_total(sub.tasks.size() - sub.collected.size());
    follow(follower, submissions, false, 0, summary);
  }

  std::vector<const RunConfig*> pending = select_pending(
      plan, store.run_statuses(spec.name), options.force, options.retry_failed, summary);
  std::erase_if(pending,
                [&](const RunConfig* r) { return follower.in_flight().contains(r->run_id); });
  const Claimant me = Claimant::this_process();
  const Heartbeat heartbeat(options.db_path, me);
  const ToSubmit to_submit = claim_for_submission(spec, options, store, me, progress, pending);
  if (options.progress) {
    std::fprintf(stderr,
                 "%s: %d runs planned, %d already stored, %d queued or running in Slurm, %zu to "
                 "submit (db %s)\n",
                 spec.name.c_str(), summary.planned, summary.already_done,
                 static_cast<int>(follower.in_flight().size()), to_submit.runs.size(),
                 options.db_path.c_str());
  }
  progress.add_to_total(to_submit.runs.size());
  const auto tokens = pretokenize_runs(spec, to_submit.runs, runs_dir, options.progress);
  submit_arrays(spec, options, store, me, to_submit, tokens, runs_dir, worker, submissions,
                summary);
  // Runs not submitted (Ctrl-C, a failed sbatch) are free for the next runner.
  for (const RunConfig* run : to_submit.runs) store.release_claim(run->run_id, me);
  if (!so.wait) {
    size_t queued = 0;
    for (const auto& sub : submissions) queued += sub.tasks.size() - sub.collected.size();
    summary.in_flight = static_cast<int>(queued);
    return summary;
  }
  follow(follower, submissions, true, so.poll_s, summary);
  if (summary.interrupted && options.progress) {
    std::fprintf(stderr,
                 "interrupted: Slurm job(s) %s keep running (scancel to stop them); `%s` "
                 "ingests their results\n",
                 job_list(submissions).c_str(), collect_hint(spec.path, options).c_str());
  }
  return summary;
}

}  // namespace runner_detail

std::string collect_hint(const std::string& spec_path, const RunOptions& options) {
  std::string hint = "harness collect " + spec_path;
  if (options.db_path != RunOptions{}.db_path) hint += " --db " + options.db_path;
  if (!options.runs_dir.empty()) hint += " --runs-dir " + options.runs_dir;
  return hint;
}

std::string slurm_submissions_dir(const Spec& spec, const RunOptions& options) {
  return (runner_detail::runs_dir_of(spec, options) / "slurm").string();
}

RunSummary collect_experiment(const Spec& spec, const RunOptions& options) {
  Store store(options.db_path, Store::Mode::kCreate);
  store.upsert_experiment(spec.name, spec.path, spec.text);
  const fs::path runs_dir = runner_detail::runs_dir_of(spec, options);
  std::vector<Submission> submissions = open_submissions(runs_dir, spec.name);
  RunSummary summary;
  const auto plan = expand(spec);
  summary.planned = static_cast<int>(plan.size());
  if (submissions.empty()) return summary;
  if (find_program("squeue").empty())
    throw std::runtime_error("harness collect needs squeue in PATH (a Slurm login node)");
  install_interrupt_handler();
  runner_detail::Progress progress(spec, store, summary, 0, options.progress);
  for (const auto& sub : submissions)
    progress.add_to_total(sub.tasks.size() - sub.collected.size());
  Follower follower(spec, plan, progress, options);
  follow(follower, submissions, options.slurm.wait, options.slurm.poll_s, summary);
  for (const auto& s : submissions) summary.job_ids.push_back(s.job_id);
  return summary;
}

int run_slurm_task(const std::string& submission_dir, int index) {
  const Submission s = load_submission(submission_dir);
  if (index < 0 || index >= static_cast<int>(s.tasks.size()))
    throw std::invalid_argument("task index " + std::to_string(index) +
                                " out of range: " + submission_dir + " has " +
                                std::to_string(s.tasks.size()) + " tasks");
  const Task& task = s.tasks[static_cast<size_t>(index)];
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  Json j = {{"started_at", utc_now_iso8601()},
            {"host", std::string(host)},
            {"slurm_job_id", job != nullptr ? job : ""}};
  try {
    const fs::path dir = fs::path(task.run_json).parent_path();
    fs::remove(task.result);
    install_interrupt_handler();  // Slurm's SIGTERM (cancel, time limit) takes the worker along
    ChildSpec child;
    child.argv = {s.worker, "run", task.run_json};
    // A data-parallel run: its ranks are this job's Slurm tasks (sbatch --ntasks), started by
    // srun, which stops them all when one fails (harness/exec/ranks.h).
    const int world_size =
        Json::parse(read_file(task.run_json)).at("config").value("world_size", 1);
    if (world_size > 1) {
      const std::string srun = find_program("srun");
      if (srun.empty()) throw std::runtime_error("srun not found in PATH on this node");
      child.argv = {srun,
                    "--ntasks=" + std::to_string(world_size),
                    "--kill-on-bad-exit=1",
                    s.worker,
                    "run",
                    task.run_json};
      child.extra_env[kSrunRanksEnv] = "1";
    }
    child.stdout_path = (dir / "stdout.log").string();
    child.stderr_path = (dir / "stderr.log").string();
    child.timeout_s = s.timeout_s;
    const ChildOutcome outcome = run_child(child);
    if (world_size > 1) adopt_rank_results(task.result, world_size);
    if (outcome.interrupted) return 128 + interrupt_signal();  // Slurm's state tells what happened
    j["exit_code"] = outcome.exit_code ? Json(*outcome.exit_code) : Json();
    j["signal"] = outcome.signal ? Json(*outcome.signal) : Json();
    j["timed_out"] = outcome.timed_out;
    j["seconds"] = outcome.seconds;
    j["stderr_tail"] = outcome.stderr_tail;
  } catch (const std::exception& e) {
    // E.g. the worker is missing on this node: the parent records the reason, not just FAILED.
    j["error"] = e.what();
  }
  j["finished_at"] = utc_now_iso8601();
  write_file_atomic(task.outcome, j.dump(1) + "\n");
  return 0;
}

}  // namespace hx
