#pragma once
// The run record: one SQLite database that the parent alone writes (docs/architecture.md, "The
// run record"). Every ingest is one transaction, so a reader never sees half a run, and a rerun
// replaces the old record whole.
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/plan/vocabulary.h"

struct sqlite3;

namespace hx {

inline constexpr int kSchemaVersion = 1;

struct Metric {
  std::string name;
  double value = 0;  // NaN is stored as NULL and reads back as NaN
  std::string unit;  // "" = the unit of the field table (fields.h), if the metric is known
};

struct StepRow {
  int64_t step = 0;
  double seconds = 0;
  std::optional<double> loss;  // none for generate (decode steps)
  std::optional<int64_t> tokens;
  std::optional<double> mem_mb;
};

// Everything known about one run: the worker's result.json plus the parent's verdict.
struct RunRecord {
  std::string run_id, experiment;
  Workload workload = Workload::kFinetune;
  int repeat = 0;
  std::optional<int> part;  // RunConfig::part; none only for a record that names no planned run
  std::string config;       // canonical JSON (RunConfig::canonical)
  Status status = Status::kOk;
  std::optional<int> exit_code, signal;
  std::string started_at, finished_at;  // ISO-8601 UTC (utc_now_iso8601); "" = unknown
  std::string stderr_tail, error;
  Json env;  // worker-protocol.md `env`; null or {} = none (the child died before writing one)
  std::vector<Metric> metrics;
  std::vector<StepRow> steps;
  std::vector<std::pair<std::string, std::string>> texts;  // name -> text
};

// A run as read back for reports and checks.
struct StoredRun {
  std::string run_id, experiment;
  std::optional<Workload> workload;  // none: NULL in the runs table
  int repeat = 0;
  std::optional<int> part;  // runs.part: none in rows written before the column existed
  Json config;              // parsed runs.config
  Status status = Status::kOk;
  std::optional<int> exit_code, signal;
  std::string started_at, finished_at, stderr_tail, error;
  std::string env_id;  // "" = none
  Json env;            // the environments row as an object; {} = none
  std::map<std::string, double> metrics;
};

// "2024-05-01T12:34:56Z".
std::string utc_now_iso8601();

// A record that names the run (id, experiment, workload, repeat, config) and nothing else; the
// runner fills in its verdict for runs that wrote no result (crashed, timeout, skipped).
RunRecord make_run_record(const std::string& experiment, const RunConfig& run);

// Converts the worker's result.json (docs/worker-protocol.md) into a record of `run`. The caller
// adds what only the parent knows: exit code, signal, times, stderr tail. Throws
// std::runtime_error naming the offending key when the result does not follow the protocol.
RunRecord record_from_result_json(const Json& result, const std::string& experiment,
                                  const RunConfig& run);

// The env_id of an environment object: FNV-1a of the canonical JSON of exactly the keys of
// kEnvFields (fields.h); "" for an empty environment.
std::string environment_id(const Json& env);

// Who runs a run: a `harness run` process (its host, pid and start), or a Slurm submission that
// holds its runs until `harness collect` ingests them (docs/concurrency.md).
struct Claimant {
  std::string id;         // "<host>:<pid>:<start ns>" or "slurm:<submission token>"
  std::string host;       // gethostname()
  int64_t pid = 0;        // 0 for a Slurm submission
  double started_at = 0;  // Unix seconds
  static Claimant this_process();
};

// Claims older than this without a heartbeat (or, on the same host, whose pid is gone) belong
// to a runner that died and are taken over. HARNESS_CLAIM_STALE_S overrides it (tests).
double claim_stale_after_s();

enum class ClaimOutcome {
  kClaimed,      // this runner runs it now
  kStored,       // its result is stored and the options do not ask for a rerun
  kHeldByOther,  // another live runner (or a Slurm submission) is running it
  kDoneByOther,  // another runner finished it after this one started: not run twice
};

struct ClaimResult {
  ClaimOutcome outcome = ClaimOutcome::kClaimed;
  int attempt = 0;       // kClaimed: this attempt's number (1, 2, ...): its own directory
  std::string holder;    // kHeldByOther / kDoneByOther: the other runner's id
  std::string takeover;  // kClaimed from a dead runner: what was taken over, for the log
};

class Store {
 public:
  enum class Mode {
    kCreate,    // create the file (and its parent directories) and the schema if needed
    kExisting,  // the database must exist and be a harness database; nothing is created
  };

  // Throws std::runtime_error naming `path` when it cannot be opened, is not a harness database
  // (kExisting), or was written by a newer schema version.
  explicit Store(const std::string& path, Mode mode = Mode::kCreate);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const { return path_; }

  // Records the spec that produced an experiment's runs; a later call replaces path and text
  // and keeps created_at.
  void upsert_experiment(const std::string& name, const std::string& spec_path,
                         const std::string& spec_text);

  // Writes the environment, the run (replacing an earlier record of the same run id, with its
  // metrics, steps and texts), its metrics, steps and texts, all in one transaction: on any
  // error nothing is written and std::runtime_error is thrown. With an `owner`, the record is
  // written only while `owner` still holds the run's claim (which it then marks done); returns
  // false, writing nothing, when another runner has taken the claim over.
  bool ingest(const RunRecord& record, const Claimant* owner = nullptr);

  // Claims `run_id` for `me` in one transaction: two runners never both get kClaimed for a run
  // that is held. A rerun (force, or retry_failed of a run whose status is not ok) still skips
  // a run that another runner finished after `me` started.
  ClaimResult claim_run(const std::string& experiment, const std::string& run_id,
                        const Claimant& me, bool force, bool retry_failed);
  // Keeps `me`'s held claims alive (every few seconds while runs are in progress).
  void heartbeat(const Claimant& me);
  // Gives a held claim back without a result (Ctrl-C, a failed submission): any runner may
  // claim the run again.
  void release_claim(const std::string& run_id, const Claimant& me);
  // Hands `me`'s held claims of `run_ids` to a Slurm submission (`to`).
  void transfer_claims(const std::vector<std::string>& run_ids, const Claimant& me,
                       const Claimant& to);

  // run_id -> status for resuming `harness run`.
  std::map<std::string, Status> run_statuses(const std::string& experiment) const;

  // The experiment's runs with config, status, metrics and environment, by start time then id.
  std::vector<StoredRun> load_runs(const std::string& experiment) const;

  std::vector<StepRow> load_steps(const std::string& run_id) const;
  std::vector<std::pair<std::string, std::string>> load_texts(const std::string& run_id) const;

  // "ok", or SQLite's findings one per line.
  std::string integrity_check() const;

 private:
  void exec(const char* sql) const;
  void create_schema();
  bool runs_column_exists(const char* column) const;
  void add_columns_since_version_1();

  std::string path_;
  sqlite3* db_ = nullptr;
  bool runs_have_part_ = true;  // false: a database from before runs.part opened kExisting
  // The runner's threads share one connection; a transaction must not interleave with another
  // thread's statements.
  mutable std::recursive_mutex mutex_;
};

}  // namespace hx
