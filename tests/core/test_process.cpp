// run_child with real processes; /bin/sh is only the test's child program.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness/exec/process.h"
#include "tests/core/temp_dir_test.h"

namespace hx {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class ProcessTest : public testing::TempDirTest {
 protected:
  ProcessTest() : TempDirTest("process") {}

  // A spec running `sh -c script` with stdout and stderr in this test's directory.
  ChildSpec sh(const std::string& script, double timeout_s = 10) const {
    ChildSpec spec;
    spec.argv = {"/bin/sh", "-c", script};
    spec.stderr_path = (dir_ / "stderr.txt").string();
    spec.stdout_path = (dir_ / "stdout.txt").string();
    spec.timeout_s = timeout_s;
    return spec;
  }

  static std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  }
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct ProcStat {
  char state = 0;
  pid_t ppid = 0;
  pid_t pgrp = 0;
};

// State, parent and process group of every process, from /proc/<pid>/stat.
std::vector<ProcStat> all_processes() {
  std::vector<ProcStat> result;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    const auto paren = stat.rfind(')');  // the command name may hold spaces and parentheses
    if (paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(paren + 2));
    ProcStat process;
    if (rest >> process.state >> process.ppid >> process.pgrp) result.push_back(process);
  }
  return result;
}

// Whether no process of the group is alive: kill(-pgid, 0) gives ESRCH, or only zombies are left
// (killed grandchildren wait for init to reap them, which in some containers takes seconds).
bool group_gone(pid_t pgid) {
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < deadline) {
    if (::kill(-pgid, 0) != 0 && errno == ESRCH) return true;
    const auto processes = all_processes();
    if (std::none_of(processes.begin(), processes.end(),
                     [&](const ProcStat& p) { return p.pgrp == pgid && p.state != 'Z'; })) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// Zombie children of this process (a child that run_child failed to reap).
int zombie_children() {
  const auto processes = all_processes();
  return static_cast<int>(std::count_if(processes.begin(), processes.end(), [](const ProcStat& p) {
    return p.state == 'Z' && p.ppid == ::getpid();
  }));
}

TEST_F(ProcessTest, RecordsExitCodes) {
  const ChildOutcome ok = run_child(sh("exit 0"));
  EXPECT_EQ(ok.exit_code, 0);
  EXPECT_FALSE(ok.signal);
  EXPECT_FALSE(ok.timed_out);
  EXPECT_FALSE(ok.interrupted);

  const ChildOutcome seven = run_child(sh("exit 7"));
  EXPECT_EQ(seven.exit_code, 7);
  EXPECT_FALSE(seven.signal);
  EXPECT_FALSE(seven.timed_out);
  EXPECT_GE(seven.seconds, 0.0);
  EXPECT_LT(seven.seconds, 5.0);
}

TEST_F(ProcessTest, RecordsSignalDeath) {
  const ChildOutcome outcome = run_child(sh("ulimit -c 0; kill -SEGV $$"));
  EXPECT_EQ(outcome.signal, SIGSEGV);
  EXPECT_FALSE(outcome.exit_code);
  EXPECT_FALSE(outcome.timed_out);
}

TEST_F(ProcessTest, KillsHangingChildAtTimeout) {
  ChildSpec spec = sh("");
  spec.argv = {"/bin/sleep", "30"};
  spec.timeout_s = 0.5;
  const auto start = Clock::now();
  const ChildOutcome outcome = run_child(spec);
  const double wall = seconds_since(start);
  EXPECT_TRUE(outcome.timed_out);
  EXPECT_EQ(outcome.signal, SIGKILL);
  EXPECT_FALSE(outcome.exit_code);
  EXPECT_GE(wall, 0.45);
  EXPECT_LT(wall, 2.0);
  EXPECT_NEAR(outcome.seconds, 0.5, 0.4);
}

TEST_F(ProcessTest, TimeoutKillsGrandchildrenWithTheGroup) {
  // The background sleep holds stderr open and would outlive a kill of the direct child alone.
  const auto start = Clock::now();
  const ChildOutcome outcome = run_child(sh("echo $$ >&2; sleep 30 & sleep 30", 0.5));
  EXPECT_LT(seconds_since(start), 2.0);
  EXPECT_TRUE(outcome.timed_out);
  EXPECT_EQ(outcome.signal, SIGKILL);
  const pid_t pgid = std::stoi(outcome.stderr_tail);
  EXPECT_TRUE(group_gone(pgid)) << "a `sleep 30` of group " << pgid << " survived";
}

TEST_F(ProcessTest, KillsGrandchildrenLeftBehindByAnExitedChild) {
  const auto start = Clock::now();
  const ChildOutcome outcome = run_child(sh("echo $$ >&2; sleep 30 & exit 3", 5));
  EXPECT_LT(seconds_since(start), 2.0);
  EXPECT_FALSE(outcome.timed_out);
  EXPECT_EQ(outcome.exit_code, 3);
  const pid_t pgid = std::stoi(outcome.stderr_tail);
  EXPECT_TRUE(group_gone(pgid)) << "a `sleep 30` of group " << pgid << " survived";
}

TEST_F(ProcessTest, StderrTailHoldsTheLastLines) {
  const ChildSpec spec =
      sh("i=1; while [ $i -le 1000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo done");
  const ChildOutcome outcome = run_child(spec);
  ASSERT_EQ(outcome.exit_code, 0);
  const std::string& tail = outcome.stderr_tail;
  EXPECT_EQ(tail.rfind("line 961\n", 0), 0U) << "the last 40 whole lines: " << tail;
  EXPECT_EQ(std::count(tail.begin(), tail.end(), '\n'), 40);
  EXPECT_TRUE(tail.ends_with("line 1000\n"));
  EXPECT_EQ(tail.find("line 1\n"), std::string::npos);
  // The files hold everything, stdout and stderr apart.
  EXPECT_EQ(slurp(spec.stdout_path), "done\n");
  const std::string all = slurp(spec.stderr_path);
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 1000);
}

