#include "core/log.h"
#include "core/log_prefix.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <vector>

namespace fluxtrain::log {
namespace {

std::atomic<Level> g_level{Level::info};
std::mutex g_mutex;
std::vector<std::unique_ptr<std::ofstream>> g_files;
detail::StatusLine* g_status = nullptr;
std::string g_prefix;  // set once, before any other thread logs
bool g_status_visible = false;

const char* level_name(Level level) {
  switch (level) {
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warning";
    case Level::error: return "error";
    case Level::quiet: return "quiet";
  }
  return "?";
}

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%H:%M:%S", &tm);
  return buffer;
}

bool stderr_is_tty() {
  static const bool tty = isatty(STDERR_FILENO) == 1;
  return tty;
}

}  // namespace

void set_level(Level level) { g_level.store(level); }
Level level() { return g_level.load(); }

void add_file_sink(const std::string& path) {
  auto file = std::make_unique<std::ofstream>(path, std::ios::app);
  if (!*file) fail("cannot open log file ", path, " for appending: check the folder exists and is writable");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_files.push_back(std::move(file));
}

void set_prefix(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_prefix = prefix;
}

void write(Level level, const std::string& message) {
  std::string line = g_prefix + (level == Level::info ? message : std::string(level_name(level)) + ": " + message);
  detail::write_terminal(line + "\n", false);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_files.empty()) {
    std::string stamped = timestamp() + " " + level_name(level) + " " + g_prefix + message + "\n";
    for (auto& file : g_files) {
      *file << stamped;
      file->flush();
    }
  }
}

namespace detail {

void set_status_line(StatusLine* line) {
  // A bar left on screen is cleared by the next line written (the reporter's closing line).
  std::lock_guard<std::mutex> lock(g_mutex);
  g_status = line;
}

void write_terminal(const std::string& text, bool is_status) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (is_status) {
    // A status line rewrites itself in place on a terminal.
    std::fputs("\r\033[K", stderr);
    std::fputs(text.c_str(), stderr);
    g_status_visible = true;
    std::fflush(stderr);
    return;
  }
  if (g_status_visible && stderr_is_tty()) {
    std::fputs("\r\033[K", stderr);
    g_status_visible = false;
  }
  std::fputs(text.c_str(), stderr);
  if (g_status != nullptr && stderr_is_tty()) {
    g_status->redraw_locked();
    g_status_visible = true;
  }
  std::fflush(stderr);
}

}  // namespace detail
}  // namespace fluxtrain::log
