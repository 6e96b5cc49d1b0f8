#pragma once
// What the local backend (runner.cpp) and the Slurm backend (slurm.cpp) share: the run file, the
// verdict on a finished child, pre-tokenising, resume selection and the progress lines. Not part
// of the public runner interface.
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "harness/exec/process.h"
#include "harness/exec/runner.h"
#include "harness/plan/spec.h"
#include "harness/store/store.h"

namespace hx::runner_detail {

// "1:05" or "1:02:03".
std::string format_duration(double seconds);

// run.json for the worker (docs/worker-protocol.md).
Json run_file(const Spec& spec, const RunConfig& run, int threads, const std::string& result,
              const std::string& tokens_path);

// The parent's verdict on one finished child from its outcome and result file.
RunRecord verdict(const Spec& spec, const RunConfig& run, const ChildOutcome& outcome,
                  const std::string& result_path, const std::string& started);

// The record of a run that the device profile cannot do (status skipped, the reason as error).
RunRecord skipped_record(const Spec& spec, const RunConfig& run);

// Run id -> tokens file for the pending runs whose Alpaca data the parent pre-tokenises.
std::map<std::string, std::string> pretokenize_runs(const Spec& spec,
                                                    const std::vector<const RunConfig*>& pending,
                                                    const std::filesystem::path& runs_dir,
                                                    bool progress);

// The runs of `plan` to run now (resume: stored runs are skipped unless forced); counts
// summary.planned and summary.already_done.
std::vector<const RunConfig*> select_pending(const std::vector<RunConfig>& plan,
                                             const std::map<std::string, Status>& stored,
                                             bool force, bool retry_failed, RunSummary& summary);

// Absolute: the worker (and a Slurm task on another node) must find it from anywhere.
std::filesystem::path runs_dir_of(const Spec& spec, const RunOptions& options);

// Stores each finished run (the parent alone writes SQLite) and prints its progress line with
// elapsed time and ETA. Thread-safe.
class Progress {
 public:
  Progress(const Spec& spec, Store& store, RunSummary& summary, size_t total, bool print);
  // `owner`: the claim under which the run ran; its record is not stored when another runner
  // has taken that claim over.
  void finish(const RunConfig& run, const RunRecord& record, double seconds,
              const Claimant* owner = nullptr);
  void add_to_total(size_t n);  // the Slurm backend learns its total in steps
  // A planned run that another runner on the same database runs (or has run): not ours to count.
  void not_ours(const RunConfig& run, const ClaimResult& claim);

 private:
  const Spec& spec_;
  Store& store_;
  RunSummary& summary_;
  size_t total_;
  bool print_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  size_t finished_ = 0;
};

// Keeps a runner's claims alive while it works (Store::heartbeat every few seconds, from its
// own connection so that a long transaction elsewhere does not delay it).
class Heartbeat {
 public:
  Heartbeat(const std::string& db_path, const Claimant& me);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::thread thread_;
};

// A fresh directory for one attempt of a run: <runs_dir>/<run id>/<attempt> (a higher number if
// that one exists: e.g. the database was replaced and the claims counted from 1 again).
std::filesystem::path attempt_dir(const std::filesystem::path& runs_dir, const std::string& run_id,
                                  int attempt);

// `harness run --backend slurm` (slurm.cpp).
RunSummary run_experiment_slurm(const Spec& spec, const RunOptions& options);

}  // namespace hx::runner_detail
