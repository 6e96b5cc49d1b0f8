// The run record: real SQLite files in a temporary directory.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "harness/plan/fields.h"
#include "harness/plan/hash.h"
#include "harness/store/store.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;

class StoreTest : public testing::TempDirTest {
 protected:
  StoreTest() : TempDirTest("store") {}

  // A second, raw connection: what another tool (sqlite3 shell, a script) would see.
  int64_t count(const std::string& sql) const {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
    int64_t value = -1;
    if (sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }
  std::string query_text(const std::string& sql) const {
    sqlite3* db = nullptr;
    sqlite3_open_v2(db_path().c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sql;
    std::string value;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  std::string db_path() const { return (dir_ / "nested" / "dir" / "harness.db").string(); }

  static Json env() {
    return {{"host", "node1"},
            {"cpu", "Xeon"},
            {"gpu_name", ""},
            {"gpu_mem_mb", 0},
            {"driver", ""},
            {"cuda", ""},
            {"libtorch", "1.13.1"},
            {"compiler", "GCC 12.2"},
            {"build_type", "Release"},
            {"git_commit", "abc"},
            {"threads", 2}};
  }

  static RunRecord record(const std::string& run_id) {
    RunRecord r;
    r.run_id = run_id;
    r.experiment = "quickstart";
    r.workload = Workload::kFinetune;
    r.repeat = 0;
    r.part = 1;
    r.config = R"({"gc":"off","mp":"off"})";
    r.status = Status::kOk;
    r.exit_code = 0;
    r.started_at = "2024-05-01T10:00:00Z";
    r.finished_at = "2024-05-01T10:00:05Z";
    r.stderr_tail = "step 3 done";
    r.env = env();
    r.metrics = {{"peak_mem_mb", 12.5, "MB"}, {"step_time_s", 0.125, ""}, {"custom", 7, "x"}};
    r.steps = {{0, 0.2, 5.5, 128, 40.0}, {1, 0.125, std::nullopt, std::nullopt, std::nullopt}};
    r.texts = {{"before/0", "Hello"}, {"after/0", "Hi, \"there\""}};
    return r;
  }
};

TEST(HashTest, Fnv1aKnownVectors) {
  EXPECT_EQ(fnv1a64_hex(""), "cbf29ce484222325");
  EXPECT_EQ(fnv1a64_hex("a"), "af63dc4c8601ec8c");
  EXPECT_EQ(fnv1a64_hex("foobar"), "85944171f73967e8");
}

TEST_F(StoreTest, CreatesParentsWalSchemaVersionAndIsIntact) {
  Store store(db_path());
  EXPECT_TRUE(fs::exists(db_path()));
  EXPECT_EQ(query_text("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(count("PRAGMA user_version"), kSchemaVersion);
  EXPECT_EQ(store.integrity_check(), "ok");
  // The tables other tools rely on, by name.
  for (const char* table : {"experiments", "runs", "environments", "metrics", "steps", "texts"}) {
    EXPECT_EQ(count(std::string("SELECT count(*) FROM sqlite_master WHERE name = '") + table + "'"),
              1)
        << table;
  }
  // Opening again neither fails nor touches the schema.
  Store again(db_path());
  EXPECT_EQ(again.integrity_check(), "ok");
}

TEST_F(StoreTest, ExistingModeNeverCreatesADatabase) {
  const std::string missing = (dir_ / "missing.db").string();
  try {
    Store store(missing, Store::Mode::kExisting);
    FAIL() << "opened a missing database";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(missing));
}

TEST_F(StoreTest, RejectsNewerSchemaAndForeignFiles) {
  { Store store(db_path()); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  EXPECT_THROW(Store store(db_path()), std::runtime_error);

  const std::string other = (dir_ / "other.db").string();
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  EXPECT_THROW(Store store(other, Store::Mode::kExisting), std::runtime_error);
}

TEST_F(StoreTest, IngestRoundTrip) {
  Store store(db_path());
  store.upsert_experiment("quickstart", "experiments/quickstart.yaml", "name: quickstart\n");
  const RunRecord in = record("00000000000000a1");
  store.ingest(in);

  const auto statuses = store.run_statuses("quickstart");
  ASSERT_EQ(statuses.size(), 1U);
  EXPECT_EQ(statuses.at("00000000000000a1"), Status::kOk);
  EXPECT_TRUE(store.run_statuses("other").empty());

  const auto runs = store.load_runs("quickstart");
  ASSERT_EQ(runs.size(), 1U);
  const StoredRun& run = runs[0];
  EXPECT_EQ(run.run_id, in.run_id);
  EXPECT_EQ(run.experiment, "quickstart");
  EXPECT_EQ(run.workload, Workload::kFinetune);
  EXPECT_EQ(run.repeat, 0);
  EXPECT_EQ(run.part, 1);
  EXPECT_EQ(run.config, Json::parse(in.config));
  EXPECT_EQ(run.status, Status::kOk);
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_FALSE(run.signal.has_value());
  EXPECT_EQ(run.started_at, in.started_at);
  EXPECT_EQ(run.finished_at, in.finished_at);
  EXPECT_EQ(run.stderr_tail, in.stderr_tail);
  EXPECT_EQ(run.env_id, environment_id(env()));
  EXPECT_EQ(run.env, env());
  ASSERT_EQ(run.metrics.size(), 3U);
  EXPECT_DOUBLE_EQ(run.metrics.at("peak_mem_mb"), 12.5);
  EXPECT_DOUBLE_EQ(run.metrics.at("step_time_s"), 0.125);
  EXPECT_DOUBLE_EQ(run.metrics.at("custom"), 7);
  // A metric written without a unit gets the field table's.
  EXPECT_EQ(query_text("SELECT unit FROM metrics WHERE name = 'step_time_s'"), "s");

  const auto steps = store.load_steps(in.run_id);
  ASSERT_EQ(steps.size(), 2U);
  EXPECT_EQ(steps[0].step, 0);
  EXPECT_DOUBLE_EQ(steps[0].seconds, 0.2);
  EXPECT_EQ(steps[0].loss, 5.5);
  EXPECT_EQ(steps[0].tokens, 128);
  EXPECT_EQ(steps[0].mem_mb, 40.0);
  EXPECT_FALSE(steps[1].loss.has_value());
  EXPECT_FALSE(steps[1].tokens.has_value());
  EXPECT_EQ(store.load_texts(in.run_id), in.texts);

  EXPECT_EQ(query_text("SELECT spec_path FROM experiments WHERE name = 'quickstart'"),
            "experiments/quickstart.yaml");
  EXPECT_EQ(store.integrity_check(), "ok");
}

// A database written before runs.part (and claims) existed: read as it is, with no part; opened
// for writing, it gains the column, keeps its rows and the schema version, and new rows have a
// part.
TEST_F(StoreTest, ADatabaseFromBeforeRunsPartGainsTheColumnOnCreateOpen) {
  {
    Store store(db_path());
    RunRecord old = record("00000000000000b1");
    old.part.reset();
    store.ingest(old);
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "ALTER TABLE runs DROP COLUMN part; DROP TABLE claims", nullptr,
                         nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  const std::string has_part = "SELECT count(*) FROM pragma_table_info('runs') WHERE name = 'part'";
  ASSERT_EQ(count(has_part), 0);

  {
    const Store reader(db_path(), Store::Mode::kExisting);  // reads, changes nothing
    const auto runs = reader.load_runs("quickstart");
    ASSERT_EQ(runs.size(), 1U);
    EXPECT_FALSE(runs[0].part.has_value());
    EXPECT_EQ(runs[0].status, Status::kOk);
  }
  EXPECT_EQ(count(has_part), 0);

  {
    Store writer(db_path());
    EXPECT_EQ(count(has_part), 1);
    EXPECT_EQ(count("SELECT count(*) FROM sqlite_master WHERE name = 'claims'"), 1);
    RunRecord fresh = record("00000000000000b2");
    fresh.part = 2;
    writer.ingest(fresh);
    const auto runs = writer.load_runs("quickstart");
    ASSERT_EQ(runs.size(), 2U);
    for (const StoredRun& run : runs) {
      if (run.run_id == "00000000000000b1") EXPECT_FALSE(run.part.has_value());
      if (run.run_id == "00000000000000b2") EXPECT_EQ(run.part, 2);
    }
  }
  Store again(db_path());  // the column is there: opening again adds nothing and does not fail
  EXPECT_EQ(count("PRAGMA user_version"), kSchemaVersion);
  EXPECT_EQ(again.integrity_check(), "ok");
}

TEST_F(StoreTest, ReingestReplacesTheRunAndItsRows) {
  Store store(db_path());
  store.ingest(record("00000000000000a1"));
  store.ingest(record("00000000000000a2"));

  RunRecord rerun = record("00000000000000a1");
  rerun.status = Status::kOom;
  rerun.exit_code = 3;
  rerun.error = "out of memory";
  rerun.metrics = {{"peak_mem_mb", 99, "MB"}};
  rerun.steps = {{0, 0.3, 5.0, 128, 41.0}};
  rerun.texts = {};
  store.ingest(rerun);

  EXPECT_EQ(count("SELECT count(*) FROM runs"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM metrics WHERE run_id = '00000000000000a1'"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM steps WHERE run_id = '00000000000000a1'"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM texts WHERE run_id = '00000000000000a1'"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM metrics WHERE run_id = '00000000000000a2'"), 3);
  // Both runs share one environment row.
  EXPECT_EQ(count("SELECT count(*) FROM environments"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM experiments"), 1);

  const auto statuses = store.run_statuses("quickstart");
  EXPECT_EQ(statuses.at("00000000000000a1"), Status::kOom);
  for (const StoredRun& run : store.load_runs("quickstart")) {
    if (run.run_id != "00000000000000a1") continue;
    EXPECT_EQ(run.error, "out of memory");
    EXPECT_EQ(run.exit_code, 3);
    EXPECT_DOUBLE_EQ(run.metrics.at("peak_mem_mb"), 99);
  }
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST_F(StoreTest, FailedIngestWritesNothing) {
  Store store(db_path());
  // The primary key (run_id, name) forbids a metric twice; the violation comes after the
  // environment, the run and the first metric were written inside the transaction.
  RunRecord bad = record("00000000000000b1");
  bad.metrics.push_back({"peak_mem_mb", 1.0, "MB"});
  EXPECT_THROW(store.ingest(bad), std::runtime_error);
  EXPECT_EQ(count("SELECT count(*) FROM runs"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM metrics"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM steps"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM texts"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM environments"), 0);
  EXPECT_EQ(count("SELECT count(*) FROM experiments"), 0);

  // A failed rerun keeps the earlier record whole (its delete is rolled back too).
  store.ingest(record("00000000000000b1"));
  RunRecord bad_step = record("00000000000000b1");
  bad_step.status = Status::kOom;
  bad_step.steps.push_back(bad_step.steps.front());  // step 0 twice
  EXPECT_THROW(store.ingest(bad_step), std::runtime_error);
  EXPECT_EQ(store.run_statuses("quickstart").at("00000000000000b1"), Status::kOk);
  EXPECT_EQ(count("SELECT count(*) FROM metrics"), 3);
  EXPECT_EQ(count("SELECT count(*) FROM steps"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM texts"), 2);

  // The status CHECK constraint: a verdict outside the documented set is refused (a RunRecord
  // cannot hold one; another writer of the file could).
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
    EXPECT_NE(sqlite3_exec(db,
                           "INSERT INTO runs(run_id, experiment, repeat, config, status) "
                           "VALUES ('00000000000000b2', 'quickstart', 0, '{}', 'finished')",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  EXPECT_EQ(count("SELECT count(*) FROM runs"), 1);
  EXPECT_FALSE(parse_status("finished").has_value());

  // The store stays usable after a rollback.
  store.ingest(record("00000000000000b3"));
  EXPECT_EQ(count("SELECT count(*) FROM runs"), 2);
  EXPECT_EQ(store.integrity_check(), "ok");
}

TEST_F(StoreTest, VerdictWithoutEnvironmentOrMetrics) {
  Store store(db_path());
  RunConfig run;
  run.run_id = "00000000000000c1";
  run.repeat = 1;
  run.workload = Workload::kGenerate;
  run.config = {{"kv_cache", "on"}};
  run.canonical = R"({"kv_cache":"on"})";
  RunRecord crashed = make_run_record("gen", run);
  crashed.status = Status::kCrashed;
  crashed.signal = 11;
  store.ingest(crashed);
  const auto runs = store.load_runs("gen");
  ASSERT_EQ(runs.size(), 1U);
  EXPECT_EQ(runs[0].status, Status::kCrashed);
  EXPECT_EQ(runs[0].signal, 11);
  EXPECT_FALSE(runs[0].exit_code.has_value());
  EXPECT_EQ(runs[0].repeat, 1);
  EXPECT_EQ(runs[0].env_id, "");
  EXPECT_TRUE(runs[0].env.empty());
  EXPECT_TRUE(runs[0].metrics.empty());
  EXPECT_EQ(count("SELECT count(*) FROM runs WHERE env_id IS NULL"), 1);
}

TEST_F(StoreTest, NanMetricReadsBackAsNan) {
  Store store(db_path());
  RunRecord r = record("00000000000000d1");
  r.metrics = {{"loss_last", std::nan(""), ""}};
  store.ingest(r);
  EXPECT_TRUE(std::isnan(store.load_runs("quickstart")[0].metrics.at("loss_last")));
}

TEST_F(StoreTest, UpsertExperimentKeepsCreationTime) {
  Store store(db_path());
  store.ingest(record("00000000000000e1"));  // creates a placeholder experiment row
  const std::string created = query_text("SELECT created_at FROM experiments");
  EXPECT_EQ(created.size(), std::string("2024-05-01T10:00:00Z").size());
  store.upsert_experiment("quickstart", "a.yaml", "one");
  store.upsert_experiment("quickstart", "b.yaml", "two");
  EXPECT_EQ(count("SELECT count(*) FROM experiments"), 1);
  EXPECT_EQ(query_text("SELECT spec_text FROM experiments"), "two");
  EXPECT_EQ(query_text("SELECT created_at FROM experiments"), created);
}

// ---- Claims: several runners on one database (docs/concurrency.md) ----

Claimant claimant(const std::string& id, int64_t pid, double started_at) {
  Claimant c;
  c.id = id;
  c.host = Claimant::this_process().host;
  c.pid = pid;
  c.started_at = started_at;
  return c;
}

TEST_F(StoreTest, OneClaimPerRunWhileItsHolderLives) {
  Store store(db_path());
  const Claimant me = Claimant::this_process();
  // Another live runner: this process's parent (a pid that surely exists on this host).
  const Claimant other = claimant("other", ::getppid(), me.started_at);
  const ClaimResult mine = store.claim_run("quickstart", "r1", me, false, false);
  EXPECT_EQ(mine.outcome, ClaimOutcome::kClaimed);
  EXPECT_EQ(mine.attempt, 1);
  EXPECT_TRUE(mine.takeover.empty());
  const ClaimResult theirs = store.claim_run("quickstart", "r1", other, false, false);
  EXPECT_EQ(theirs.outcome, ClaimOutcome::kHeldByOther);
  EXPECT_EQ(theirs.holder, me.id);
  // Their record of my run is refused; mine is stored and marks the claim done.
  EXPECT_FALSE(store.ingest(record("r1"), &other));
  EXPECT_EQ(count("SELECT count(*) FROM runs"), 0);
  EXPECT_TRUE(store.ingest(record("r1"), &me));
  EXPECT_EQ(query_text("SELECT state FROM claims WHERE run_id = 'r1'"), "done");
  // A runner that started before my run finished does not run it again, even with --force.
  EXPECT_EQ(store.claim_run("quickstart", "r1", other, false, false).outcome,
            ClaimOutcome::kDoneByOther);
  EXPECT_EQ(store.claim_run("quickstart", "r1", other, true, false).outcome,
            ClaimOutcome::kDoneByOther);
  // A runner started after it finished finds it stored, and reruns it with --force, as a new
  // attempt.
  const Claimant later = claimant("later", ::getppid(), me.started_at + 1e6);
  EXPECT_EQ(store.claim_run("quickstart", "r1", later, false, false).outcome,
            ClaimOutcome::kStored);
  const ClaimResult rerun = store.claim_run("quickstart", "r1", later, true, false);
  EXPECT_EQ(rerun.outcome, ClaimOutcome::kClaimed);
  EXPECT_EQ(rerun.attempt, 2);
}

TEST_F(StoreTest, ADeadRunnersClaimIsTakenOverAndLogged) {
  Store store(db_path());
  // A pid that does not exist on this host (beyond pid_max).
  const Claimant dead = claimant("dead", 99999999, 0);
  ASSERT_EQ(store.claim_run("quickstart", "r1", dead, false, false).outcome,
            ClaimOutcome::kClaimed);
  const Claimant me = Claimant::this_process();
  const ClaimResult taken = store.claim_run("quickstart", "r1", me, false, false);
  EXPECT_EQ(taken.outcome, ClaimOutcome::kClaimed);
  EXPECT_EQ(taken.attempt, 2);
  EXPECT_NE(taken.takeover.find("runner dead (pid 99999999 on "), std::string::npos)
      << taken.takeover;
  // The dead runner's record, should it arrive after all, does not overwrite anything.
  EXPECT_FALSE(store.ingest(record("r1"), &dead));
  // A released claim is free again, without a takeover.
  store.release_claim("r1", me);
  const ClaimResult again =
      store.claim_run("quickstart", "r1", claimant("x", ::getppid(), 0), false, false);
  EXPECT_EQ(again.outcome, ClaimOutcome::kClaimed);
  EXPECT_TRUE(again.takeover.empty());
  EXPECT_EQ(again.attempt, 3);
}

TEST_F(StoreTest, ASlurmSubmissionHoldsItsClaimsUntilCollected) {
  Store store(db_path());
  const Claimant me = Claimant::this_process();
  ASSERT_EQ(store.claim_run("quickstart", "r1", me, false, false).outcome, ClaimOutcome::kClaimed);
  const Claimant submission = claimant("slurm:T1", 0, 0);
  store.transfer_claims({"r1"}, me, submission);
  // No heartbeat ever comes from a submission: it is held all the same.
  const ClaimResult other =
      store.claim_run("quickstart", "r1", claimant("y", ::getppid(), 0), true, false);
  EXPECT_EQ(other.outcome, ClaimOutcome::kHeldByOther);
  EXPECT_EQ(other.holder, "slurm:T1");
  EXPECT_FALSE(store.ingest(record("r1"), &me));
  EXPECT_TRUE(store.ingest(record("r1"), &submission));
}

TEST(EnvironmentIdTest, HashesOnlyKnownKeys) {
  const Json env = {{"gpu_name", "H100"}, {"threads", 16}};
  Json more = env;
  more["unknown_fact"] = "x";
  EXPECT_EQ(environment_id(env), environment_id(more));
  EXPECT_EQ(environment_id(env).size(), 16U);
  EXPECT_NE(environment_id(env), environment_id({{"gpu_name", "A100"}, {"threads", 16}}));
  EXPECT_EQ(environment_id(Json::object()), "");
  EXPECT_EQ(environment_id(nullptr), "");
}

TEST(RecordFromResultTest, ConvertsTheWorkerProtocol) {
  const Json result = Json::parse(R"({
    "status": "oom", "error": "CUDA out of memory",
    "metrics": [{"name": "peak_mem_mb", "value": 15000.5, "unit": "MB"},
                {"name": "loss_last", "value": null}],
    "steps": [{"step": 0, "seconds": 0.12, "loss": 5.6, "tokens": 128, "mem_mb": 40.1},
              {"step": 1, "seconds": 0.11, "loss": null, "tokens": 128, "mem_mb": 40.1}],
    "env": {"host": "h", "libtorch": "2.1.0", "threads": 4},
    "texts": [{"name": "before/0", "text": "once upon"}]
  })");
  RunConfig run;
  run.run_id = "3f9a0c1d2b4e5f60";
  run.repeat = 2;
  run.workload = Workload::kFinetune;
  run.config = {{"gc", "on"}};
  run.canonical = R"({"gc":"on"})";
  const RunRecord r = record_from_result_json(result, "phase3", run);
  EXPECT_EQ(r.run_id, "3f9a0c1d2b4e5f60");
  EXPECT_EQ(r.experiment, "phase3");
  EXPECT_EQ(r.repeat, 2);
  EXPECT_EQ(r.workload, Workload::kFinetune);
  EXPECT_EQ(r.config, R"({"gc":"on"})");
  EXPECT_EQ(r.status, Status::kOom);
  EXPECT_EQ(r.error, "CUDA out of memory");
  ASSERT_EQ(r.metrics.size(), 2U);
  EXPECT_EQ(r.metrics[0].name, "peak_mem_mb");
  EXPECT_DOUBLE_EQ(r.metrics[0].value, 15000.5);
  EXPECT_EQ(r.metrics[0].unit, "MB");
  EXPECT_TRUE(std::isnan(r.metrics[1].value));
  ASSERT_EQ(r.steps.size(), 2U);
  EXPECT_EQ(r.steps[0].loss, 5.6);
  EXPECT_FALSE(r.steps[1].loss.has_value());
  EXPECT_EQ(r.steps[1].tokens, 128);
  EXPECT_EQ(r.env["libtorch"], "2.1.0");
  ASSERT_EQ(r.texts.size(), 1U);
  EXPECT_EQ(r.texts[0].second, "once upon");

  EXPECT_THROW(record_from_result_json(Json::parse(R"({"status": "crashed"})"), "x", run),
               std::runtime_error);
  EXPECT_THROW(record_from_result_json(Json::parse(R"({"metrics": []})"), "x", run),
               std::runtime_error);
  EXPECT_THROW(record_from_result_json(
                   Json::parse(R"({"status": "ok", "metrics": [{"value": 1}]})"), "x", run),
               std::runtime_error);
  // Optional parts may be absent.
  const RunRecord minimal = record_from_result_json(Json::parse(R"({"status": "ok"})"), "x", run);
  EXPECT_TRUE(minimal.metrics.empty());
  EXPECT_TRUE(minimal.env.is_null());
}

TEST(TimestampTest, IsoUtc) {
  const std::string now = utc_now_iso8601();
  ASSERT_EQ(now.size(), 20U);
  EXPECT_EQ(now[4], '-');
  EXPECT_EQ(now[10], 'T');
  EXPECT_EQ(now.back(), 'Z');
}

}  // namespace
}  // namespace hx
