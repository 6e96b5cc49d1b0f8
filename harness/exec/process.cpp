#include "harness/exec/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/process.hpp>  // the whole header: its parts depend on include order
#include <boost/process/extend.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

namespace hx {
namespace {

namespace bp = boost::process;
using Clock = std::chrono::steady_clock;

constexpr size_t kTailBytes = 4096;
constexpr int kTailLines = 40;
constexpr unsigned kCloseRangeCloexec = 1U << 2;  // CLOSE_RANGE_CLOEXEC (Linux 5.11)

// ---- Interrupt state. The signal handler touches only lock-free atomics and raw syscalls. ----

// Process groups of live children; 0 marks a free slot. Children beyond the capacity are still
// killed on interrupt, by their own wait loop instead of by the handler.
constexpr int kMaxGroups = 256;
std::atomic<pid_t> g_groups[kMaxGroups];
std::atomic<int> g_signal{0};
// A self-pipe that is written once on interrupt and never drained, so it wakes every waiter.
std::atomic<int> g_wake_read{-1};
std::atomic<int> g_wake_write{-1};
static_assert(std::atomic<pid_t>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

void on_interrupt(int sig) {
  const int saved_errno = errno;
  g_signal.store(sig);
  for (auto& slot : g_groups) {
    const pid_t pgid = slot.load();
    if (pgid > 0) ::kill(-pgid, SIGKILL);
  }
  const int fd = g_wake_write.load();
  if (fd >= 0) {
    const char byte = 1;
    [[maybe_unused]] const ssize_t n = ::write(fd, &byte, 1);
  }
  errno = saved_errno;
}

// Holds one slot of g_groups for the lifetime of a child.
class GroupRegistration {
 public:
  explicit GroupRegistration(pid_t pgid) {
    for (int i = 0; i < kMaxGroups; ++i) {
      pid_t expected = 0;
      if (g_groups[i].compare_exchange_strong(expected, pgid)) {
        slot_ = i;
        return;
      }
    }
  }
  ~GroupRegistration() { release(); }
  GroupRegistration(const GroupRegistration&) = delete;
  GroupRegistration& operator=(const GroupRegistration&) = delete;
  void release() {
    if (slot_ >= 0) g_groups[slot_].store(0);
    slot_ = -1;
  }

 private:
  int slot_ = -1;
};

// ---- Small POSIX helpers ----

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Opens path close-on-exec at a descriptor >= 3, so the child's dup2 onto 0/1/2 can never
// overwrite another source descriptor.
UniqueFd open_for_child(const std::string& path, int flags, const char* what) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error("run_child: cannot open " + std::string(what) + " file '" + path +
                             "': " + std::strerror(errno));
  }
  if (fd >= 3) return UniqueFd(fd);
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  const int saved_errno = errno;
  ::close(fd);
  if (high < 0) throw std::system_error(saved_errno, std::generic_category(), "run_child: fcntl");
  return UniqueFd(high);
}

UniqueFd open_output(const std::string& path, const char* what) {
  if (path.empty()) return open_for_child("/dev/null", O_WRONLY, what);
  // Read access too: the parent reads the stderr tail back through the same descriptor.
  return open_for_child(path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND, what);
}

// Returns the last kTailLines lines within the last kTailBytes bytes of the file.
std::string read_tail(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return {};
  const off_t size = st.st_size;
  const off_t start = std::max<off_t>(0, size - static_cast<off_t>(kTailBytes));
  std::string buf(static_cast<size_t>(size - start), '\0');
  size_t got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got, start + off_t(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  // Drop a partial first line (unless it is the only line), then all but the last kTailLines.
  if (start > 0) {
    const size_t nl = buf.find('\n');
    if (nl != std::string::npos && nl + 1 < buf.size()) buf.erase(0, nl + 1);
  }
  size_t pos = buf.size();
  if (pos > 0 && buf[pos - 1] == '\n') --pos;  // the final newline does not start a line
  for (int lines = 0; pos > 0; --pos) {
    if (buf[pos - 1] == '\n' && ++lines == kTailLines) {
      buf.erase(0, pos);
      break;
    }
  }
  return buf;
}

// Whether pid has terminated, without reaping it: while the zombie exists its pid, which is also
// its process group id, cannot be reused, so kill(-pgid) cannot hit an unrelated group.
bool has_exited(pid_t pid, bool block) {
  siginfo_t info{};
  const int flags = WEXITED | WNOWAIT | (block ? 0 : WNOHANG);
  int rc;
  do rc = ::waitid(P_PID, static_cast<id_t>(pid), &info, flags);
  while (rc < 0 && errno == EINTR);
  return rc < 0 || info.si_pid != 0;  // on error stop waiting; the reap reports the error
}

void kill_group(pid_t pgid) noexcept {
  ::kill(-pgid, SIGKILL);  // ESRCH (the group is already gone) is fine
}

enum class WaitEnd { kExited, kTimeout, kInterrupted };

// A pidfd (Linux 5.3) becomes readable when the process exits: waiting on it needs no polling
// and wakes up at once. -1 where pidfds are unavailable.
UniqueFd open_pidfd(pid_t pid) {
  static std::atomic<bool> unavailable{false};
  if (unavailable.load()) return UniqueFd();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd.get() < 0 && (errno == ENOSYS || errno == EPERM)) unavailable.store(true);
  return pidfd;
}

// Blocks until the pidfd or the wake pipe is readable or the deadline passes. True when the
// pidfd is readable, i.e. the child exited.
bool poll_pidfd(int pidfd, int wake_fd, std::optional<Clock::time_point> deadline) {
  pollfd fds[2] = {{pidfd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  timespec ts{};
  timespec* timeout = nullptr;
  if (deadline) {
    const auto left = std::max(Clock::duration::zero(), *deadline - Clock::now());
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    ts = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    timeout = &ts;
  }
  return ::ppoll(fds, wake_fd >= 0 ? 2 : 1, timeout, nullptr) > 0 && fds[0].revents != 0;
}

// Waits for the child to exit (leaving it unreaped), the deadline, or an interrupt. Without a
// pidfd: waitid with naps doubling from 50 us to 2 ms, so short runs are not slowed much.
WaitEnd wait_child(pid_t pid, std::optional<Clock::time_point> deadline,
                   bool interruptible) noexcept {
  const UniqueFd pidfd = open_pidfd(pid);
  const int wake_fd = interruptible ? g_wake_read.load() : -1;
  std::chrono::microseconds nap(50);
  for (;;) {
    if (pidfd.get() >= 0 && poll_pidfd(pidfd.get(), wake_fd, deadline)) return WaitEnd::kExited;
    if (has_exited(pid, /*block=*/false)) return WaitEnd::kExited;
    if (interruptible && interrupted()) return WaitEnd::kInterrupted;
    const auto now = Clock::now();
    if (deadline && now >= *deadline) return WaitEnd::kTimeout;
    if (pidfd.get() < 0) {
      std::this_thread::sleep_for(deadline ? std::min<Clock::duration>(nap, *deadline - now)
                                           : Clock::duration(nap));
      nap = std::min(nap * 2, std::chrono::microseconds(2000));
    }
  }
}

// The parent's environment with extra_env added or replacing, as KEY=VALUE strings.
std::vector<std::string> child_environment(const std::map<std::string, std::string>& extra) {
  for (const auto& [key, value] : extra) {
    if (key.empty() || key.find('=') != std::string::npos) {
      throw std::runtime_error("run_child: invalid environment variable name '" + key + "'");
    }
  }
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    if (extra.count(std::string(text.substr(0, text.find('=')))) == 0) env.emplace_back(text);
  }
  for (const auto& [key, value] : extra) env.push_back(key + "=" + value);
  return env;
}

// Boost.Process extension: the child's setup between fork and exec (async-signal-safe calls
// only: the parent may have other threads), and reaping a child whose exec failed.
struct ChildSetup : bp::extend::handler {
  char** envp;
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
  pid_t parent_pid;
  bool die_with_parent;

  // Our own environment block: bp::environment's lookup in Boost 1.74 reads past the end of
  // shorter variables (heap overflow under ASan).
  template <typename Executor>
  void on_setup(Executor& exec) const {
    exec.env = envp;
  }

  template <typename Executor>
  void on_exec_setup(Executor& /*exec*/) const {
    // Own process group, so that a timeout or Ctrl-C can kill the child with its descendants,
    // and so that the terminal's Ctrl-C reaches only the parent.
    ::setpgid(0, 0);
    // A runner killed with SIGKILL takes its worker along: the run's claim is taken over by the
    // next runner, and an orphan would compete with the rerun for the machine.
    if (die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent_pid) ::_exit(127);  // the parent died before prctl
    }
    ::dup2(stdin_fd, STDIN_FILENO);
    ::dup2(stdout_fd, STDOUT_FILENO);
    ::dup2(stderr_fd, STDERR_FILENO);
    // No stray descriptor of the parent (another thread's files or pipes) survives the exec;
    // Boost's exec-error pipe is close-on-exec already and keeps working until then.
    ::syscall(SYS_close_range, 3U, ~0U, kCloseRangeCloexec);
    // Undo parent state that exec would keep: a blocked signal mask and an ignored SIGPIPE.
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
  }

  template <typename Executor>
  void on_error(Executor& exec, const std::error_code& /*ec*/) const {
    if (exec.pid <= 0) return;  // fork itself failed
    while (::waitpid(exec.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
};

// Serializes spawns: Boost 1.74 sets FD_CLOEXEC on its exec-error pipe after pipe(), so a fork in
// another thread in between could inherit the pipe and stall this spawn until that child exits.
std::mutex g_spawn_mutex;

}  // namespace

ChildOutcome run_child(const ChildSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    throw std::runtime_error("run_child: empty argv");
  }
  ChildOutcome outcome;
  if (interrupted() && !spec.keep_on_interrupt) {
    outcome.interrupted = true;
    return outcome;
  }
  const std::string& path = spec.argv[0];
  const UniqueFd in = open_for_child("/dev/null", O_RDONLY, "stdin");
  const UniqueFd err = open_output(spec.stderr_path, "stderr");
  // One shared file when both paths agree, so that the two streams interleave in order.
  const bool shared = !spec.stdout_path.empty() && spec.stdout_path == spec.stderr_path;
  const UniqueFd out = shared ? UniqueFd() : open_output(spec.stdout_path, "stdout");

  std::vector<std::string> env = child_environment(spec.extra_env);
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (std::string& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);
  const std::vector<std::string> args(spec.argv.begin() + 1, spec.argv.end());
  // keep_on_interrupt children (sbatch) must finish what they started even if the parent dies.
  const ChildSetup setup{{},
                         envp.data(),
                         in.get(),
                         shared ? err.get() : out.get(),
                         err.get(),
                         ::getpid(),
                         !spec.keep_on_interrupt};

  const auto start = Clock::now();
  std::optional<Clock::time_point> deadline;
  if (spec.timeout_s > 0 && std::isfinite(spec.timeout_s)) {
    deadline = start + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(spec.timeout_s));
  }

  std::error_code ec;
  bp::child child;
  std::optional<GroupRegistration> registration;
  {
    const std::lock_guard<std::mutex> lock(g_spawn_mutex);
    // Boost's fork path returns only after the exec succeeded (or failed), so setpgid has run.
    child = bp::child(bp::exe = path, bp::args = args, setup, ec);
    if (!ec && !spec.keep_on_interrupt) registration.emplace(child.id());
  }
  if (ec || !child.valid()) {
    throw std::runtime_error("run_child: cannot execute '" + path + "': " + ec.message());
  }
  const pid_t pgid = child.id();

  const WaitEnd end = wait_child(pgid, deadline, !spec.keep_on_interrupt);
  outcome.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (end != WaitEnd::kExited) {
    kill_group(pgid);
    ::kill(pgid, SIGKILL);  // the child itself, should it have left its group
    has_exited(pgid, /*block=*/true);
  }
  // Again in any case: descendants left behind (e.g. `cmd &`) die with their group.
  kill_group(pgid);
  registration.reset();
  child.wait(ec);
  if (ec) throw std::runtime_error("run_child: waitpid for '" + path + "': " + ec.message());

  const int status = child.native_exit_code();
  if (WIFEXITED(status)) outcome.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) outcome.signal = WTERMSIG(status);
  outcome.timed_out = end == WaitEnd::kTimeout;
  // A child that exited on its own has a genuine result even if Ctrl-C came just after.
  outcome.interrupted = end == WaitEnd::kInterrupted ||
                        (interrupted() && !WIFEXITED(status) && !spec.keep_on_interrupt);
  outcome.stderr_tail = spec.stderr_path.empty() ? std::string() : read_tail(err.get());
  return outcome;
}

void install_interrupt_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
      g_wake_read.store(fds[0]);
      g_wake_write.store(fds[1]);
    }
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    ::sigemptyset(&action.sa_mask);
    ::sigaddset(&action.sa_mask, SIGINT);
    ::sigaddset(&action.sa_mask, SIGTERM);
    // One graceful shutdown; a second Ctrl-C then terminates the parent the default way.
    action.sa_flags = SA_RESTART | SA_RESETHAND;
    ::sigaction(SIGINT, &action, nullptr);
    ::sigaction(SIGTERM, &action, nullptr);
  });
}

bool interrupted() { return g_signal.load() != 0; }

int interrupt_signal() { return g_signal.load(); }

}  // namespace hx
