// Several `harness run` processes on one database (docs/concurrency.md): they split the planned
// runs through claims in the database, run each once, and never store a false verdict. The real
// binaries, real child processes and the real SQLite database, as in test_e2e.cpp.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/e2e_util.h"

namespace {

// Its own suite name: gtest wants one fixture class per suite, and test_e2e.cpp has `E2E`.
class Runners : public E2E {
 protected:
  struct Started {
    pid_t pid;
    fs::path out, err;
    Clock::time_point start;
  };

  Started start_run(const std::string& spec, const std::vector<std::string>& extra,
                    const Env& env = {}) {
    const int n = ++calls_;
    Started s{0, dir_ / ("out." + std::to_string(n) + ".txt"),
              dir_ / ("err." + std::to_string(n) + ".txt"), Clock::now()};
    std::vector<std::string> args = {"run",        spec,           "--db",       db_.string(),
                                     "--runs-dir", runs_.string(), "--no-report"};
    args.insert(args.end(), extra.begin(), extra.end());
    s.pid = spawn_harness(args, env, s.out, s.err);
    return s;
  }

  Outcome finish(const Started& s) { return wait_harness(s.pid, s.out, s.err, 300, s.start); }

  // Every planned run stored once, ok, started once (one attempt directory), its claim done.
  void expect_each_run_once(size_t planned) {
    Db db(db_);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs"), static_cast<long long>(planned));
    EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"),
              static_cast<long long>(planned));
    EXPECT_EQ(db.count("SELECT count(*) FROM claims WHERE state = 'done' AND attempt = 1"),
              static_cast<long long>(planned));
    EXPECT_EQ(db.scalar("PRAGMA integrity_check"), "ok");
    const auto tries = attempts();
    EXPECT_EQ(tries.size(), planned);
    for (const auto& [id, n] : tries) EXPECT_EQ(n, 1) << id << " was started " << n << " times";
  }
};

// "N ran (" from a runner's summary line.
int ran(const Outcome& o) {
  const auto at = o.err.rfind(" ran (");
  if (at == std::string::npos) return -1;
  const auto begin = o.err.rfind(' ', at - 1) + 1;
  return std::stoi(o.err.substr(begin, at - begin));
}

TEST_F(Runners, TwoRunnersStartedTogetherRunEachRunOnce) {
  const std::string spec = "tests/specs/kill.yaml";  // 8 tiny fine-tuning runs of ~1 s
  // On a database that does not exist yet: both create it at once.
  const Started a = start_run(spec, {});
  const Started b = start_run(spec, {});
  const Outcome oa = finish(a);
  const Outcome ob = finish(b);
  ASSERT_EQ(oa.rc, 0) << dump(oa);
  ASSERT_EQ(ob.rc, 0) << dump(ob);
  EXPECT_EQ(ran(oa) + ran(ob), 8) << oa.err << ob.err;
  EXPECT_GT(ran(oa), 0) << oa.err;
  EXPECT_GT(ran(ob), 0) << ob.err;
  EXPECT_FALSE(contains(oa.err + ob.err, "crashed")) << oa.err << ob.err;
  expect_each_run_once(8);
  Db db(db_);
  EXPECT_EQ(db.count("SELECT count(DISTINCT runner) FROM claims"), 2);
  std::cerr << "[ info ] two runners of 8 runs (--jobs 1 each): " << oa.seconds << " s and "
            << ob.seconds << " s\n";
}

