// Overhead of run_child (spawn + wait + stderr tail) on /bin/true, against bare spawns of the
// same program: run_child's own cost is the difference. Real time, since the work is in children.
#include <benchmark/benchmark.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "harness/exec/process.h"

namespace {

namespace fs = std::filesystem;

void BM_RunChildTrue(benchmark::State& state) {
  const fs::path dir = fs::temp_directory_path() / ("hx_bench_process_" + std::to_string(getpid()));
  fs::create_directories(dir);
  hx::ChildSpec spec;
  spec.argv = {"/bin/true"};
  spec.extra_env = {{"HX_BENCH", "1"}};
  spec.stderr_path = (dir / "stderr.txt").string();
  spec.stdout_path = (dir / "stdout.txt").string();
  spec.timeout_s = 10;
  for (auto _ : state) {
    const hx::ChildOutcome outcome = hx::run_child(spec);
    if (outcome.exit_code != 0) state.SkipWithError("/bin/true failed");
    benchmark::DoNotOptimize(outcome);
  }
  fs::remove_all(dir);
}
BENCHMARK(BM_RunChildTrue)->UseRealTime()->Unit(benchmark::kMicrosecond);

// The floor: posix_spawn (vfork-like) + blocking waitpid.
void BM_PosixSpawnTrue(benchmark::State& state) {
  char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
  for (auto _ : state) {
    pid_t pid = 0;
    if (posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) {
      state.SkipWithError("posix_spawn failed");
      break;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    benchmark::DoNotOptimize(status);
  }
}
BENCHMARK(BM_PosixSpawnTrue)->UseRealTime()->Unit(benchmark::kMicrosecond);

// What Boost.Process does underneath: fork + execve + blocking waitpid.
void BM_ForkExecTrue(benchmark::State& state) {
  char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
  for (auto _ : state) {
    const pid_t pid = fork();
    if (pid == 0) {
      execve("/bin/true", argv, environ);
      _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    benchmark::DoNotOptimize(status);
  }
}
BENCHMARK(BM_ForkExecTrue)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
