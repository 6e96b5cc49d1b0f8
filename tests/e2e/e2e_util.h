#pragma once
// Helpers of the end-to-end tests (tests/e2e, tests/slurm): the real `harness` binary run as a
// child in a fresh temporary directory, its database read back with the SQLite C API.
// Header-only, one inclusion per test executable (definitions live in an anonymous namespace).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness/plan/spec.h"

// NOLINTBEGIN(google-build-namespaces,misc-definitions-in-headers)
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string from_env(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : fallback;
}

// The binaries under test: the build's, or others named by the environment (e.g. copies, so that a
// rebuild going on in the build directory cannot pull them away mid-test). `harness` runs the
// harness-worker that sits next to it.
const std::string kSourceDir = HX_SOURCE_DIR;
const std::string kHarness = from_env("HX_HARNESS_BIN", HX_HARNESS_BIN);
const std::string kWorker = kHarness == HX_HARNESS_BIN
                                ? std::string(HX_WORKER_BIN)
                                : (fs::path(kHarness).parent_path() / "harness-worker").string();

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// ---- Processes ----

// Pids of live processes (other than this one) whose command line mentions `needle`, e.g. a test's
// temporary directory: every harness and harness-worker a test starts has it in its argv.
std::vector<pid_t> processes_mentioning(const std::string& needle) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = std::stoi(name);
    if (pid == ::getpid()) continue;
    std::string cmdline = slurp(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    // A zombie has an empty cmdline; one not yet reaped by init is no longer running.
    if (cmdline.find(needle) != std::string::npos) pids.push_back(pid);
  }
  return pids;
}

// SIGKILLs every process that mentions `needle` and waits (up to 10 s) until they are gone.
// Returns how many there were.
size_t kill_processes_mentioning(const std::string& needle) {
  const auto pids = processes_mentioning(needle);
  for (pid_t pid : pids) ::kill(pid, SIGKILL);
  const auto start = Clock::now();
  while (!processes_mentioning(needle).empty() && seconds_since(start) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pids.size();
}

struct Env {
  std::map<std::string, std::string> set;
};

// Starts `harness ARGS...` with the source root as its current directory, stdout and stderr in
// files, in a session of its own (so a terminal's signals never reach it). The fault-injection
// and worker-override variables of our own environment are removed; `env` adds its own.
pid_t spawn_harness(const std::vector<std::string>& args, const Env& env, const fs::path& out,
                    const fs::path& err) {
  std::vector<std::string> argv = {kHarness};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::setsid();
    const int out_fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err_fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (out_fd < 0 || err_fd < 0 || null_fd < 0 || ::chdir(kSourceDir.c_str()) != 0) _exit(126);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    ::unsetenv("HARNESS_FAULT");
    ::unsetenv("HARNESS_FAULT_MATCH");
    ::unsetenv("HARNESS_WORKER");
    for (const auto& [key, value] : env.set) ::setenv(key.c_str(), value.c_str(), 1);
    ::execv(cargv[0], cargv.data());
    _exit(127);
  }
  return pid;
}

struct Outcome {
  int rc = -1;      // exit code; -1 when killed by a signal
  int signal = 0;   // the signal that killed it
  std::string out;  // stdout
  std::string err;  // stderr
  double seconds = 0;
};

// Waits for pid (with a timeout that kills it) and collects its output.
Outcome wait_harness(pid_t pid, const fs::path& out, const fs::path& err, double timeout_s,
                     Clock::time_point start) {
  Outcome o;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) throw std::runtime_error("waitpid failed");
    if (seconds_since(start) > timeout_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "harness did not finish within " << timeout_s << " s";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  o.seconds = seconds_since(start);
  if (WIFEXITED(status)) o.rc = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) o.signal = WTERMSIG(status);
  o.out = slurp(out);
  o.err = slurp(err);
  return o;
}

// ---- SQLite, read directly ----

class Db {
 public:
  explicit Db(const fs::path& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      const std::string msg = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw std::runtime_error(path.string() + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
  }
  ~Db() { sqlite3_close(db_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;

  using Row = std::vector<std::optional<std::string>>;  // nullopt = NULL

  std::vector<Row> query(const std::string& sql) const {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
      throw std::runtime_error(sql + ": " + sqlite3_errmsg(db_));
    }
    std::vector<Row> rows;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      Row row;
      for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
        if (sqlite3_column_type(stmt, c) == SQLITE_NULL) {
          row.emplace_back(std::nullopt);
        } else {
          row.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt, c)));
        }
      }
      rows.push_back(std::move(row));
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) throw std::runtime_error(sql + ": " + sqlite3_errmsg(db_));
    return rows;
  }

  std::string scalar(const std::string& sql) const {
    const auto rows = query(sql);
    if (rows.size() != 1 || rows[0].size() != 1 || !rows[0][0]) {
      throw std::runtime_error(sql + ": expected one non-NULL value");
    }
    return *rows[0][0];
  }
  long long count(const std::string& sql) const { return std::stoll(scalar(sql)); }

  // run_id -> column value (NULL -> "<null>").
  std::map<std::string, std::string> by_run(const std::string& column) const {
    std::map<std::string, std::string> out;
    for (const auto& row : query("SELECT run_id, " + column + " FROM runs")) {
      out[*row[0]] = row[1] ? *row[1] : "<null>";
    }
    return out;
  }

 private:
  sqlite3* db_ = nullptr;
};

