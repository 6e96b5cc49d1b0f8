// Data-parallel runs through `harness run` (world_size > 1: the worker launches its ranks, c10d
// Gloo between them; docs/worker-protocol.md). The same global batch as one rank and as two gives
// the same loss at every step; a rank that crashes, runs out of memory or hangs makes the run
// recorded once with that rank's status, the other rank killed, nothing left running.
#include <gtest/gtest.h>

#include <csignal>
#include <string>

#include "tests/e2e/e2e_util.h"

namespace {

constexpr const char* kSpec = "tests/specs/data_parallel.yaml";
// The canonical config of the two-rank run without ZeRO contains this; the others' do not.
constexpr const char* kTwoRanks = R"("world_size":2,"zero":0)";

class DataParallelE2E : public E2E {};

TEST_F(DataParallelE2E, TwoRanksOfBatchOneLoseWhatOneRankOfBatchTwoLoses) {
  const Outcome o = run(kSpec);
  ASSERT_EQ(o.rc, 0) << dump(o);
  Db db(db_);
  ASSERT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok'"), 4) << dump(o);
  expect_two_ranks_step_as_one(db);
  const std::string two_ranks =
      "(SELECT run_id FROM runs WHERE instr(config, '" + std::string(kTwoRanks) + "') > 0)";
  EXPECT_EQ(
      db.scalar("SELECT value FROM metrics WHERE name = 'world_size' AND run_id = " + two_ranks),
      "2.0");
  EXPECT_GE(std::stod(db.scalar("SELECT value FROM metrics WHERE name = 'comm_wait_s' AND "
                                "run_id = " +
                                two_ranks)),
            0.0);
  const std::string by_rank = db.scalar(
      "SELECT text FROM texts WHERE name = 'peak_mem_mb_by_rank' AND run_id = " + two_ranks);
  EXPECT_EQ(Json::parse(by_rank).size(), 2U) << by_rank;
  // The run's rank files and store are gone; only rank 0's result.json stays.
  for (const auto& entry : fs::recursive_directory_iterator(runs_)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find(".rank"), std::string::npos) << entry.path();
    EXPECT_EQ(name.find(".store"), std::string::npos) << entry.path();
  }
}

struct RankFault {
  const char* fault;
  const char* status;
  int harness_rc;  // an out-of-memory run is a result (the frontier), not a failure
};

void PrintTo(const RankFault& f, std::ostream* os) { *os << f.fault; }

class DataParallelFault : public E2E, public ::testing::WithParamInterface<RankFault> {};

TEST_P(DataParallelFault, OneRankFailsTheRunOnceAndTheOtherRunStillFinishes) {
  const RankFault& f = GetParam();
  const auto start = Clock::now();
  const Outcome o = run(kSpec, {"--set", "timeout_s=8"},
                        Env{{{"HARNESS_FAULT", f.fault},
                             {"HARNESS_FAULT_MATCH", kTwoRanks},
                             {"HARNESS_FAULT_RANK", "1"}}});
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_EQ(o.rc, f.harness_rc) << dump(o);
  Db db(db_);
  ASSERT_EQ(db.count("SELECT count(*) FROM runs"), 4) << dump(o);
  EXPECT_EQ(db.count("SELECT count(*) FROM runs WHERE status = 'ok' AND instr(config, '" +
                     std::string(kTwoRanks) + "') = 0"),
            3);
  const auto rows = db.query(
      "SELECT status, signal, error, stderr_tail FROM runs WHERE "
      "instr(config, '" +
      std::string(kTwoRanks) + "') > 0");
  ASSERT_EQ(rows.size(), 1U);
  const std::string tail = rows[0][3].value_or("");
  SCOPED_TRACE("error '" + rows[0][2].value_or("") + "', stderr_tail '" + tail + "'");
  EXPECT_EQ(rows[0][0].value_or(""), f.status);
  // The launcher names the failed rank; a hung run is killed whole at timeout_s, launcher too.
  if (std::string(f.fault) != "hang")
    EXPECT_TRUE(contains(tail, "rank 1: ")) << "the launcher names the failed rank";
  if (std::string(f.fault) == "segv") EXPECT_EQ(rows[0][1], std::to_string(SIGSEGV));
  // Within the spec's timeout (8 s), plus the runs themselves and the start-up.
  EXPECT_LT(seconds, 40.0);
}

INSTANTIATE_TEST_SUITE_P(Faults, DataParallelFault,
                         ::testing::Values(RankFault{"segv", "crashed", 1},
                                           RankFault{"oom", "oom", 0},
                                           RankFault{"hang", "timeout", 1}),
                         [](const auto& info) { return std::string(info.param.fault); });

}  // namespace
