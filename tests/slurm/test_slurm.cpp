// The Slurm backend on a real single-node cluster (scripts/slurm-local.sh, started by the ctest
// fixture `slurm`): real sbatch job arrays, squeue, scancel, real child processes and SQLite.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/e2e/e2e_util.h"

namespace {

// Runs a Slurm client command through the shell, returning its stdout.
std::string shell(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  ::pclose(pipe);
  return out;
}

class Slurm : public E2E {
 protected:
  void TearDown() override {
    // Jobs a test left in the queue go first; then E2E checks that no process of the test is left.
    for (const std::string& job : submitted_jobs()) shell("scancel " + job + " 2>/dev/null");
    const auto start = Clock::now();
    while (!processes_mentioning(dir_.string()).empty() && seconds_since(start) < 20)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    E2E::TearDown();
  }

  // The job ids in the submission files under the runs directory.
  std::vector<std::string> submitted_jobs() const {
    std::vector<std::string> jobs;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(runs_ / "slurm", ec)) {
      const fs::path file = entry.path() / "submission.json";
      if (!fs::exists(file)) continue;
      const std::string id = Json::parse(slurp(file)).value("job_id", std::string());
      if (!id.empty()) jobs.push_back(id);
    }
    return jobs;
  }

  Outcome slurm_run(const std::string& spec, std::vector<std::string> extra = {},
                    const Env& env = {}, double timeout_s = 300) {
    extra.insert(extra.begin(), {"--backend", "slurm", "--poll", "0.5"});
    return run(spec, extra, env, timeout_s);
  }

  Outcome collect(const std::string& spec, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"collect",    spec,           "--db",   db_.string(),
                                     "--runs-dir", runs_.string(), "--poll", "0.5"};
    args.insert(args.end(), extra.begin(), extra.end());
    return harness(args, {}, 300);
  }
};

std::string job_id_in(const std::string& text) {
  std::smatch m;
  return std::regex_search(text, m, std::regex("submitted Slurm job ([0-9]+)")) ? m[1].str() : "";
}

// run_id -> sorted metric names.
std::map<std::string, std::set<std::string>> metric_names(const Db& db) {
  std::map<std::string, std::set<std::string>> out;
  for (const auto& row : db.query("SELECT run_id, name FROM metrics")) out[*row[0]].insert(*row[1]);
  return out;
}

TEST_F(Slurm, QuickstartGivesTheSameRunsAsTheLocalBackend) {
  const std::string spec = "experiments/quickstart.yaml";
  const Outcome s = slurm_run(spec, {"--no-report"});
  ASSERT_EQ(s.rc, 0) << dump(s);
  EXPECT_TRUE(contains(s.err, "12 to submit")) << s.err;
  EXPECT_FALSE(job_id_in(s.err).empty()) << s.err;
  EXPECT_TRUE(contains(s.err, "[12/12]")) << s.err;
  EXPECT_TRUE(contains(s.err, "12 ran (12 ok, 0 oom, 0 failed)")) << s.err;
  const fs::path slurm_db = dir_ / "slurm.db";
  fs::rename(db_, slurm_db);

  const Outcome l = run(spec, {"--no-report", "--jobs", "2"});
  ASSERT_EQ(l.rc, 0) << dump(l);
  const Db local(db_);
  const Db cluster(slurm_db);
  const auto local_status = local.by_run("status");
  EXPECT_EQ(local_status.size(), 12U);
  EXPECT_EQ(cluster.by_run("status"), local_status);  // the same run ids, every one ok
  EXPECT_EQ(cluster.by_run("config"), local.by_run("config"));
  EXPECT_EQ(metric_names(cluster), metric_names(local));
  // The environment is recorded from inside the task (the worker on the node).
  EXPECT_EQ(cluster.count("SELECT COUNT(*) FROM runs r JOIN environments e USING (env_id) "
                          "WHERE e.host <> ''"),
            12);
  // Resume works through Slurm too: nothing is submitted again.
  fs::rename(slurm_db, db_);
  const Outcome again = slurm_run(spec, {"--no-report"});
  ASSERT_EQ(again.rc, 0) << dump(again);
  EXPECT_TRUE(contains(again.err, "12 already stored, 0 queued or running in Slurm, 0 to submit"))
      << again.err;
}