TEST_F(Runners, ThreeRunnersWithTwoJobsEachAgainstOneWithTwoJobs) {
  const std::string spec = "tests/specs/kill.yaml";
  // One runner alone first (its own database), for the time it takes.
  const fs::path alone_db = dir_ / "alone.db";
  const Outcome alone = harness({"run", spec, "--db", alone_db.string(), "--runs-dir",
                                 (dir_ / "alone-runs").string(), "--no-report", "--jobs", "2"});
  ASSERT_EQ(alone.rc, 0) << dump(alone);

  std::vector<Started> started;
  for (int i = 0; i < 3; ++i) started.push_back(start_run(spec, {"--jobs", "2"}));
  int total = 0;
  double slowest = 0;
  for (const Started& s : started) {
    const Outcome o = finish(s);
    ASSERT_EQ(o.rc, 0) << dump(o);
    total += ran(o);
    slowest = std::max(slowest, o.seconds);
  }
  EXPECT_EQ(total, 8);
  expect_each_run_once(8);
  // A figure, not an assertion (shared, noisy machines): three runners sharing two cores take
  // about as long as one runner with the same two cores.
  std::cerr << "[ info ] 8 runs: one runner --jobs 2 " << alone.seconds
            << " s; three runners --jobs 2 together " << slowest << " s\n";
  RecordProperty("one_runner_s", std::to_string(alone.seconds));
  RecordProperty("three_runners_s", std::to_string(slowest));
}

// A runner that stops answering (SIGSTOP here; a hung node or a cut network alike) loses its
// claims after the stale time; the next runner takes them over. When the stopped runner wakes,
// the record it brings is not stored over the one of the runner that took over.
TEST_F(Runners, AStoppedRunnerLosesItsClaimAndCannotOverwriteTheTakeover) {
  const std::string spec = "tests/specs/kill.yaml";
  const Env fast_stale{{{"HARNESS_CLAIM_STALE_S", "2"}}};
  const Started a = start_run(spec, {}, fast_stale);
  // Stop it while it waits for its second run's worker (the first is stored).
  const auto begin = Clock::now();
  while (!contains(slurp(a.err), "[1/8]") && seconds_since(begin) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  while (processes_mentioning(runs_.string() + "/").empty() && seconds_since(begin) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(::kill(a.pid, SIGSTOP), 0);
  std::this_thread::sleep_for(std::chrono::seconds(3));  // its heartbeat is stale now

  const Started b = start_run(spec, {}, fast_stale);
  const Outcome ob = finish(b);
  ASSERT_EQ(ob.rc, 0) << dump(ob);
  EXPECT_TRUE(contains(ob.err, "taking over run ")) << ob.err;
  EXPECT_TRUE(contains(ob.err, "(pid " + std::to_string(a.pid) + " on ")) << ob.err;
  std::string taken_over;
  {
    Db db(db_);
    EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 8);
    taken_over = db.scalar("SELECT run_id FROM claims WHERE attempt = 2");
  }

  ASSERT_EQ(::kill(a.pid, SIGCONT), 0);
  const Outcome oa = finish(a);
  EXPECT_EQ(oa.rc, 0) << dump(oa);
  EXPECT_TRUE(contains(oa.err, "note: run " + taken_over + " ")) << oa.err;
  EXPECT_TRUE(contains(oa.err, "was taken over by another runner")) << oa.err;
  Db db(db_);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 8);
  EXPECT_EQ(db.count("SELECT count(*) FROM claims WHERE state = 'done'"), 8);
  // The stored record of the run taken over is the one of B's attempt.
  const auto holder = db.scalar("SELECT runner FROM claims WHERE run_id = '" + taken_over + "'");
  EXPECT_TRUE(contains(holder, ":" + std::to_string(b.pid) + ":")) << holder;
  EXPECT_EQ(attempts().at(taken_over), 2);
}

// --force on two runners at once: each run reruns once, not once per runner.
TEST_F(Runners, TwoForcedRunnersRerunEachRunOnce) {
  const std::string spec = "tests/specs/kill.yaml";
  ASSERT_EQ(run(spec, {"--no-report"}).rc, 0);
  const Started a = start_run(spec, {"--force"});
  const Started b = start_run(spec, {"--force"});
  const Outcome oa = finish(a);
  const Outcome ob = finish(b);
  ASSERT_EQ(oa.rc, 0) << dump(oa);
  ASSERT_EQ(ob.rc, 0) << dump(ob);
  EXPECT_EQ(ran(oa) + ran(ob), 8) << oa.err << ob.err;
  Db db(db_);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 8);
  EXPECT_EQ(db.count("SELECT count(*) FROM claims WHERE state = 'done' AND attempt = 2"), 8);
  for (const auto& [id, n] : attempts()) EXPECT_EQ(n, 2) << id;
}

}  // namespace
