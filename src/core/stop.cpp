#include "core/stop.h"

#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::stop {
namespace {

std::atomic<int> g_signal{0};
std::atomic<int64_t> g_requested_ns{0};  // CLOCK_MONOTONIC when the stop was requested
std::atomic<double> g_grace{5.0};
std::atomic<int> g_deferrals{0};

std::mutex g_pause_mutex;
std::string g_pause_phase;  // the test hook's phase ("" = off)
bool g_paused = false;      // the hook pauses once

int64_t monotonic_ns() {
  struct timespec now {};
  ::clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// Only async-signal-safe work: two lock-free atomics and clock_gettime.
extern "C" void on_stop_signal(int signal) {
  int expected = 0;
  if (g_signal.compare_exchange_strong(expected, signal)) g_requested_ns.store(monotonic_ns());
}

}  // namespace

void install(double grace) {
  g_grace.store(grace);
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and writes carry on; the poll points look at the flag
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

double grace_seconds() {
  return g_grace.load();
}

bool requested() {
  return g_signal.load(std::memory_order_relaxed) != 0;
}

int signal_number() {
  return g_signal.load();
}

std::string signal_name() {
  const int signal = g_signal.load();
  if (signal == SIGTERM) return "SIGTERM";
  if (signal == SIGINT) return "SIGINT";
  return cat("signal ", signal);
}

double seconds_since_request() {
  if (!requested()) return 0;
  return static_cast<double>(monotonic_ns() - g_requested_ns.load()) / 1e9;
}

double grace_left() {
  if (!requested()) return std::numeric_limits<double>::infinity();
  return grace_seconds() - seconds_since_request();
}

void request(int signal) {
  on_stop_signal(signal);
}

void check(std::string_view phase) {
  pause_point(phase);
  if (requested() && g_deferrals.load() == 0) throw Stopped(std::string(phase));
}

Deferral::Deferral() {
  ++g_deferrals;
}
Deferral::~Deferral() {
  --g_deferrals;
}

void set_test_pause(std::string phase) {
  std::lock_guard<std::mutex> lock(g_pause_mutex);
  g_pause_phase = std::move(phase);
  g_paused = false;
}

void pause_point(std::string_view phase) {
  {
    std::lock_guard<std::mutex> lock(g_pause_mutex);
    if (g_paused || g_pause_phase.empty() || g_pause_phase != phase) return;
    g_paused = true;
  }
  log::info("test hook: paused in ", phase, " until a stop signal");
  const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  while (!requested() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace fluxtrain::stop