// A data-parallel run on Slurm: its array has --ntasks 2, srun starts one worker per rank (each
// says so), and the losses and tokens are the one-rank run's, step by step, as with the local
// backend.
TEST_F(Slurm, ADataParallelRunIsOneSlurmTaskPerRank) {
  const Outcome o = slurm_run("tests/specs/data_parallel.yaml", {"--no-report"});
  ASSERT_EQ(o.rc, 0) << dump(o);
  const Db db(db_);
  ASSERT_EQ(db.count("SELECT COUNT(*) FROM runs WHERE status = 'ok'"), 4) << dump(o);
  expect_two_ranks_step_as_one(db);
  // Each two-rank run's stderr: both ranks, started by srun.
  int srun_ranks = 0;
  for (const auto& entry : fs::recursive_directory_iterator(runs_)) {
    if (entry.path().filename() != "stderr.log") continue;
    const std::string text = slurp(entry.path());
    for (const char* rank : {"rank 0 of 2: Slurm task", "rank 1 of 2: Slurm task"})
      srun_ranks += contains(text, rank) ? 1 : 0;
  }
  EXPECT_EQ(srun_ranks, 6);
}

TEST_F(Slurm, TheTaskEnforcesTheSpecTimeout) {
  // timeout_s is 5; the hung run is killed by its task, the three others finish.
  const Outcome o =
      slurm_run("tests/specs/faults_hang.yaml", {"--no-report"},
                {{{"HARNESS_FAULT", "hang"}, {"HARNESS_FAULT_MATCH", R"("gc":"on","lora":"on")"}}});
  EXPECT_EQ(o.rc, 1) << dump(o);
  EXPECT_TRUE(contains(o.err, "4 ran (3 ok, 0 oom, 1 failed)")) << o.err;
  const Db db(db_);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM runs WHERE status = 'ok'"), 3);
  EXPECT_EQ(
      db.scalar("SELECT status FROM runs WHERE config LIKE '%\"gc\":\"on\",\"lora\":\"on\"%'"),
      "timeout");
  EXPECT_TRUE(contains(db.scalar("SELECT error FROM runs WHERE status = 'timeout'"),
                       "enforced by the Slurm task"));
}

TEST_F(Slurm, ATaskOverItsSlurmTimeLimitIsTimeout) {
  // timeout_s is 600, --time one minute: Slurm ends the hung task first.
  const Outcome o = slurm_run("tests/specs/slurm_hang.yaml", {"--no-report", "--time", "1"},
                              {{{"HARNESS_FAULT", "hang"}}}, 400);
  EXPECT_EQ(o.rc, 1) << dump(o);
  EXPECT_TRUE(contains(o.err, "shorter than the spec's timeout_s")) << o.err;
  const Db db(db_);
  EXPECT_EQ(db.scalar("SELECT status FROM runs"), "timeout");
  const std::string error = db.scalar("SELECT error FROM runs");
  EXPECT_TRUE(contains(error, "Slurm's time limit (--time 1)")) << error;
  EXPECT_TRUE(contains(error, "TIMEOUT")) << error;
}

