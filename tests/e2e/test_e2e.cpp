// End-to-end tests: the real `harness` and `harness-worker` binaries, real child processes, the
// real SQLite database (read back with the SQLite C API and hx::Store). No mocks.
//
// Every test works in a fresh temporary directory (database, runs dir, captured output) with the
// current directory at the source root, so that spec paths are the ones a user types. Specs live
// in tests/specs/ and use the `tiny` model on the CPU with workloads of well under a second.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness/plan/spec.h"
#include "harness/store/store.h"
#include "tests/e2e/e2e_util.h"

namespace {

// ---- 1. Smoke: the whole path ----

TEST_F(E2E, SmokeSpecRunsTheWholePath) {
  const std::string spec = "tests/specs/smoke.yaml";
  const Outcome o = run(spec);
  ASSERT_EQ(o.rc, 0) << dump(o);
  EXPECT_TRUE(contains(o.err, "smoke: 6 runs planned, 0 already stored, 6 to run")) << o.err;
  EXPECT_TRUE(contains(o.err, "[6/6]")) << o.err;
  EXPECT_TRUE(contains(o.err, "6 ran (6 ok, 0 oom, 0 failed)")) << o.err;

  // The Markdown tables on stdout.
  EXPECT_TRUE(contains(o.out, "# smoke")) << o.out;
  EXPECT_TRUE(contains(o.out, "## Smoke: fine-tuning on tiny (CPU)")) << o.out;
  EXPECT_TRUE(contains(o.out, "## Smoke: generation on tiny (CPU)")) << o.out;
  EXPECT_TRUE(contains(o.out, "| GC |")) << o.out;
  EXPECT_TRUE(contains(o.out, "| LoRA |")) << o.out;
  EXPECT_TRUE(contains(o.out, "| KV cache |")) << o.out;
  EXPECT_TRUE(contains(o.out, "libtorch")) << o.out;
  EXPECT_FALSE(contains(o.out, "OOM")) << o.out;

  ASSERT_TRUE(fs::exists(db_));
  Db db(db_);
  EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
  EXPECT_EQ(db.count("SELECT count(*) FROM experiments WHERE name = 'smoke'"), 1);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs"), 6);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok' AND experiment = 'smoke'"), 6);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE workload = 'finetune'"), 4);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE workload = 'generate'"), 2);
  // Each run's part (the index in the spec's `parts:`) is stored.
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE workload = 'finetune' AND part = 0"), 4);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE workload = 'generate' AND part = 1"), 2);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE exit_code = 0 AND signal IS NULL AND "
                     "started_at <> '' AND finished_at >= started_at AND env_id IS NOT NULL"),
            6);

  // Metrics: the ones the tables need, finite, per workload.
  const std::vector<std::string> finetune_metrics = {
      "peak_mem_mb",  "step_time_s",   "loss_first",        "loss_last",
      "total_time_s", "trainable_pct", "mem_activations_mb"};
  const std::vector<std::string> generate_metrics = {"peak_mem_mb", "prefill_s", "decode_s",
                                                     "tokens_per_s", "total_time_s"};
  for (const auto& [workload, names] :
       {std::pair{std::string("finetune"), finetune_metrics}, {"generate", generate_metrics}}) {
    for (const auto& name : names) {
      SCOPED_TRACE(workload + " " + name);
      EXPECT_EQ(db.count("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE "
                         "r.workload = '" +
                         workload + "' AND m.name = '" + name + "' AND m.value IS NOT NULL"),
                workload == "finetune" ? 4 : 2);
    }
  }
  EXPECT_EQ(db.count("SELECT count(*) FROM metrics WHERE name IN ('peak_mem_mb', 'step_time_s',"
                     " 'decode_s', 'tokens_per_s', 'total_time_s') AND NOT value > 0"),
            0);
  // LoRA trains a small fraction of the weights; full fine-tuning trains all of them.
  EXPECT_EQ(db.count("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE m.name = "
                     "'trainable_pct' AND r.config LIKE '%\"lora\":\"on\"%' AND m.value < 50"),
            2);
  EXPECT_EQ(db.count("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE m.name = "
                     "'trainable_pct' AND r.config LIKE '%\"lora\":\"off\"%' AND m.value = 100"),
            2);

  // Steps: max_steps (3) per finetune run, with losses; decode steps without loss for generate.
  EXPECT_EQ(db.count("SELECT count(*) FROM steps s JOIN runs r USING (run_id) WHERE "
                     "r.workload = 'finetune' AND s.loss IS NOT NULL"),
            4 * 3);
  for (const auto& row : db.query("SELECT r.run_id, count(s.step), count(s.loss) FROM runs r "
                                  "LEFT JOIN steps s USING (run_id) WHERE r.workload = "
                                  "'generate' GROUP BY r.run_id")) {
    SCOPED_TRACE(*row[0]);
    EXPECT_GE(std::stoi(*row[1]), 1);
    EXPECT_EQ(*row[2], "0");
  }

  // One environment, referenced by every run, that names libtorch.
  EXPECT_EQ(db.count("SELECT count(*) FROM environments"), 1);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs r JOIN environments e USING (env_id)"), 6);
  EXPECT_FALSE(db.scalar("SELECT libtorch FROM environments").empty());

  // The same through the store API.
  hx::Store store(db_.string(), hx::Store::Mode::kExisting);
  EXPECT_EQ(store.integrity_check(), "ok");
  const auto runs = store.load_runs("smoke");
  ASSERT_EQ(runs.size(), 6U);
  for (const auto& r : runs) {
    SCOPED_TRACE(r.run_id);
    EXPECT_EQ(r.status, hx::Status::kOk);
    EXPECT_FALSE(r.env.value("libtorch", std::string()).empty()) << r.env.dump();
    EXPECT_TRUE(r.metrics.count("peak_mem_mb")) << r.run_id;
  }

  // `harness expand --json` names exactly the stored runs, with the stored configs.
  std::map<std::string, std::string> stored;
  for (const auto& row : db.query("SELECT run_id, config FROM runs")) stored[*row[0]] = *row[1];
  EXPECT_EQ(expanded(spec), stored);

  // `harness report --format csv` from the same database.
  const Outcome csv = harness({"report", spec, "--db", db_.string(), "--format", "csv"});
  ASSERT_EQ(csv.rc, 0) << dump(csv);
  EXPECT_TRUE(contains(csv.out, "table,Smoke: fine-tuning on tiny (CPU)")) << csv.out;
  EXPECT_TRUE(contains(csv.out, "table,Smoke: generation on tiny (CPU)")) << csv.out;
  EXPECT_TRUE(contains(csv.out, "gc,off,off,on,on")) << csv.out;
  EXPECT_TRUE(contains(csv.out, "kv_cache,on,off")) << csv.out;
  EXPECT_TRUE(std::regex_search(csv.out, std::regex("\npeak_mem_mb,[0-9.]+,[0-9.]+,[0-9.]+,"
                                                    "[0-9.]+\n")))
      << csv.out;
  EXPECT_TRUE(std::regex_search(csv.out, std::regex("\ntokens_per_s,[0-9.]+,[0-9.]+\n")))
      << csv.out;

  // `harness plot`: the tables' charts and, from the steps table, the fine-tuning part's loss and
  // memory per step, one line per configuration (generation's decode steps have neither).
  if (!fs::exists("/usr/bin/gnuplot")) GTEST_SKIP() << "gnuplot-nox not installed";
  const fs::path plots = dir_ / "plots";
  const Outcome plot = harness({"plot", spec, "--db", db_.string(), "--out", plots.string()});
  ASSERT_EQ(plot.rc, 0) << dump(plot);
  EXPECT_TRUE(contains(plot.err, "(2 of them per-step curves)")) << plot.err;
  const std::string loss = slurp(plots / "smoke-steps-finetune-loss.svg");
  const std::string mem = slurp(plots / "smoke-steps-finetune-mem.svg");
  for (const char* config :
       {"gc=off, lora=off", "gc=off, lora=on", "gc=on, lora=off", "gc=on, lora=on"}) {
    EXPECT_TRUE(contains(loss, config)) << config;
    EXPECT_TRUE(contains(mem, config)) << config;
  }
  EXPECT_FALSE(fs::exists(plots / "smoke-steps-generate-loss.svg"));
  EXPECT_TRUE(contains(slurp(plots / "smoke-plots.md"), "(smoke-steps-finetune-mem.svg)"));
}