// Data parallelism's equivalence in a database of tests/specs/data_parallel.yaml's matrix: with
// ZeRO 0, 1 and 2, two ranks of batch 1 record one rank of batch 2's loss (1e-5) and tokens (all
// ranks') at every step.
void expect_two_ranks_step_as_one(const Db& db) {
  const auto steps_of = [&](const std::string& where) {
    return db.query(
        "SELECT s.step, s.loss, s.tokens FROM steps s JOIN runs r USING (run_id) WHERE " + where +
        " ORDER BY s.step");
  };
  const auto one = steps_of("json_extract(r.config, '$.world_size') = 1");
  ASSERT_EQ(one.size(), 4U);
  for (const char* zero : {"0", "1", "2"}) {
    const auto two = steps_of(
        "json_extract(r.config, '$.world_size') = 2 AND json_extract(r.config, '$.zero') = " +
        std::string(zero));
    ASSERT_EQ(two.size(), one.size()) << "zero " << zero;
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_NEAR(std::stod(*one[i][1]), std::stod(*two[i][1]), 1e-5)
          << "zero " << zero << ", step " << i;
      EXPECT_EQ(*one[i][2], *two[i][2]) << "tokens of all ranks, zero " << zero << ", step " << i;
    }
  }
}

// ---- Per-test workspace ----

class E2E : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "hx_e2e_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    db_ = dir_ / "results" / "harness.db";
    runs_ = dir_ / "runs";
    ASSERT_TRUE(fs::exists(kHarness)) << kHarness;
    ASSERT_TRUE(fs::exists(kWorker)) << kWorker;
  }

  void TearDown() override {
    // Nothing a test started may outlive it: a harness, or a worker (its own process group).
    const size_t left = kill_processes_mentioning(dir_.string());
    EXPECT_EQ(left, 0U) << "processes of this test were still running at its end";
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Runs `harness ARGS...` to completion.
  Outcome harness(const std::vector<std::string>& args, const Env& env = {},
                  double timeout_s = 120) {
    const int n = ++calls_;
    const fs::path out = dir_ / ("out." + std::to_string(n) + ".txt");
    const fs::path err = dir_ / ("err." + std::to_string(n) + ".txt");
    const auto start = Clock::now();
    const pid_t pid = spawn_harness(args, env, out, err);
    return wait_harness(pid, out, err, timeout_s, start);
  }

  // `harness run SPEC --db DB --runs-dir RUNS EXTRA...`.
  Outcome run(const std::string& spec, const std::vector<std::string>& extra = {},
              const Env& env = {}, double timeout_s = 120) {
    std::vector<std::string> args = {"run",        spec,         "--db",
                                     db_.string(), "--runs-dir", runs_.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return harness(args, env, timeout_s);
  }

  // The run ids `harness expand SPEC --json` lists, with their canonical configs.
  std::map<std::string, std::string> expanded(const std::string& spec) {
    const Outcome o = harness({"expand", spec, "--json"});
    EXPECT_EQ(o.rc, 0) << o.err;
    std::map<std::string, std::string> ids;
    for (const auto& run : Json::parse(o.out)) {
      ids[run.at("run_id").get<std::string>()] = hx::canonical_json(run.at("config"));
    }
    return ids;
  }

  // Per run (<runs>/<run id>/), how many of its attempt directories satisfy `counts`.
  template <typename Predicate>
  std::map<std::string, int> count_attempts(Predicate counts) const {
    std::map<std::string, int> out;
    if (!fs::exists(runs_)) return out;
    for (const auto& run_dir : fs::directory_iterator(runs_)) {
      if (!run_dir.is_directory() || run_dir.path().filename() == "tokens") continue;
      int n = 0;
      for (const auto& attempt : fs::directory_iterator(run_dir.path()))
        if (counts(attempt)) ++n;
      out[run_dir.path().filename().string()] = n;
    }
    return out;
  }

  // How many attempts of each run wrote a result (<runs>/<run id>/<attempt>/result.json).
  std::map<std::string, int> result_files() const {
    return count_attempts([](const fs::directory_entry& attempt) {
      return fs::exists(attempt.path() / "result.json");
    });
  }

  // How many attempt directories each run has (one per start of its worker).
  std::map<std::string, int> attempts() const {
    return count_attempts(
        [](const fs::directory_entry& attempt) { return attempt.is_directory(); });
  }

  fs::path dir_, db_, runs_;
  int calls_ = 0;
};

std::string dump(const Outcome& o) {
  return "rc=" + std::to_string(o.rc) + " signal=" + std::to_string(o.signal) +
         "\n--- stderr ---\n" + o.err + "\n--- stdout ---\n" + o.out;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace
// NOLINTEND(google-build-namespaces,misc-definitions-in-headers)
