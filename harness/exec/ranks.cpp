#include "harness/exec/ranks.h"

#include <sys/wait.h>
#include <unistd.h>

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

int launch_ranks(char** argv, int world_size, const std::string& result_path) {
  const std::string store = result_path + ".store";
  std::filesystem::remove(store);  // a FileStore must start empty
  const std::string world = std::to_string(world_size);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world_size; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::setenv(kRankEnv, std::to_string(rank).c_str(), 1);
      ::setenv(kWorldSizeEnv, world.c_str(), 1);
      ::setenv(kStoreEnv, store.c_str(), 1);
      ::execv("/proc/self/exe", argv);
      std::fprintf(stderr, "rank %d: exec failed: %s\n", rank, std::strerror(errno));
      ::_exit(kExitRunError);
    }
    pids.push_back(pid);
  }
  std::vector<int> statuses(pids.size(), 0);
  std::vector<bool> killed(pids.size(), false);  // by us: not a cause
  size_t running = pids.size();
  // After the first failure the others get a moment to end by themselves (a rank that ran out of
  // memory may still be writing its result while its peer's collective already failed); then
  // they are killed: they would wait for the failed rank until the timeout.
  std::optional<std::chrono::steady_clock::time_point> kill_at;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, kill_at ? WNOHANG : 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pid == 0) {  // WNOHANG, nobody ended yet
      if (std::chrono::steady_clock::now() >= *kill_at) {
        for (size_t other = 0; other < pids.size(); ++other) {
          if (pids[other] > 0 && !killed[other]) {
            ::kill(pids[other], SIGKILL);
            killed[other] = true;
          }
        }
        kill_at = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    size_t rank = 0;
    while (rank < pids.size() && pids[rank] != pid) ++rank;
    if (rank == pids.size()) continue;
    statuses[rank] = status;
    pids[rank] = 0;
    --running;
    const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == kExitOk);
    if (failed && !kill_at) kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  }
  // The cause: the most severe failure, the lowest rank among equals; the ranks we killed are
  // none.
  int cause = -1;
  for (size_t rank = 0; rank < statuses.size(); ++rank) {
    const int status = statuses[rank];
    if (killed[rank] || (WIFEXITED(status) && WEXITSTATUS(status) == kExitOk)) continue;
    std::fprintf(stderr, "rank %zu: %s %d\n", rank,
                 WIFSIGNALED(status) ? "killed by signal" : "exited with code",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    if (cause < 0 || severity(status) > severity(statuses[static_cast<size_t>(cause)])) {
      cause = static_cast<int>(rank);
    }
  }
  std::filesystem::remove(store);
  for (int rank = 1; rank < world_size; ++rank)
    if (rank != cause) std::filesystem::remove(rank_result_path(result_path, rank));
  if (cause < 0) return kExitOk;
  const int status = statuses[static_cast<size_t>(cause)];
  if (cause > 0) {
    const auto from = rank_result_path(result_path, cause);
    std::error_code ec;
    if (std::filesystem::exists(from)) {
      std::filesystem::rename(from, result_path, ec);
    } else {
      std::filesystem::remove(result_path, ec);  // rank 0's error is the consequence
    }
  }
  if (WIFSIGNALED(status)) {
    std::filesystem::remove(result_path);
    std::signal(WTERMSIG(status), SIG_DFL);
    ::raise(WTERMSIG(status));
  }
  return WEXITSTATUS(status);
}

}  // namespace hx