// ---- 2. Faults in one run of four ----

struct FaultCase {
  const char* fault;
  const char* spec;
  int harness_rc;
};

void PrintTo(const FaultCase& c, std::ostream* os) { *os << "HARNESS_FAULT=" << c.fault; }

class E2EFault : public E2E, public ::testing::WithParamInterface<FaultCase> {};

// The targeted run: gc on, lora off. The match text is a piece of the canonical config JSON
// (keys sorted, no spaces), which the worker searches for.
constexpr const char* kFaultMatch = R"("gc":"on","lora":"off")";

TEST_P(E2EFault, OnlyTheTargetedRunFails) {
  const FaultCase& c = GetParam();
  const std::string spec = std::string("tests/specs/") + c.spec;
  const Outcome o =
      run(spec, {}, Env{{{"HARNESS_FAULT", c.fault}, {"HARNESS_FAULT_MATCH", kFaultMatch}}});
  EXPECT_EQ(o.rc, c.harness_rc) << dump(o);
  ASSERT_TRUE(fs::exists(db_)) << dump(o);

  Db db(db_);
  ASSERT_EQ(db.count("SELECT count(*) FROM runs"), 4) << dump(o);
  // The match text selects exactly one run.
  ASSERT_EQ(db.count(std::string("SELECT count(*) FROM runs WHERE instr(config, '") + kFaultMatch +
                     "') > 0"),
            1);
  const std::string target_where = std::string(" WHERE instr(config, '") + kFaultMatch + "') > 0";
  const auto rows =
      db.query("SELECT status, exit_code, signal, error, stderr_tail FROM runs" + target_where);
  ASSERT_EQ(rows.size(), 1U);
  const std::string status = rows[0][0].value_or("<null>");
  const std::optional<std::string> exit_code = rows[0][1];
  const std::optional<std::string> sig = rows[0][2];
  const std::string error = rows[0][3].value_or("");
  const std::string tail = rows[0][4].value_or("");
  SCOPED_TRACE(std::string("fault ") + c.fault + ": status " + status + ", error '" + error +
               "', stderr_tail '" + tail + "'");
  EXPECT_FALSE(error.empty() && tail.empty());

  const std::string fault = c.fault;
  if (fault == "oom") {
    EXPECT_EQ(status, "oom");
    EXPECT_EQ(exit_code, "3");
    EXPECT_EQ(sig, std::nullopt);
    EXPECT_TRUE(contains(error, "memory")) << error;
    EXPECT_TRUE(contains(o.err, "4 ran (3 ok, 1 oom, 0 failed)")) << o.err;
    EXPECT_TRUE(contains(o.out, "OOM")) << o.out;  // the table shows the frontier
  } else if (fault == "segv") {
    EXPECT_EQ(status, "crashed");
    EXPECT_EQ(sig, std::to_string(SIGSEGV));
    EXPECT_EQ(exit_code, std::nullopt);
    EXPECT_TRUE(contains(error, "signal 11")) << error;
  } else if (fault == "exit") {
    EXPECT_EQ(status, "crashed");
    EXPECT_EQ(exit_code, "5");
    EXPECT_EQ(sig, std::nullopt);
    EXPECT_TRUE(contains(error, "code 5")) << error;
  } else if (fault == "hang") {
    EXPECT_EQ(status, "timeout");
    EXPECT_EQ(sig, std::to_string(SIGKILL));
    EXPECT_TRUE(contains(error, "timeout")) << error;
    // Killed at the deadline (faults_hang.yaml: timeout_s 5), not much later: the progress line
    // gives the child's wall time.
    constexpr double kTimeout = 5.0;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(o.err, m, std::regex(R"(timeout .*\(([0-9.]+) s\) elapsed)")))
        << o.err;
    const double hang_s = std::stod(m[1]);
    EXPECT_GE(hang_s, kTimeout - 0.05);
    EXPECT_LT(hang_s, kTimeout + 3.0);
    // The whole command: three short runs plus the timeout.
    EXPECT_LT(o.seconds, kTimeout + 30.0);
    // The hung worker died with its process group.
    EXPECT_TRUE(processes_mentioning(runs_.string()).empty());
  }
  if (fault != "oom") {
    EXPECT_TRUE(contains(o.err, "4 ran (3 ok, 0 oom, 1 failed)")) << o.err;
  }

  // The other three ran normally, with their metrics.
  EXPECT_EQ(db.count(std::string("SELECT count(*) FROM runs WHERE status = 'ok' AND "
                                 "exit_code = 0 AND instr(config, '") +
                     kFaultMatch + "') = 0"),
            3);
  EXPECT_EQ(db.count("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE "
                     "r.status = 'ok' AND m.name = 'peak_mem_mb'"),
            3);
  EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
}

