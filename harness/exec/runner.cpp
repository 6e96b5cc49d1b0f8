#include "harness/exec/runner.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "harness/exec/process.h"
#include "harness/exec/runner_internal.h"
#include "harness/plan/config_keys.h"
#include "harness/plan/device_profiles.h"
#include "harness/plan/fields.h"
#include "harness/plan/hash.h"
#include "harness/plan/pretokenize.h"
#include "harness/store/json_io.h"
#include "harness/store/store.h"

namespace hx {
namespace fs = std::filesystem;

namespace runner_detail {

using Clock = std::chrono::steady_clock;

std::string format_duration(double seconds) {
  const auto s = static_cast<long long>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

// "gc=on mp=off lora=on": the axis values of the run (what differs between runs).
std::string axes_text(const Spec& spec, const RunConfig& run) {
  std::string out;
  for (const auto& [key, values] : spec.parts[static_cast<size_t>(run.part)].axes) {
    if (!out.empty()) out += ' ';
    const auto& v = run.config.at(key);
    out += key + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
  }
  if (spec.parts.size() > 1)
    out = std::string(to_string(run.workload)) + (out.empty() ? "" : " " + out);
  if (spec.repeats > 1) out += " #" + std::to_string(run.repeat);
  return out;
}

// The progress line's figures: for memory, then time, the first metric of the field table that
// is marked for the progress line and that the run has.
std::string key_metric_text(const RunRecord& record) {
  auto find = [&](std::string_view name) -> const Metric* {
    for (const auto& m : record.metrics)
      if (m.name == name) return &m;
    return nullptr;
  };
  std::vector<std::string> parts;
  char buf[96];
  for (const MetricRole role : {MetricRole::kMemory, MetricRole::kTime}) {
    for (const Field& field : kMetricFields) {
      const Metric* m = field.role == role && field.progress ? find(field.name) : nullptr;
      if (m == nullptr) continue;
      const std::string unit(field.unit);
      if (role == MetricRole::kMemory) {
        std::snprintf(buf, sizeof buf, "peak %.*f %s", field.digits, m->value, unit.c_str());
      } else {
        std::snprintf(buf, sizeof buf, "%s %.4g %s", m->name.c_str(), m->value, unit.c_str());
      }
      parts.emplace_back(buf);
      break;
    }
  }
  if (record.status != Status::kOk && !record.error.empty())
    parts.push_back(record.error.substr(0, 100));
  std::string out;
  for (const std::string& part : parts) out += (out.empty() ? "" : ", ") + part;
  return out;
}

// The spec's tokenizer, loaded once per process (runs share it; loading LLaMA 3's takes ~0.1 s).
const TextTokenizer& spec_tokenizer(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<TextTokenizer>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = loaded[path];
  if (!slot) slot = load_text_tokenizer(path);
  return *slot;
}

bool wants_generations(const RunConfig& run) { return RunSettings::parse(run.config).generations; }

Json run_file(const Spec& spec, const RunConfig& run, int threads, const std::string& result,
              const std::string& tokens_path) {
  const auto& part = spec.parts[static_cast<size_t>(run.part)];
  Json data = part.data;
  data.erase("path_as_written");
  if (!tokens_path.empty()) data["tokens_path"] = tokens_path;
  if (data.value("format", std::string()) == "tokens") data["tokens_path"] = data.at("path");
  if (wants_generations(run) && !spec.tokenizer.empty()) {
    // The worker links no tokenizer: it gets the fixed prompts as ids (BOS + Alpaca prompt).
    const TextTokenizer& tokenizer = spec_tokenizer(spec.tokenizer);
    Json prompts = Json::array();
    for (const auto& record : sample_prompts())
      prompts.push_back(tokenizer.encode(alpaca_prompt(record), true, false, spec.allow_special));
    data["prompt_tokens"] = prompts;
  }
  Json model = spec.model;
  model.erase("weights_as_written");
  return {{"run_id", run.run_id},
          {"experiment", spec.name},
          {"repeat", run.repeat},
          {"workload", run.workload},
          {"model", model},
          {"device", spec.device},
          {"memory_limit_mb", spec.memory_limit_mb},
          {"timeout_s", spec.timeout_s},  // data-parallel collectives give up after it
          {"threads", run.config.value("threads", threads)},
          {"data", data},
          {"config", run.config},
          {"result_path", result}};
}

// Decodes the ids of generated texts with the spec's tokenizer. A failure (the tokenizer file
// gone, an id it lacks) keeps the run's record and says so in the text instead.
void decode_texts(const Spec& spec, const Json& result, RunRecord& record) {
  for (size_t i = 0; i < record.texts.size() && i < result["texts"].size(); ++i) {
    const Json& text = result["texts"][i];
    if (!text.contains("ids") || !record.texts[i].second.empty()) continue;
    try {
      const TextTokenizer& tokenizer = spec_tokenizer(spec.tokenizer);
      const auto stops = tokenizer.stop_ids();
      std::vector<int64_t> ids;
      for (const auto& id : text["ids"]) {
        const auto v = id.get<int64_t>();
        if (std::find(stops.begin(), stops.end(), v) != stops.end()) break;
        // A model whose vocabulary is larger than the tokenizer's can emit ids it lacks.
        if (v >= 0 && v < tokenizer.vocab_size()) ids.push_back(v);
      }
      // A character can be cut at generation_tokens: text must stay valid UTF-8.
      record.texts[i].second = valid_utf8(tokenizer.decode(ids));
    } catch (const std::exception& e) {
      record.texts[i].second = std::string("(not decoded: ") + e.what() + ")";
    }
  }
}

// The parent's verdict on one finished child.
RunRecord verdict(const Spec& spec, const RunConfig& run, const ChildOutcome& outcome,
                  const std::string& result_path, const std::string& started) {
  RunRecord record = make_run_record(spec.name, run);
  bool have_result = false;
  if (!outcome.timed_out && fs::exists(result_path)) {
    try {
      const Json result = Json::parse(read_file(result_path));
      record = record_from_result_json(result, spec.name, run);
      have_result = true;
      // Generations as ids from a worker without the spec's tokenizer: decoded here.
      if (!spec.tokenizer.empty() && result.contains("texts")) decode_texts(spec, result, record);
    } catch (const std::exception& e) {
      record.status = Status::kCrashed;
      record.error = std::string("unreadable result.json: ") + e.what();
    }
  }
  record.started_at = started;
  record.finished_at = utc_now_iso8601();
  record.exit_code = outcome.exit_code;
  record.signal = outcome.signal;
  record.stderr_tail = outcome.stderr_tail;
  if (outcome.timed_out) {
    record.status = Status::kTimeout;
    char limit[64];
    std::snprintf(limit, sizeof limit, "killed after timeout_s = %g s", spec.timeout_s);
    record.error = limit;
  } else if (outcome.interrupted) {
    record.status = Status::kError;
    record.error = "interrupted";
  } else if (outcome.signal) {
    record.status = Status::kCrashed;
    record.error = "killed by signal " + std::to_string(*outcome.signal) + " (" +
                   strsignal(*outcome.signal) + ")";
    if (*outcome.signal == SIGKILL) record.error += "; the kernel's OOM killer sends this signal";
  } else if (!have_result) {
    record.status = outcome.exit_code == 3 ? Status::kOom : Status::kCrashed;
    if (record.error.empty())
      record.error = "exited with code " + std::to_string(outcome.exit_code.value_or(-1)) +
                     " without writing a result";
  } else if (record.status == Status::kOk && outcome.exit_code != 0) {
    record.status =
        Status::kCrashed;  // a result that claims ok from a child that failed afterwards
    record.error = "exited with code " + std::to_string(outcome.exit_code.value_or(-1));
  }
  return record;
}

// Whether the run's data is an Alpaca file that the parent pre-tokenises (the spec names a
// tokenizer): the worker then reads token ids (data.tokens_path) and links no tokenizer.
bool pretokenized(const Spec& spec, const RunConfig& run) {
  const auto& data = spec.parts[static_cast<size_t>(run.part)].data;
  return !spec.tokenizer.empty() && run.workload == Workload::kFinetune &&
         data.value("format", std::string()) == "alpaca";
}

// Pre-tokenises the Alpaca data of the pending runs once per distinct (tokenizer, data file,
// samples, max_seq_len, allow_special), into <runs_dir>/tokens/<hash>.json; returns run id -> path.
std::map<std::string, std::string> pretokenize_runs(const Spec& spec,
                                                    const std::vector<const RunConfig*>& pending,
                                                    const fs::path& runs_dir, bool progress) {
  std::map<std::string, std::string> by_run;
  std::map<std::string, std::string> written;  // key -> path, made by this call
  std::unique_ptr<TextTokenizer> tokenizer;
  for (const RunConfig* run : pending) {
    if (!pretokenized(spec, *run) || !run->skip_reason.empty()) continue;
    const auto& data = spec.parts[static_cast<size_t>(run->part)].data;
    const int64_t max_len = RunSettings::parse(run->config, data).max_seq_len;
    const std::string path = data.at("path").get<std::string>();
    const int64_t samples = data.value("samples", int64_t{0});
    const std::string key = spec.tokenizer + "\n" + path + "\n" + std::to_string(samples) + "\n" +
                            std::to_string(max_len) + "\n" + (spec.allow_special ? "1" : "0");
    auto it = written.find(key);
    if (it == written.end()) {
      if (!tokenizer) tokenizer = load_text_tokenizer(spec.tokenizer);
      const fs::path out = runs_dir / "tokens" / (fnv1a64_hex(key) + ".json");
      fs::create_directories(out.parent_path());
      const size_t n =
          pretokenize_alpaca(path, samples, *tokenizer, max_len, spec.allow_special, out.string());
      if (progress) {
        std::fprintf(stderr, "tokenised %zu examples of %s with %s (max_seq_len %lld): %s\n", n,
                     path.c_str(), spec.tokenizer.c_str(), static_cast<long long>(max_len),
                     out.c_str());
      }
      it = written.emplace(key, out.string()).first;
    }
    by_run[run->run_id] = it->second;
  }
  return by_run;
}

RunRecord skipped_record(const Spec& spec, const RunConfig& run) {
  RunRecord record = make_run_record(spec.name, run);
  record.status = Status::kSkipped;
  record.error = run.skip_reason;
  record.started_at = record.finished_at = utc_now_iso8601();
  return record;
}

std::vector<const RunConfig*> select_pending(const std::vector<RunConfig>& plan,
                                             const std::map<std::string, Status>& stored,
                                             bool force, bool retry_failed, RunSummary& summary) {
  summary.planned = static_cast<int>(plan.size());
  std::vector<const RunConfig*> pending;
  for (const auto& run : plan) {
    auto it = stored.find(run.run_id);
    const bool done = it != stored.end() && !(force || (retry_failed && it->second != Status::kOk));
    if (done) {
      ++summary.already_done;
    } else {
      pending.push_back(&run);
    }
  }
  return pending;
}

fs::path runs_dir_of(const Spec& spec, const RunOptions& options) {
  return fs::absolute(options.runs_dir.empty()
                          ? fs::path(options.db_path).parent_path() / "runs" / spec.name
                          : fs::path(options.runs_dir));
}

Progress::Progress(const Spec& spec, Store& store, RunSummary& summary, size_t total, bool print)
    : spec_(spec),
      store_(store),
      summary_(summary),
      total_(total),
      print_(print),
      start_(Clock::now()) {}

void Progress::finish(const RunConfig& run, const RunRecord& record, double seconds,
                      const Claimant* owner) {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool stored = store_.ingest(record, owner);
  ++finished_;
  ++summary_.ran;
  if (!stored) {
    std::fprintf(stderr,
                 "note: run %s (%s) was taken over by another runner while this one ran it: its "
                 "%s result is not stored\n",
                 run.run_id.c_str(), axes_text(spec_, run).c_str(),
                 std::string(to_string(record.status)).c_str());
  }
  if (record.status == Status::kOk) {
    ++summary_.ok;
  } else if (record.status == Status::kOom) {
    ++summary_.oom;
  } else if (record.status != Status::kSkipped) {
    ++summary_.failed;
  }
  if (!print_) return;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const double eta = elapsed / static_cast<double>(finished_) *
                     static_cast<double>(std::max<size_t>(total_, finished_) - finished_);
  std::fprintf(stderr, "[%zu/%zu] %-32s %-7s %s (%.1f s) elapsed %s ETA %s\n", finished_, total_,
               axes_text(spec_, run).c_str(), std::string(to_string(record.status)).c_str(),
               key_metric_text(record).c_str(), seconds, format_duration(elapsed).c_str(),
               format_duration(eta).c_str());
  std::fflush(stderr);
}

void Progress::add_to_total(size_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  total_ += n;
}

void Progress::not_ours(const RunConfig& run, const ClaimResult& claim) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (total_ > 0) --total_;
  if (claim.outcome == ClaimOutcome::kStored) {
    ++summary_.already_done;  // stored by another runner between planning and now
    return;
  }
  ++summary_.elsewhere;
  if (print_) {
    std::fprintf(
        stderr, "run %s (%s): %s by runner %s\n", run.run_id.c_str(), axes_text(spec_, run).c_str(),
        claim.outcome == ClaimOutcome::kHeldByOther ? "running" : "done", claim.holder.c_str());
    std::fflush(stderr);
  }
}

Heartbeat::Heartbeat(const std::string& db_path, const Claimant& me) {
  thread_ = std::thread([this, db_path, me] {
    std::unique_ptr<Store> store;
    std::unique_lock<std::mutex> lock(mutex_);
    // Well inside the stale time, so that a slow database does not make a live runner look dead.
    const auto period = std::chrono::duration<double>(std::min(5.0, claim_stale_after_s() / 4));
    while (!stop_.wait_for(lock, period, [this] { return stopping_; })) {
      try {
        if (!store) store = std::make_unique<Store>(db_path, Store::Mode::kExisting);
        store->heartbeat(me);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "warning: claim heartbeat: %s (will try again)\n", e.what());
      }
    }
  });
}

Heartbeat::~Heartbeat() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_.notify_all();
  thread_.join();
}