TEST_F(Slurm, ACancelledTaskIsRecordedAndCollectIngestsOnce) {
  const std::string spec = "tests/specs/slurm_hang.yaml";
  const Env hang{{{"HARNESS_FAULT", "hang"}}};
  const Outcome submitted = slurm_run(spec, {"--no-wait"}, hang);
  ASSERT_EQ(submitted.rc, 0) << dump(submitted);
  const std::string job = job_id_in(submitted.err);
  ASSERT_FALSE(job.empty()) << submitted.err;
  EXPECT_TRUE(contains(submitted.err, "harness collect")) << submitted.err;

  // While it is queued or running, a second run submits nothing.
  const Outcome second = slurm_run(spec, {"--no-wait"}, hang);
  ASSERT_EQ(second.rc, 0) << dump(second);
  EXPECT_TRUE(contains(second.err, "1 queued or running in Slurm, 0 to submit")) << second.err;
  EXPECT_TRUE(job_id_in(second.err).empty()) << second.err;

  // Wait until it runs, then cancel it.
  const auto start = Clock::now();
  while (!contains(shell("squeue -h -j " + job + " -o %T"), "RUNNING") && seconds_since(start) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  shell("scancel " + job);

  const Outcome first = collect(spec, {"--wait"});
  EXPECT_EQ(first.rc, 1) << dump(first);
  EXPECT_TRUE(contains(first.err, "collected 1 (0 ok, 0 oom, 1 failed); 0 still queued"))
      << first.err;
  const Db db(db_);
  EXPECT_EQ(db.scalar("SELECT status FROM runs"), "error");
  EXPECT_TRUE(contains(db.scalar("SELECT error FROM runs"), "cancelled in Slurm (CANCELLED"));
  const std::string finished = db.scalar("SELECT finished_at FROM runs");

  const Outcome again = collect(spec);
  EXPECT_EQ(again.rc, 0) << dump(again);
  EXPECT_TRUE(contains(again.err, "no Slurm tasks waiting to be collected")) << again.err;
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM runs"), 1);
  EXPECT_EQ(db.scalar("SELECT finished_at FROM runs"), finished);
}

TEST_F(Slurm, CollectTwiceIngestsNothingTwice) {
  const std::string spec = "tests/specs/smoke.yaml";
  const Outcome submitted = slurm_run(spec, {"--no-wait"});
  ASSERT_EQ(submitted.rc, 0) << dump(submitted);
  EXPECT_TRUE(contains(submitted.err, "6 runs queued or running in Slurm")) << submitted.err;

  const Outcome first = collect(spec, {"--wait"});
  ASSERT_EQ(first.rc, 0) << dump(first);
  EXPECT_TRUE(contains(first.err, "collected 6 (6 ok, 0 oom, 0 failed); 0 still queued"))
      << first.err;
  const Db db(db_);
  const auto finished = db.by_run("finished_at");
  const long long metrics = db.count("SELECT COUNT(*) FROM metrics");
  const long long steps = db.count("SELECT COUNT(*) FROM steps");
  EXPECT_EQ(finished.size(), 6U);

  const Outcome second = collect(spec);
  ASSERT_EQ(second.rc, 0) << dump(second);
  EXPECT_TRUE(contains(second.err, "no Slurm tasks waiting to be collected")) << second.err;
  EXPECT_EQ(db.by_run("finished_at"), finished);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM metrics"), metrics);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM steps"), steps);

  // `harness report` renders what collect stored.
  const Outcome report = harness({"report", spec, "--db", db_.string()});
  ASSERT_EQ(report.rc, 0) << dump(report);
  EXPECT_TRUE(contains(report.out, "| KV cache |")) << report.out;
}

}  // namespace

namespace {

TEST_F(Slurm, ARefusedSubmissionSaysWhyAndStoresNothing) {
  const Outcome o = slurm_run("tests/specs/smoke.yaml", {"--partition", "no-such-partition"});
  EXPECT_EQ(o.rc, 1) << dump(o);
  EXPECT_TRUE(contains(o.err, "sbatch failed")) << o.err;
  EXPECT_TRUE(contains(o.err, "--partition=no-such-partition")) << o.err;  // the command line
  const Db db(db_);
  EXPECT_EQ(db.count("SELECT COUNT(*) FROM runs"), 0);
  // No submission is left behind for `collect` to wait on.
  EXPECT_TRUE(submitted_jobs().empty());
  const Outcome c = collect("tests/specs/smoke.yaml");
  EXPECT_EQ(c.rc, 0) << dump(c);
  EXPECT_TRUE(contains(c.err, "no Slurm tasks waiting to be collected")) << c.err;
}

}  // namespace

namespace {

TEST_F(Slurm, ASubmissionWhoseJobIdWasLostIsFoundByItsName) {
  // As if the parent had died between sbatch's answer and saving the job id.
  const std::string spec = "tests/specs/smoke.yaml";
  const Outcome submitted = slurm_run(spec, {"--no-wait"});
  ASSERT_EQ(submitted.rc, 0) << dump(submitted);
  const std::string job = job_id_in(submitted.err);
  ASSERT_FALSE(job.empty()) << submitted.err;
  bool erased = false;
  for (const auto& entry : fs::directory_iterator(runs_ / "slurm")) {
    const fs::path file = entry.path() / "submission.json";
    Json j = Json::parse(slurp(file));
    j["job_id"] = "";
    std::ofstream(file) << j.dump(1);
    erased = true;
  }
  ASSERT_TRUE(erased);
  const Outcome c = collect(spec, {"--wait"});
  ASSERT_EQ(c.rc, 0) << dump(c);
  EXPECT_TRUE(contains(c.err, "found Slurm job " + job)) << c.err;
  EXPECT_TRUE(contains(c.err, "collected 6 (6 ok, 0 oom, 0 failed)")) << c.err;
}

}  // namespace