INSTANTIATE_TEST_SUITE_P(Faults, E2EFault,
                         ::testing::Values(FaultCase{"oom", "faults.yaml", 0},
                                           FaultCase{"segv", "faults.yaml", 1},
                                           FaultCase{"hang", "faults_hang.yaml", 1},
                                           FaultCase{"exit", "faults.yaml", 1}),
                         [](const ::testing::TestParamInfo<FaultCase>& info) {
                           return std::string(info.param.fault);
                         });

// ---- 3. Resume, --force, --retry-failed ----

TEST_F(E2E, ResumeForceAndRetryFailed) {
  const std::string spec = "tests/specs/smoke.yaml";
  const Outcome first = run(spec, {"--no-report"});
  ASSERT_EQ(first.rc, 0) << dump(first);
  std::map<std::string, std::string> started;
  std::map<std::string, std::string> finished;
  {
    Db db(db_);
    ASSERT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 6);
    started = db.by_run("started_at");
    finished = db.by_run("finished_at");
  }
  const auto files_first = result_files();
  ASSERT_EQ(files_first.size(), 6U);
  for (const auto& [id, n] : files_first) EXPECT_EQ(n, 1) << id;

  // Again: everything is stored, nothing reruns (no child is started: no new result file).
  const Outcome again = run(spec);
  ASSERT_EQ(again.rc, 0) << dump(again);
  EXPECT_TRUE(contains(again.err, "6 runs planned, 6 already stored, 0 to run")) << again.err;
  EXPECT_TRUE(contains(again.err, "0 ran (0 ok, 0 oom, 0 failed), 6 already stored")) << again.err;
  EXPECT_FALSE(contains(again.err, "[1/")) << again.err;
  EXPECT_TRUE(contains(again.out, "| GC |")) << again.out;  // the tables from the stored runs
  EXPECT_EQ(result_files(), files_first);
  {
    Db db(db_);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs"), 6);
    EXPECT_EQ(db.by_run("started_at"), started);
    EXPECT_EQ(db.by_run("finished_at"), finished);
  }

  // --force reruns all six; this time the kv_cache=off generate run fails (exit 5).
  const std::string target = R"("kv_cache":"off")";
  const Outcome forced = run(spec, {"--force", "--no-report"},
                             Env{{{"HARNESS_FAULT", "exit"}, {"HARNESS_FAULT_MATCH", target}}});
  EXPECT_EQ(forced.rc, 1) << dump(forced);
  EXPECT_TRUE(contains(forced.err, "6 runs planned, 0 already stored, 6 to run")) << forced.err;
  EXPECT_TRUE(contains(forced.err, "6 ran (5 ok, 0 oom, 1 failed)")) << forced.err;
  std::string failed_id;
  {
    Db db(db_);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs"), 6);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 5);
    failed_id = db.scalar(
        "SELECT run_id FROM runs WHERE status = 'crashed' AND exit_code = 5 "
        "AND instr(config, '" +
        target + "') > 0");
    // Rerun records replace the old ones whole: still one environment row and no orphan rows.
    EXPECT_EQ(db.count("SELECT count(*) FROM metrics WHERE run_id NOT IN "
                       "(SELECT run_id FROM runs)"),
              0);
    EXPECT_EQ(db.count("SELECT count(*) FROM environments"), 1);
    EXPECT_EQ(db.count("SELECT count(*) FROM metrics WHERE run_id = '" + failed_id + "'"), 0);
    EXPECT_EQ(db.count("SELECT count(*) FROM steps WHERE run_id = '" + failed_id + "'"), 0);
    started = db.by_run("started_at");
    finished = db.by_run("finished_at");
  }
  // A new attempt each, i.e. a new result file, except the run that exited without writing one.
  const auto files_forced = result_files();
  for (const auto& [id, n] : files_forced) EXPECT_EQ(n, id == failed_id ? 1 : 2) << id;

  // A plain rerun keeps the failed record (resume skips every stored run).
  const Outcome plain = run(spec, {"--no-report"});
  EXPECT_EQ(plain.rc, 0) << dump(plain);
  EXPECT_TRUE(contains(plain.err, "6 already stored, 0 to run")) << plain.err;
  EXPECT_EQ(result_files(), files_forced);

  // --retry-failed reruns only the failed run (no fault now): it becomes ok.
  const Outcome retry = run(spec, {"--retry-failed", "--no-report"});
  ASSERT_EQ(retry.rc, 0) << dump(retry);
  EXPECT_TRUE(contains(retry.err, "6 runs planned, 5 already stored, 1 to run")) << retry.err;
  EXPECT_TRUE(contains(retry.err, "[1/1] generate kv_cache=off")) << retry.err;
  EXPECT_TRUE(contains(retry.err, "1 ran (1 ok, 0 oom, 0 failed), 5 already stored")) << retry.err;
  const auto files_retry = result_files();
  for (const auto& [id, n] : files_retry) EXPECT_EQ(n, 2) << id;
  {
    Db db(db_);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs"), 6);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 6);
    EXPECT_EQ(
        db.count("SELECT count(*) FROM runs WHERE exit_code = 0 AND coalesce(error, '') = ''"), 6);
    EXPECT_GT(db.count("SELECT count(*) FROM metrics WHERE run_id = '" + failed_id + "'"), 0);
    auto now_started = db.by_run("started_at");
    auto now_finished = db.by_run("finished_at");
    for (const auto& [id, when] : finished) {
      if (id == failed_id) {
        EXPECT_GE(now_finished[id], when);
      } else {
        EXPECT_EQ(now_started[id], started[id]) << id;
        EXPECT_EQ(now_finished[id], when) << id;
      }
    }
    EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
  }
}