fs::path attempt_dir(const fs::path& runs_dir, const std::string& run_id, int attempt) {
  const fs::path run_dir = runs_dir / run_id;
  fs::create_directories(run_dir);
  for (int n = std::max(1, attempt);; ++n) {
    fs::path dir = run_dir / std::to_string(n);
    if (fs::create_directory(dir)) return dir;  // false: it exists (not ours)
  }
}

}  // namespace runner_detail

namespace {
using namespace runner_detail;

// Writes the run file that make() builds; the error message, or "" when written.
std::string write_run_file(const std::string& path, const std::function<Json()>& make) {
  try {
    write_file_atomic(path, make().dump(1) + "\n");
    return "";
  } catch (const std::exception& e) {
    return std::string("cannot write the run file: ") + e.what();
  }
}

// A CUDA spec on a worker without CUDA (or a machine without a GPU) would record every run as
// an error: refuse before anything runs.
void require_cuda_worker(const std::string& worker, const Spec& spec) {
  const fs::path out = fs::temp_directory_path() / ("harness-caps." + std::to_string(::getpid()));
  ChildSpec child;
  child.argv = {worker, "caps"};
  child.stdout_path = out.string();
  child.stderr_path = out.string() + ".err";
  child.timeout_s = 120;
  const auto outcome = run_child(child);
  Json caps;
  try {
    caps = Json::parse(read_file(out.string()));
  } catch (const std::exception&) {
  }
  fs::remove(out);
  fs::remove(out.string() + ".err");
  if (outcome.exit_code != 0 || !caps.is_object())
    throw std::runtime_error(worker + " caps failed: " + outcome.stderr_tail);
  if (!caps.value("cuda_compiled", false))
    throw std::invalid_argument(
        "the spec asks for device cuda, but " + worker + " (libtorch " +
        caps.value("libtorch", std::string("?")) +
        ") was linked without CUDA (built where no CUDA toolkit was installed): rebuild on a "
        "machine with the toolkit (docs/gpu.md), or set device: cpu");
  if (!caps.value("cuda", false))
    throw std::invalid_argument(
        "the spec asks for device cuda, but no CUDA device is usable "
        "here (" +
        worker + ", libtorch " + caps.value("libtorch", std::string("?")) + " with CUDA " +
        caps.value("cuda_version", std::string("?")) +
        "): run it on a GPU node with the NVIDIA driver, or set device: cpu");
  // A profile emulates a device that is at most as large as the real one.
  const auto gpu_mb = caps.value("gpu_mem_mb", int64_t{0});
  if (const DeviceProfile* profile = find_device_profile(spec.device_profile);
      profile != nullptr && gpu_mb < profile->memory_mb) {
    throw std::invalid_argument("device_profile " + spec.device_profile + " needs " +
                                std::to_string(profile->memory_mb) + " MB, but this GPU (" +
                                caps.value("gpu_name", std::string("?")) + ") has " +
                                std::to_string(gpu_mb) + " MB");
  }
}

// A record of a run that failed before or at its start (`started` "" = now), with `error`.
RunRecord failed_start(const Spec& spec, const RunConfig& run, const std::string& error,
                       const std::string& started) {
  RunRecord record = make_run_record(spec.name, run);
  record.status = Status::kError;
  record.error = error;
  record.finished_at = utc_now_iso8601();
  record.started_at = started.empty() ? record.finished_at : started;
  return record;
}

// The local backend's runs of one experiment: the pending runs, taken in turn by `jobs` threads,
// each claimed in the store, run in a child and recorded through `progress`.
class LocalRuns {
 public:
  LocalRuns(const Spec& spec, const RunOptions& options, Store& store, const Claimant& me,
            Progress& progress, const std::vector<const RunConfig*>& pending)
      : spec_(spec),
        options_(options),
        store_(store),
        me_(me),
        progress_(progress),
        pending_(pending) {}

