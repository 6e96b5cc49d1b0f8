#include "harness/exec/ranks.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/store/json_io.h"

namespace hx {
namespace {

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

// Which failure explains the run: a rank that died of a signal (crash, OOM killer), then one
// that ran out of memory, then any other exit.
int severity(int status) {
  // SIGPIPE: a write to a peer that is gone (a consequence, below any cause).
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGPIPE) return 0;
  if (WIFSIGNALED(status)) return 3;
  if (WIFEXITED(status) && WEXITSTATUS(status) == kExitOom) return 2;
  return 1;
}

}  // namespace

std::string rank_result_path(const std::string& result_path, int rank) {
  return rank == 0 ? result_path : result_path + ".rank" + std::to_string(rank);
}

RankIdentity rank_identity(const std::string& result_path) {
  RankIdentity id;
  if (const char* rank = env(kRankEnv)) {
    id.rank = std::atoi(rank);
    const char* world = env(kWorldSizeEnv);
    id.world_size = world != nullptr ? std::atoi(world) : 1;
    const char* store = env(kStoreEnv);
    id.store_path = store != nullptr ? store : result_path + ".store";
  } else if (env(kSrunRanksEnv) != nullptr) {
    const char* procid = env("SLURM_PROCID");
    const char* tasks = env("SLURM_NTASKS");
    id.rank = procid != nullptr ? std::atoi(procid) : 0;
    id.world_size = tasks != nullptr ? std::atoi(tasks) : 1;
    id.store_path = result_path + ".store";
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    id.host = host;
    id.slurm_task = true;
  }
  return id;
}

bool must_launch_ranks(int world_size) {
  return world_size > 1 && env(kRankEnv) == nullptr && env(kSrunRanksEnv) == nullptr;
}

void adopt_rank_results(const std::string& result_path, int world_size) {
  auto status_of = [](const std::string& path) -> std::string {
    try {
      return nlohmann::json::parse(read_file(path)).value("status", std::string());
    } catch (const std::exception&) {
      return "";
    }
  };
  auto severity = [](const std::string& status) { return status == "oom" ? 2 : 1; };
  std::string cause;
  int worst = 0;
  if (std::filesystem::exists(result_path)) {
    const std::string status = status_of(result_path);
    if (status != "ok") worst = severity(status);
    if (status != "ok") cause = result_path;
  }
  for (int rank = 1; rank < world_size; ++rank) {
    const std::string path = rank_result_path(result_path, rank);
    if (!std::filesystem::exists(path)) continue;
    if (severity(status_of(path)) > worst) {
      worst = severity(status_of(path));
      cause = path;
    }
  }
  std::error_code ec;
  if (!cause.empty() && cause != result_path) std::filesystem::rename(cause, result_path, ec);
  for (int rank = 1; rank < world_size; ++rank)
    std::filesystem::remove(rank_result_path(result_path, rank), ec);
  std::filesystem::remove(result_path + ".store", ec);
}

namespace {

bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == kExitOk; }

// Forks `world_size` copies of this executable with `argv`, each told its rank.
std::vector<pid_t> spawn_ranks(char** argv, int world_size, const std::string& store) {
  const std::string world = std::to_string(world_size);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world_size; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      // A rank writing to a peer that died gets an error (EPIPE), not a deadly SIGPIPE: the
      // peer's own failure is the run's cause. SIG_IGN survives exec.
      std::signal(SIGPIPE, SIG_IGN);
      ::setenv(kRankEnv, std::to_string(rank).c_str(), 1);
      ::setenv(kWorldSizeEnv, world.c_str(), 1);
      ::setenv(kStoreEnv, store.c_str(), 1);
      ::execv("/proc/self/exe", argv);
      std::fprintf(stderr, "rank %d: exec failed: %s\n", rank, std::strerror(errno));
      ::_exit(kExitRunError);
    }
    pids.push_back(pid);
  }
  return pids;
}

struct RankEnds {
  std::vector<int> statuses;  // waitpid's, by rank
  std::vector<bool> killed;   // by us: not a cause
};

// SIGKILL to every rank still running (pid > 0) that was not killed yet.
void kill_running(const std::vector<pid_t>& pids, std::vector<bool>& killed) {
  for (size_t rank = 0; rank < pids.size(); ++rank) {
    if (pids[rank] > 0 && !killed[rank]) {
      ::kill(pids[rank], SIGKILL);
      killed[rank] = true;
    }
  }
}

// Waits for every rank. After the first failure the others get a moment to end by themselves (a
// rank that ran out of memory may still be writing its result while its peer's collective already
// failed); then they are killed: they would wait for the failed rank until the timeout.
RankEnds wait_ranks(std::vector<pid_t> pids) {
  RankEnds ends{std::vector<int>(pids.size(), 0), std::vector<bool>(pids.size(), false)};
  size_t running = pids.size();
  std::optional<std::chrono::steady_clock::time_point> kill_at;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, kill_at ? WNOHANG : 0);
    if (pid < 0 && errno != EINTR) break;
    if (pid <= 0) {  // interrupted, or (WNOHANG) nobody ended yet
      if (kill_at && std::chrono::steady_clock::now() >= *kill_at) kill_running(pids, ends.killed);
      if (kill_at) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    const auto rank = static_cast<size_t>(std::find(pids.begin(), pids.end(), pid) - pids.begin());
    if (rank == pids.size()) continue;
    ends.statuses[rank] = status;
    pids[rank] = 0;
    --running;
    if (!exited_ok(status) && !kill_at)
      kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  }
  return ends;
}

// The cause: the most severe failure, the lowest rank among equals (-1: none); each failed rank is
// named on stderr.
int cause_of(const RankEnds& ends) {
  int cause = -1;
  for (size_t rank = 0; rank < ends.statuses.size(); ++rank) {
    const int status = ends.statuses[rank];
    if (ends.killed[rank] || exited_ok(status)) continue;
    std::fprintf(stderr, "rank %zu: %s %d\n", rank,
                 WIFSIGNALED(status) ? "killed by signal" : "exited with code",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    if (cause < 0 || severity(status) > severity(ends.statuses[static_cast<size_t>(cause)]))
      cause = static_cast<int>(rank);
  }
  return cause;
}

}  // namespace

int launch_ranks(char** argv, int world_size, const std::string& result_path) {
  const std::string store = result_path + ".store";
  std::filesystem::remove(store);  // a FileStore must start empty
  const RankEnds ends = wait_ranks(spawn_ranks(argv, world_size, store));
  const int cause = cause_of(ends);
  std::filesystem::remove(store);
  for (int rank = 1; rank < world_size; ++rank)
    if (rank != cause) std::filesystem::remove(rank_result_path(result_path, rank));
  if (cause < 0) return kExitOk;
  const int status = ends.statuses[static_cast<size_t>(cause)];
  std::error_code ec;
  if (cause > 0 && std::filesystem::exists(rank_result_path(result_path, cause))) {
    std::filesystem::rename(rank_result_path(result_path, cause), result_path, ec);
  } else if (cause > 0) {
    std::filesystem::remove(result_path, ec);  // rank 0's error is the consequence
  }
  if (WIFSIGNALED(status)) {
    std::filesystem::remove(result_path, ec);
    std::signal(WTERMSIG(status), SIG_DFL);
    ::raise(WTERMSIG(status));
  }
  return WEXITSTATUS(status);
}

}  // namespace hx