// ---- 4. SIGKILL the parent in the middle, then resume ----

TEST_F(E2E, KilledParentResumesWithoutDuplicates) {
  const std::string spec = "tests/specs/kill.yaml";
  const auto planned = expanded(spec);
  ASSERT_EQ(planned.size(), 8U);

  const fs::path out = dir_ / "killed.out.txt";
  const fs::path err = dir_ / "killed.err.txt";
  const auto start = Clock::now();
  const pid_t parent = spawn_harness(
      {"run", spec, "--db", db_.string(), "--runs-dir", runs_.string(), "--no-report"}, {}, out,
      err);
  // The progress line of a run is printed after its record is committed.
  bool second_stored = false;
  while (seconds_since(start) < 60) {
    if (contains(slurp(err), "[2/8]")) {
      second_stored = true;
      break;
    }
    int status = 0;
    if (::waitpid(parent, &status, WNOHANG) == parent) break;  // finished (or died) early
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Kill it while its third child is running (the harder case: a run in flight).
  const auto third = Clock::now();
  while (second_stored && processes_mentioning(runs_.string() + "/").empty() &&
         seconds_since(third) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(parent, SIGKILL);
  int status = 0;
  ::waitpid(parent, &status, 0);
  ASSERT_TRUE(second_stored) << slurp(err);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << slurp(err);

  // The worker the parent was waiting for lives in its own process group, but dies with its
  // parent (PR_SET_PDEATHSIG): no orphan competes with the rerun.
  const auto killed = Clock::now();
  while (!processes_mentioning(dir_.string()).empty() && seconds_since(killed) < 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(kill_processes_mentioning(dir_.string()), 0U) << "orphaned workers";

  long long stored_before = 0;
  {
    Db db(db_);
    EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
    stored_before = db.count("SELECT count(*) FROM runs");
    EXPECT_GE(stored_before, 2);
    EXPECT_LT(stored_before, 8);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status <> 'ok'"), 0);
  }

  const Outcome resumed = run(spec, {"--no-report"});
  ASSERT_EQ(resumed.rc, 0) << dump(resumed);
  EXPECT_TRUE(contains(resumed.err, "8 runs planned, " + std::to_string(stored_before) +
                                        " already stored, " + std::to_string(8 - stored_before) +
                                        " to run"))
      << resumed.err;
  // The killed runner's claim on the run in flight is taken over, and logged.
  EXPECT_TRUE(contains(resumed.err, "taking over run ")) << resumed.err;
  EXPECT_TRUE(contains(resumed.err, "(pid " + std::to_string(parent) + " on ")) << resumed.err;

  Db db(db_);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs"), 8);
  EXPECT_EQ(db.count("SELECT count(*) FROM claims WHERE state = 'done'"), 8);
  EXPECT_EQ(db.count("SELECT count(DISTINCT run_id) FROM runs"), 8);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok' AND experiment = 'kill'"), 8);
  EXPECT_EQ(db.count("SELECT count(*) FROM (SELECT run_id, name FROM metrics GROUP BY run_id, "
                     "name HAVING count(*) > 1)"),
            0);
  EXPECT_EQ(db.count("SELECT count(*) FROM steps s JOIN runs r USING (run_id)"),
            8 * 5);  // max_steps 5
  EXPECT_EQ(db.count("SELECT count(*) FROM metrics WHERE run_id NOT IN (SELECT run_id FROM runs)"),
            0);
  EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
  std::map<std::string, std::string> stored;
  for (const auto& row : db.query("SELECT run_id, config FROM runs")) stored[*row[0]] = *row[1];
  EXPECT_EQ(stored, planned);
  hx::Store store(db_.string(), hx::Store::Mode::kExisting);
  EXPECT_EQ(store.integrity_check(), "ok");
}

// ---- 5. Bad specs: exit 2, FILE:LINE: KEY on stderr, no database ----

TEST_F(E2E, BadSpecsExit2WithoutCreatingTheDatabase) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(kSourceDir) / "tests/bad_specs")) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string name = entry.path().filename().string();
    SCOPED_TRACE(name);
    fs::path expect_path = entry.path();
    expect_path.replace_extension(".expect");
    std::string expect = slurp(expect_path);
    while (!expect.empty() && std::isspace(static_cast<unsigned char>(expect.back())) != 0)
      expect.pop_back();
    ASSERT_FALSE(expect.empty());

    const fs::path db = dir_ / name / "results" / "harness.db";
    const Outcome o = harness({"run", "tests/bad_specs/" + name, "--db", db.string(), "--runs-dir",
                               (dir_ / name / "runs").string()});
    EXPECT_EQ(o.rc, 2) << dump(o);
    EXPECT_TRUE(contains(o.err, "error: tests/bad_specs/" + expect)) << o.err;
    EXPECT_TRUE(o.out.empty()) << o.out;
    EXPECT_FALSE(fs::exists(db));
    EXPECT_FALSE(fs::exists(dir_ / name));  // nor its directory, nor the runs dir
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// ---- 6. `harness model` is forwarded to the worker ----

TEST_F(E2E, ModelPresetIsForwardedToTheWorker) {
  const Outcome ok = harness({"model", "llama3.2-1b"});
  EXPECT_EQ(ok.rc, 0) << dump(ok);
  EXPECT_TRUE(std::regex_search(ok.out, std::regex(R"((^|\n)parameters\s+1235814400\b)")))
      << ok.out;

  const Outcome bad = harness({"model", "nope"});
  EXPECT_EQ(bad.rc, 2) << dump(bad);
  for (const char* preset : {"tiny", "small", "llama3.2-1b", "llama2-7b"}) {
    EXPECT_TRUE(contains(bad.err, preset)) << bad.err;
  }
  EXPECT_TRUE(contains(bad.err, "nope")) << bad.err;
}

// `harness export` is forwarded too: an HF directory that the harness reads back to the same
// logits, byte for byte (fp32, the same weights, q/k rows permuted to HF's rotary layout and back).
TEST_F(E2E, ExportIsForwardedAndReadsBackToTheSameLogits) {
  const fs::path out = dir_ / "tiny-hf";
  const Outcome ok = harness({"export", "--model", "tiny", "--seed", "3", "--out", out.string()});
  ASSERT_EQ(ok.rc, 0) << dump(ok);
  EXPECT_TRUE(contains(ok.out, "config.json, model.safetensors (tiny, ")) << ok.out;
  const Json config = Json::parse(slurp(out / "config.json"));
  EXPECT_EQ(config.at("model_type"), "llama");
  EXPECT_EQ(config.at("architectures"), Json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(config.at("torch_dtype"), "float32");
  const std::string weights = slurp(out / "model.safetensors");
  EXPECT_TRUE(contains(weights.substr(0, 4096), "\"model.layers.0.self_attn.q_proj.weight\""));

  const std::string prompt = "1,2,3,4,5";
  const Outcome a = harness({"logits", "--model", "tiny", "--seed", "3", "--prompt-ids", prompt,
                             "--out", (dir_ / "preset.safetensors").string()});
  const Outcome b = harness({"logits", "--model", out.string(), "--prompt-ids", prompt, "--out",
                             (dir_ / "exported.safetensors").string()});
  ASSERT_EQ(a.rc, 0) << dump(a);
  ASSERT_EQ(b.rc, 0) << dump(b);
  const std::string logits = slurp(dir_ / "preset.safetensors");
  EXPECT_GT(logits.size(), 5U * 512 * 4);
  EXPECT_EQ(logits, slurp(dir_ / "exported.safetensors"));

  // The worker's options and errors, through the parent.
  const Outcome help = harness({"export", "--help"});
  EXPECT_EQ(help.rc, 0) << dump(help);
  EXPECT_TRUE(contains(help.out, "--lora-merge")) << help.out;
  const Outcome bad = harness({"export", "--model", "tiny", "--out", out.string(), "--bogus"});
  EXPECT_EQ(bad.rc, 2) << dump(bad);
  EXPECT_TRUE(contains(bad.err, "--bogus")) << bad.err;
}

}  // namespace

// The gate on real runs: an unchanged rerun passes; a worker that holds 16 MB more (a test-only
// allocation) fails on memory; 100 ms more per step fails on time (5 repeats each side); a run
// that now runs out of memory fails; a baseline from another libtorch is refused.
TEST_F(E2E, RegressionGateOnRealRuns) {
  const std::string spec = "tests/specs/gate.yaml";
  const fs::path baseline = dir_ / "baseline.csv";
  ASSERT_EQ(run(spec, {"--no-report"}).rc, 0);
  const Outcome saved =
      harness({"baseline", spec, "--db", db_.string(), "--out", baseline.string()});
  ASSERT_EQ(saved.rc, 0) << dump(saved);

  // Each case reruns all runs into a fresh database and checks it against the baseline. Time is
  // given a wide margin for the unchanged rerun: the shared machine drifts between two runs.
  auto check = [&](const Env& env, const std::vector<std::string>& extra) {
    std::error_code ec;
    fs::remove_all(db_.parent_path(), ec);
    const Outcome r = run(spec, {"--no-report"}, env);
    EXPECT_TRUE(r.rc == 0 || r.rc == 1) << dump(r);
    std::vector<std::string> args = {"check",      spec,         "--db",
                                     db_.string(), "--baseline", baseline.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return harness(args);
  };
  const Outcome unchanged = check({}, {"--time-slowdown-pct", "100"});
  EXPECT_EQ(unchanged.rc, 0) << dump(unchanged);

  const Outcome more_memory = check(Env{{{"HARNESS_FAULT", "alloc"}}}, {});
  EXPECT_EQ(more_memory.rc, 1) << dump(more_memory);
  EXPECT_TRUE(contains(more_memory.out, "peak_mem_mb")) << more_memory.out;

  const Outcome slower = check(Env{{{"HARNESS_FAULT", "slow"}, {"HARNESS_FAULT_MS", "150"}}}, {});
  EXPECT_EQ(slower.rc, 1) << dump(slower);
  EXPECT_TRUE(contains(slower.out, "step_time_s")) << slower.out;

  const Outcome oom = check(Env{{{"HARNESS_FAULT", "oom"}}}, {});
  EXPECT_EQ(oom.rc, 1) << dump(oom);
  EXPECT_TRUE(contains(oom.out, "oom")) << oom.out;

  // A baseline from another libtorch version is refused (exit 2) unless --cross.
  std::string text = slurp(baseline);
  const std::string version = "," + Db(db_).scalar("SELECT libtorch FROM environments") + ",";
  ASSERT_NE(text.find(version), std::string::npos) << version;
  for (size_t at = text.find(version); at != std::string::npos; at = text.find(version, at))
    text.replace(at, version.size(), ",9.99.0,");
  const fs::path foreign = dir_ / "foreign.csv";
  { std::ofstream(foreign) << text; }
  const Outcome refused =
      harness({"check", spec, "--db", db_.string(), "--baseline", foreign.string()});
  EXPECT_EQ(refused.rc, 2) << dump(refused);
}

namespace {

// The CI gate on the quickstart (.ci/run): a rerun's peaks equal the first run's, so it passes;
// the same rerun with every peak_mem_mb raised by 5% in its database fails on every run. The
// database is edited, not the worker: this tests what the gate makes of a 5% regression.
TEST_F(E2E, QuickstartGateFailsOnFivePercentMoreMemory) {
  const std::string spec = "experiments/quickstart.yaml";
  ASSERT_EQ(run(spec, {"--no-report", "--jobs", "2"}, {}, 300).rc, 0);
  const fs::path baseline = dir_ / "quickstart.csv";
  const Outcome saved =
      harness({"baseline", spec, "--db", db_.string(), "--out", baseline.string()});
  ASSERT_EQ(saved.rc, 0) << dump(saved);
  std::error_code ec;
  fs::remove_all(db_.parent_path(), ec);
  ASSERT_EQ(run(spec, {"--no-report", "--jobs", "2"}, {}, 300).rc, 0);

  const std::vector<std::string> check = {"check",      spec,         "--db",
                                          db_.string(), "--baseline", baseline.string()};
  const Outcome rerun = harness(check);
  EXPECT_EQ(rerun.rc, 0) << dump(rerun);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE metrics SET value = value * 1.05 WHERE name = 'peak_mem_mb'",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(sqlite3_changes(db), 12);  // 8 fine-tuning and 4 generation runs
  sqlite3_close(db);
  const Outcome more = harness(check);
  EXPECT_EQ(more.rc, 1) << dump(more);
  EXPECT_TRUE(contains(more.out, "# harness check: FAIL")) << more.out;
  size_t flagged = 0;
  for (size_t at = more.out.find("| **REGRESSION** |"); at != std::string::npos;
       at = more.out.find("| **REGRESSION** |", at + 1))
    ++flagged;
  EXPECT_EQ(flagged, 12U) << more.out;
}

// One binary for CPU and GPU: on a machine without a usable CUDA device a `device: cuda` spec is
// refused before anything runs (exit 2, a message that says why, no database). Skipped where a
// device is present (there the spec would run).
TEST_F(E2E, CudaSpecWithoutADeviceStopsBeforeAnyRun) {
  const fs::path caps = dir_ / "caps.json";
  ASSERT_EQ(std::system((kWorker + " caps > " + caps.string()).c_str()), 0);
  if (Json::parse(slurp(caps)).value("cuda", false)) GTEST_SKIP() << "a CUDA device is present";
  std::string text = slurp(fs::path(kSourceDir) / "tests/specs/smoke.yaml");
  const size_t at = text.find("device: cpu");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 11, "device: cuda");
  const fs::path spec = dir_ / "cuda.yaml";
  { std::ofstream(spec) << text; }
  const Outcome o = run(spec.string());
  EXPECT_EQ(o.rc, 2) << dump(o);
  EXPECT_TRUE(contains(o.err, "no CUDA device is usable here")) << o.err;
  EXPECT_FALSE(fs::exists(db_));
}

// The peak RSS in MB of one `harness-worker` command (wait4's rusage), which must succeed.
double worker_peak_rss_mb(std::vector<std::string> args) {
  args.insert(args.begin(), kWorker);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_WRONLY);
    if (null_fd < 0) _exit(126);
    ::dup2(null_fd, STDOUT_FILENO);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  if (::wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(args[0] + " " + args[1] + " failed");
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// A QLoRA model loads one weight at a time, and the worker's heap reuses each weight's freed
// full-precision source for the next: generating from small's NF4 weights peaks below generating
// from its fp32 weights (720 / 953 MB measured; with posix_memalign's blocks, which a freed
// block of the same size could not serve again, 1205 / 952 MB).
TEST_F(E2E, AQuantisedModelLoadsInLessMemoryThanItsFullPrecisionModel) {
  auto peak = [](const char* quant) {
    return worker_peak_rss_mb({"generate", "--model", "small", "--quant", quant, "--double-quant",
                               "on", "--prompt-len", "4", "--max-new-tokens", "2", "--threads", "1",
                               "--json"});
  };
  const double fp32 = peak("off");
  const double nf4 = peak("nf4");
  std::printf("generate from small: peak RSS %.0f MB fp32, %.0f MB nf4\n", fp32, nf4);
  EXPECT_LT(nf4, fp32 - 128.0);
}

// One new token is the prefill's alone: `harness-worker generate` reports no decode time then
// (it failed on the median of no decode steps), from fp32 and from 4-bit weights.
TEST_F(E2E, GeneratingOneTokenHasNoDecodeTime) {
  for (const char* quant : {"off", "nf4"}) {
    const fs::path out = dir_ / (std::string("one_token_") + quant + ".json");
    const std::string command = kWorker + " generate --model tiny --quant " + quant +
                                " --prompt-len 4 --max-new-tokens 1 --json > " + out.string();
    ASSERT_EQ(std::system(command.c_str()), 0) << quant;
    const Json j = Json::parse(slurp(out));
    EXPECT_TRUE(j.at("decode_token_s").is_null()) << quant;
    EXPECT_GT(j.at("prefill_s").get<double>(), 0.0) << quant;
    EXPECT_EQ(j.at("new_ids").size(), 1U) << quant;
  }
}

// Splits one CSV line (RFC 4180 quoting, no line breaks inside fields).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

// `harness estimate` replays the model's allocations; here it meets the worker's counting
// allocator on this very build: every run's estimated peak within 1% of the measured one, for
// both attention kinds, checkpointing, LoRA, both optimizers, bf16 autocast, QLoRA (NF4/FP4,
// double quantisation, bf16 compute dtype, other blocks and targets, a 4-bit product beside an
// autocast one), data parallelism (buckets, ZeRO-1; the largest rank's peak) and generation with
// and without the KV cache, from 4-bit weights too. (A change
// of the model's allocations fails this test until the estimate follows.)
TEST_F(E2E, EstimateEqualsMeasuredPeaks) {
  const std::string spec = "tests/specs/estimate.yaml";
  ASSERT_EQ(run(spec, {"--no-report", "--jobs", "2"}).rc, 0);
  const Outcome est = harness({"estimate", spec, "--format", "csv"});
  ASSERT_EQ(est.rc, 0) << dump(est);
  std::istringstream lines(est.out);
  std::string line;
  std::getline(lines, line);
  const auto header = csv_fields(line);
  const auto column = [&](const std::string& name) {
    return static_cast<size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  const size_t id_at = column("run_id");
  const size_t peak_at = column("peak_mb");
  ASSERT_LT(peak_at, header.size()) << line;
  const Db db(db_);
  int compared = 0;
  while (std::getline(lines, line)) {
    const auto fields = csv_fields(line);
    ASSERT_EQ(fields.size(), header.size()) << line;
    const double estimated = std::stod(fields[peak_at]);
    const double measured =
        std::stod(db.scalar("SELECT value FROM metrics WHERE name = "
                            "'peak_mem_mb' AND run_id = '" +
                            fields[id_at] + "'"));
    EXPECT_NEAR(estimated, measured, 0.01 * measured) << line;
    ++compared;
  }
  EXPECT_EQ(compared, 39);
}

TEST_F(E2E, GenerationsBeforeAndAfterFineTuningAreStoredAndShown) {
  const Outcome o = run("tests/specs/generations.yaml");
  ASSERT_EQ(o.rc, 0) << dump(o);
  const Db db(db_);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM texts"), 12);  // 2 runs x 3 prompts x before/after
  std::map<std::string, std::map<std::string, std::string>> by_lora;  // lora -> name -> text
  for (const auto& row : db.query("SELECT r.config, t.name, t.text FROM texts t JOIN runs r "
                                  "USING (run_id)")) {
    const std::string lora = Json::parse(*row[0]).at("lora");
    by_lora[lora][*row[1]] = *row[2];
  }
  ASSERT_EQ(by_lora.size(), 2U);
  for (int i = 0; i < 3; ++i) {
    const std::string before = "before/" + std::to_string(i);
    // LoRA starts as the identity: before training both models answer alike.
    EXPECT_EQ(by_lora["on"][before], by_lora["off"][before]) << before;
    EXPECT_FALSE(by_lora["off"][before].empty()) << before;
  }
  // Four SGD steps at lr 0.05 change what the fully fine-tuned model says.
  bool changed = false;
  for (int i = 0; i < 3; ++i)
    changed |= by_lora["off"]["after/" + std::to_string(i)] !=
               by_lora["off"]["before/" + std::to_string(i)];
  EXPECT_TRUE(changed);
  EXPECT_TRUE(contains(o.out, "## Generations before and after fine-tuning")) << o.out;
  EXPECT_TRUE(contains(o.out, "### lora=on")) << o.out;
  EXPECT_TRUE(contains(o.out, "2. What is the capital of France?")) << o.out;
}

}  // namespace