  std::string worker;
  fs::path runs_dir;
  std::map<std::string, std::string> tokens;  // run id -> pre-tokenised data
  int threads = 1;                            // per child

  // Takes pending runs until none is left or the user interrupts.
  void loop() {
    for (;;) {
      const size_t index = next_.fetch_add(1);
      if (index >= pending_.size() || interrupted()) return;
      if (!run_one(*pending_[index])) return;
    }
  }

 private:
  void finish(const RunConfig& run, const RunRecord& record, double seconds) {
    progress_.finish(run, record, seconds, &me_);
  }

  // Claims, runs and records one run; false when interrupted (the claim released).
  bool run_one(const RunConfig& run) {
    const ClaimResult claim =
        store_.claim_run(spec_.name, run.run_id, me_, options_.force, options_.retry_failed);
    if (claim.outcome != ClaimOutcome::kClaimed) {
      progress_.not_ours(run, claim);
      return true;
    }
    if (!claim.takeover.empty())
      std::fprintf(stderr, "taking over run %s: %s\n", run.run_id.c_str(), claim.takeover.c_str());
    if (!run.skip_reason.empty()) {
      // Nothing runs that the profiled hardware cannot do; the reason is stored instead.
      finish(run, skipped_record(spec_, run), 0.0);
      return true;
    }
    // Each attempt has its own directory: no other runner or stale child touches its files.
    const fs::path dir = attempt_dir(runs_dir, run.run_id, claim.attempt);
    const std::string result = (dir / "result.json").string();
    // E.g. the tokenizer for the generation prompts cannot be read: this run fails, not all.
    if (const std::string error = write_run_file(
            (dir / "run.json").string(),
            [&] {
              return run_file(spec_, run, threads, result,
                              tokens.contains(run.run_id) ? tokens.at(run.run_id) : "");
            });
        !error.empty()) {
      finish(run, failed_start(spec_, run, error, ""), 0.0);
      return true;
    }
    ChildSpec child;
    child.argv = {worker, "run", (dir / "run.json").string()};
    child.stderr_path = (dir / "stderr.log").string();
    child.stdout_path = (dir / "stdout.log").string();
    child.timeout_s = spec_.timeout_s;
    const std::string started = utc_now_iso8601();
    ChildOutcome outcome;
    try {
      outcome = run_child(child);
    } catch (const std::exception& e) {
      // The worker could not be started (e.g. being rebuilt): this run failed, the rest go on.
      finish(run, failed_start(spec_, run, e.what(), started), 0.0);
      return true;
    }
    if (outcome.interrupted) {
      store_.release_claim(run.run_id, me_);  // not recorded: the run reruns on resume
      return false;
    }
    finish(run, verdict(spec_, run, outcome, result, started), outcome.seconds);
    return true;
  }