TEST_F(ProcessTest, StderrTailIsCappedInBytes) {
  // 100 lines of 100 bytes: the 4 KB cap bites before the 40-line cap.
  const ChildOutcome outcome =
      run_child(sh("i=0; while [ $i -lt 100 ]; do printf '%099d\\n' $i >&2; i=$((i+1)); done"));
  ASSERT_EQ(outcome.exit_code, 0);
  const std::string& tail = outcome.stderr_tail;
  EXPECT_LE(tail.size(), 4096U);
  EXPECT_GT(tail.size(), 3000U);
  EXPECT_EQ(tail.size() % 100, 0U) << "whole lines only";
  EXPECT_TRUE(tail.ends_with("99\n"));
}

TEST_F(ProcessTest, SharedOutputFileKeepsOrder) {
  ChildSpec spec = sh("echo one; echo two >&2; echo three");
  spec.stdout_path = spec.stderr_path;
  const ChildOutcome outcome = run_child(spec);
  EXPECT_EQ(outcome.exit_code, 0);
  EXPECT_EQ(slurp(spec.stderr_path), "one\ntwo\nthree\n");
  EXPECT_EQ(outcome.stderr_tail, "one\ntwo\nthree\n");
}

TEST_F(ProcessTest, EmptyPathsDiscardOutput) {
  ChildSpec spec = sh("echo to-null; echo to-null >&2; exit 4");
  spec.stdout_path.clear();
  spec.stderr_path.clear();
  const ChildOutcome outcome = run_child(spec);
  EXPECT_EQ(outcome.exit_code, 4);
  EXPECT_EQ(outcome.stderr_tail, "");
}

TEST_F(ProcessTest, InheritsEnvironmentPlusExtraEnv) {
  ::setenv("HX_PROCESS_TEST_PARENT", "from parent", 1);
  ::setenv("HX_PROCESS_TEST_OVERRIDE", "old", 1);
  ChildSpec spec =
      sh("echo \"$HX_PROCESS_TEST_PARENT|$HX_PROCESS_TEST_EXTRA|$HX_PROCESS_TEST_OVERRIDE\"");
  spec.extra_env = {{"HX_PROCESS_TEST_EXTRA", "a b=c"}, {"HX_PROCESS_TEST_OVERRIDE", "new"}};
  const ChildOutcome outcome = run_child(spec);
  ::unsetenv("HX_PROCESS_TEST_PARENT");
  ::unsetenv("HX_PROCESS_TEST_OVERRIDE");
  EXPECT_EQ(outcome.exit_code, 0);
  EXPECT_EQ(slurp(spec.stdout_path), "from parent|a b=c|new\n");
}

