#include "dist/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <sched.h>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::dist {
namespace {

volatile std::sig_atomic_t g_signal = 0;
void on_signal(int signal) { g_signal = signal; }

// This program's own command line, as the kernel keeps it.
std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::string> args;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\0') {
      args.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  if (args.empty()) fail("--nproc: cannot read this program's command line from /proc/self/cmdline");
  return args;
}

int free_port(const std::string& address) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("--nproc: no socket for a free port: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1) addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    fail("--nproc: no free port on ", address, " for the ranks' rendezvous (", why, "); set MASTER_PORT");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return cat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int s = WTERMSIG(status);
    return cat("was killed by signal ", s, " (", sigabbrev_np(s) ? cat("SIG", sigabbrev_np(s)) : std::string("?"), ")");
  }
  return cat("ended with wait status ", status);
}

// The CPUs a container's CPU quota allows (cgroup v2 cpu.max, else v1 cpu.cfs_quota_us / cpu.cfs_period_us),
// rounded up; 0 when there is no quota. A pod limited by quota (docker --cpus) still sees every CPU of the host
// in its affinity mask.
int quota_cpus() {
  double quota = 0, period = 0;
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string max;
  if (v2 >> max >> period) {
    if (max == "max") return 0;
    quota = std::atof(max.c_str());
  } else {
    std::ifstream q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(q >> quota) || !(p >> period)) return 0;
  }
  return quota > 0 && period > 0 ? static_cast<int>(std::ceil(quota / period)) : 0;
}

// The CPU threads each of `ranks` ranks gets: this process's CPUs (its affinity mask, and a container's CPU
// quota) shared evenly, at least one. Ranks that each start a thread per CPU oversubscribe the machine N times
// over, and OpenMP's spinning workers then wait on each other (2 ranks on 2 cores: steps 4x slower).
int threads_per_rank(int ranks) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
  if (cpus <= 0) cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (const int quota = quota_cpus(); quota > 0) cpus = std::min(cpus, quota);
  return std::max(1, cpus / std::max(1, ranks));
}

}  // namespace

int launch_local_ranks(const LaunchOptions& options) {
  const std::vector<std::string> args = own_command_line();
  const int port = options.master_port > 0 ? options.master_port : free_port(options.master_addr);
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  const pid_t launcher = getpid();
  std::vector<pid_t> pids(static_cast<size_t>(options.processes), -1);
  const bool shared = options.cpu_threads <= 0;
  const std::string threads = std::to_string(shared ? threads_per_rank(options.processes) : options.cpu_threads);
  log::info("starting ", options.processes, " ranks on this machine (rendezvous at ", options.master_addr, ":", port,
            "; OMP_NUM_THREADS=", threads, " each",
            shared ? " unless the environment sets it, num_cpu_threads_per_process sets another" : "",
            "); rank 0 writes the run's files");
  for (int r = 0; r < options.processes; ++r) {
    const pid_t pid = fork();
    if (pid < 0) fail("--nproc: cannot start rank ", r, ": ", std::strerror(errno));
    if (pid == 0) {
      // The rank dies with the launcher, even a SIGKILLed one.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != launcher) _exit(1);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(options.processes).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(options.processes).c_str(), 1);
      setenv("GROUP_RANK", "0", 1);
      setenv("MASTER_ADDR", options.master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      setenv("OMP_NUM_THREADS", threads.c_str(), shared ? 0 : 1);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "error: --nproc: cannot start rank %d (%s)\n", r, std::strerror(errno));
      _exit(127);
    }
    pids[static_cast<size_t>(r)] = pid;
  }

  int running = options.processes;
  int exit_status = 0;
  int forwarded = 0;
  std::optional<std::chrono::steady_clock::time_point> failed_at;
  const double patience = std::min(options.collective_timeout, 60.0) + 5;
  while (running > 0) {
    if (g_signal != 0 && g_signal != forwarded) {
      forwarded = g_signal;
      for (pid_t pid : pids)
        if (pid > 0) kill(pid, forwarded);
    }
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] != pid) continue;
        pids[r] = -1;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok) {
          if (!failed_at) {
            log::error("rank ", r, " (pid ", pid, ") ", describe_status(status),
                       running > 0 ? "; the other ranks are stopped" : "");
            failed_at = std::chrono::steady_clock::now();
          } else {
            log::warn("rank ", r, " (pid ", pid, ") ", describe_status(status));
          }
          if (exit_status == 0) exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        }
      }
      continue;
    }
    if (failed_at && std::chrono::duration<double>(std::chrono::steady_clock::now() - *failed_at).count() > patience) {
      for (size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] > 0) {
          log::warn("rank ", r, " (pid ", pids[r], ") did not stop within ", patience, " s of the failure: killed");
          kill(pids[r], SIGKILL);
        }
      }
      failed_at = std::chrono::steady_clock::now() + std::chrono::hours(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return exit_status;
}

}  // namespace fluxtrain::dist