  const Spec& spec_;
  const RunOptions& options_;
  Store& store_;
  const Claimant& me_;
  Progress& progress_;
  const std::vector<const RunConfig*>& pending_;
  std::atomic<size_t> next_{0};
};

// The runs at once: --jobs, except one at a time on a GPU. Throws on bad options.
int local_jobs(const Spec& spec, const RunOptions& options) {
  if (options.backend != "local")
    throw std::invalid_argument("--backend " + options.backend + ": expected local or slurm");
  if (options.jobs < 1) throw std::invalid_argument("--jobs must be at least 1");
  const int jobs = spec.device == "cuda" ? 1 : options.jobs;  // one GPU: one run at a time
  if (spec.device == "cuda" && options.jobs > 1 && options.progress)
    std::fprintf(stderr, "note: device cuda: runs go one at a time (--jobs ignored)\n");
  return jobs;
}

// The worker executable to start, checked to exist (and to have CUDA for a cuda spec).
std::string checked_worker(const Spec& spec, const RunOptions& options) {
  std::string worker = options.worker_path.empty() ? default_worker_path() : options.worker_path;
  if (::access(worker.c_str(), X_OK) != 0)
    throw std::runtime_error("worker executable not found: " + worker +
                             " (build the harness-worker target, or set HARNESS_WORKER)");
  if (spec.device == "cuda") require_cuda_worker(worker, spec);
  return worker;
}

}  // namespace

