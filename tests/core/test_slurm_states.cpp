// The Slurm backend's parsing of squeue/sacct output and its mapping of Slurm states to run
// statuses (the cluster itself is exercised by tests/slurm).
#include <gtest/gtest.h>

#include "harness/exec/slurm.h"

namespace {

TEST(SlurmStates, ParsesArrayElementsRangesAndCancelledBy) {
  const std::string text =
      "41_0|COMPLETED|node1|2026-11-23T10:00:05|None\n"
      "41_1|RUNNING|node2|2026-11-23T11:00:00\n"
      "41_[2-4,7%2]|PENDING||N/A|Priority\n"
      "41_5|CANCELLED by 0|node1|2026-11-23T10:00:09\n"
      "41_6.batch|COMPLETED|node1|2026-11-23T10:00:05\n"  // a job step: ignored
      "410_0|FAILED|node9|2026-11-23T10:00:05\n"          // another job: ignored
      "garbage\n";
  const auto states = hx::parse_slurm_array_states(text, "41");
  ASSERT_EQ(states.size(), 7U);
  EXPECT_EQ(states.at(0).state, "COMPLETED");
  EXPECT_EQ(states.at(0).node, "node1");
  ASSERT_TRUE(states.at(0).end.has_value());
  EXPECT_EQ(states.at(1).state, "RUNNING");
  for (int i : {2, 3, 4, 7}) {
    EXPECT_EQ(states.at(i).state, "PENDING") << i;
    EXPECT_EQ(states.at(i).node, "") << i;
    EXPECT_FALSE(states.at(i).end.has_value()) << i;
    EXPECT_EQ(states.at(i).reason, "Priority") << i;
  }
  EXPECT_EQ(states.at(5).state, "CANCELLED");
  EXPECT_FALSE(states.contains(6));
}

TEST(SlurmStates, FinalStates) {
  for (const char* s : {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                        "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
    EXPECT_TRUE(hx::slurm_state_is_final(s)) << s;
  for (const char* s :
       {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED", ""})
    EXPECT_FALSE(hx::slurm_state_is_final(s)) << s;
}

TEST(SlurmStates, StatesMapToRunStatuses) {
  auto status = [](const std::string& state) {
    return hx::slurm_verdict({state, "gpu7", std::nullopt}, "00:10:00");
  };
  EXPECT_EQ(status("OUT_OF_MEMORY").status, hx::Status::kOom);
  EXPECT_EQ(status("TIMEOUT").status, hx::Status::kTimeout);
  EXPECT_NE(status("TIMEOUT").error.find("--time 00:10:00"), std::string::npos);
  EXPECT_EQ(status("DEADLINE").status, hx::Status::kTimeout);
  EXPECT_EQ(status("NODE_FAIL").status, hx::Status::kCrashed);
  EXPECT_NE(status("NODE_FAIL").error.find("node gpu7"), std::string::npos);
  EXPECT_EQ(status("CANCELLED").status, hx::Status::kError);
  EXPECT_NE(status("CANCELLED").error.find("cancelled"), std::string::npos);
  EXPECT_EQ(status("FAILED").status, hx::Status::kCrashed);
  EXPECT_EQ(status("COMPLETED").status,
            hx::Status::kCrashed);                   // but no outcome file: a lost result
  EXPECT_EQ(status("").status, hx::Status::kError);  // unknown to Slurm: cancelled while pending
}

TEST(SlurmStates, TimeLimitIsTheTimeoutPlusAMarginInWholeMinutes) {
  EXPECT_EQ(hx::slurm_time_limit(0), "");
  EXPECT_EQ(hx::slurm_time_limit(5), "00:03:00");
  EXPECT_EQ(hx::slurm_time_limit(1800), "00:32:00");
  EXPECT_EQ(hx::slurm_time_limit(3600 * 30), "1-06:02:00");
  for (double t : {5.0, 61.0, 1800.0, 7200.5}) {
    const auto back = hx::parse_slurm_time(hx::slurm_time_limit(t));
    ASSERT_TRUE(back.has_value()) << t;
    EXPECT_GE(*back, t + 120) << t;
    EXPECT_LT(*back, t + 180) << t;
  }
}

TEST(SlurmStates, ParsesSlurmTimeFormats) {
  EXPECT_EQ(hx::parse_slurm_time("5"), 300);
  EXPECT_EQ(hx::parse_slurm_time("5:30"), 330);
  EXPECT_EQ(hx::parse_slurm_time("01:02:03"), 3723);
  EXPECT_EQ(hx::parse_slurm_time("2-3"), 2 * 86400 + 3 * 3600);
  EXPECT_EQ(hx::parse_slurm_time("1-00:30"), 86400 + 1800);
  EXPECT_EQ(hx::parse_slurm_time("1-00:00:10"), 86410);
  EXPECT_FALSE(hx::parse_slurm_time("").has_value());
  EXPECT_FALSE(hx::parse_slurm_time("1h").has_value());
  EXPECT_FALSE(hx::parse_slurm_time("1:2:3:4").has_value());
}

}  // namespace