TEST_F(ProcessTest, MissingExecutableThrowsNamingThePath) {
  const int zombies_before = zombie_children();
  ChildSpec spec = sh("");
  spec.argv = {"/nonexistent/hx-no-such-program", "--flag"};
  try {
    run_child(spec);
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/hx-no-such-program"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(zombie_children(), zombies_before) << "the failed child was not reaped";
}

TEST_F(ProcessTest, UnopenableOutputFileThrowsNamingThePath) {
  ChildSpec spec = sh("exit 0");
  spec.stderr_path = (dir_ / "no-such-dir" / "stderr.txt").string();
  EXPECT_THROW(
      {
        try {
          run_child(spec);
        } catch (const std::runtime_error& error) {
          EXPECT_NE(std::string(error.what()).find(spec.stderr_path), std::string::npos);
          throw;
        }
      },
      std::runtime_error);
}

TEST_F(ProcessTest, RunsConcurrentlyFromSeveralThreads) {
  constexpr int kThreads = 4;
  std::vector<ChildSpec> specs;
  for (int i = 0; i < kThreads; ++i) {
    ChildSpec spec =
        sh("echo " + std::to_string(i) + " >&2; sleep 0.5; exit " + std::to_string(10 + i));
    spec.stderr_path = (dir_ / ("stderr" + std::to_string(i))).string();
    spec.stdout_path = (dir_ / ("stdout" + std::to_string(i))).string();
    specs.push_back(spec);
  }
  // One more thread times out meanwhile, so that kills and normal exits overlap.
  ChildSpec hang = sh("sleep 30", 0.3);
  hang.stderr_path = (dir_ / "stderr_hang").string();

  std::vector<ChildOutcome> outcomes(kThreads);
  ChildOutcome hang_outcome;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { outcomes[i] = run_child(specs[i]); });
  }
  threads.emplace_back([&] { hang_outcome = run_child(hang); });
  for (auto& thread : threads) thread.join();
  const double wall = seconds_since(start);

  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(outcomes[i].exit_code, 10 + i);
    EXPECT_EQ(outcomes[i].stderr_tail, std::to_string(i) + "\n");
    EXPECT_FALSE(outcomes[i].timed_out);
  }
  EXPECT_TRUE(hang_outcome.timed_out);
  EXPECT_LT(wall, 1.5) << "four 0.5 s children should overlap";
}

// Ctrl-C in the parent kills the children's groups. Run in a death-test child process, since
// the interrupt state is process-wide and permanent.
void interrupt_scenario(const std::string& stderr_path) {
  install_interrupt_handler();
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", "echo $$ >&2; sleep 30 & sleep 30"};
  spec.stderr_path = stderr_path;
  spec.timeout_s = 20;
  ChildOutcome outcome;
  const auto start = Clock::now();
  std::thread runner([&] { outcome = run_child(spec); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ::kill(::getpid(), SIGINT);
  runner.join();
  const double wall = seconds_since(start);
  const auto fail = [](const char* what) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    std::_Exit(1);
  };
  if (!interrupted() || interrupt_signal() != SIGINT) fail("interrupted() not set");
  if (!outcome.interrupted) fail("outcome.interrupted not set");
  if (outcome.timed_out) fail("reported as a timeout");
  if (outcome.signal != SIGKILL) fail("not a SIGKILL death");
  if (wall > 2.0) fail("did not return promptly");
  if (!group_gone(std::stoi(outcome.stderr_tail))) fail("the group survived");
  // Once interrupted, nothing new starts.
  const auto again = run_child(spec);
  if (!again.interrupted || again.exit_code || again.signal) fail("a child started after Ctrl-C");
  fs::remove_all(fs::path(stderr_path).parent_path());  // _Exit skips this process's TearDown
  std::_Exit(0);
}

TEST_F(ProcessTest, InterruptKillsChildGroups) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-exec: other tests may have left threads
  const std::string stderr_path = (dir_ / "stderr.txt").string();
  EXPECT_EXIT(interrupt_scenario(stderr_path), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace hx