std::string executable_dir() {
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

std::string default_worker_path() {
  if (const char* env = std::getenv("HARNESS_WORKER"); env != nullptr && *env) return env;
  return executable_dir() + "/harness-worker";
}

RunSummary run_experiment(const Spec& spec, const RunOptions& options) {
  if (options.backend == "slurm") return run_experiment_slurm(spec, options);
  const int jobs = local_jobs(spec, options);
  const std::string worker = checked_worker(spec, options);

  const auto plan = expand(spec);
  Store store(options.db_path, Store::Mode::kCreate);
  store.upsert_experiment(spec.name, spec.path, spec.text);
  const auto stored = store.run_statuses(spec.name);

  RunSummary summary;
  const std::vector<const RunConfig*> pending =
      select_pending(plan, stored, options.force, options.retry_failed, summary);
  const fs::path runs_dir = runs_dir_of(spec, options);
  fs::create_directories(runs_dir);
  // Other `harness run` processes on this database take part: each run is claimed before it
  // starts, so each runs once (docs/concurrency.md).
  const Claimant me = Claimant::this_process();
  const Heartbeat heartbeat(options.db_path, me);
  if (options.progress) {
    std::fprintf(stderr, "%s: %d runs planned, %d already stored, %zu to run (db %s, %d job%s)\n",
                 spec.name.c_str(), summary.planned, summary.already_done, pending.size(),
                 options.db_path.c_str(), jobs, jobs == 1 ? "" : "s");
  }
  // Before any run starts: a data file the tokenizer cannot encode fails the experiment at once.
  std::map<std::string, std::string> tokens =
      pretokenize_runs(spec, pending, runs_dir, options.progress);
  install_interrupt_handler();

  Progress progress(spec, store, summary, pending.size(), options.progress);
  LocalRuns runs(spec, options, store, me, progress, pending);
  runs.worker = worker;
  runs.runs_dir = runs_dir;
  runs.tokens = std::move(tokens);
  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  runs.threads = std::max(1, static_cast<int>(cores) / jobs);
  std::vector<std::thread> pool;
  for (int i = 1; i < std::min<int>(jobs, static_cast<int>(pending.size())); ++i)
    pool.emplace_back([&runs] { runs.loop(); });
  runs.loop();
  for (auto& t : pool) t.join();
  summary.interrupted = interrupted();
  return summary;
}

}  // namespace hx
