// `fluxtrain monitor OUTPUT_PATH`: the live page of a finished or running run, from the small executable
// (no libtorch); and start_live_page, which `train` uses on rank 0. The page itself is src/monitor.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <thread>

#include "app/commands.h"
#include "app/monitor_options.h"
#include "core/error.h"
#include "core/log.h"
#include "core/stop.h"
#include "core/strings.h"
#include "monitor/run_folder.h"
#include "monitor/server.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

bool usable_token(const std::string& token) {
  if (token.size() < 16) return false;
  for (const char c : token)
    if (c <= ' ' || c > '~' || c == ';' || c == ',' || c == '"' || c == '\\') return false;
  return true;
}

// MONITOR_TOKEN, else the run's token file, else a new token written there (only its owner may read it).
std::pair<std::string, bool> page_token(const MonitorSettings& settings, const fs::path& file) {
  if (!settings.token.empty()) return {settings.token, false};
  {
    std::ifstream in(file);
    std::string kept;
    if (in && std::getline(in, kept) && usable_token(trim(kept))) return {trim(kept), true};
  }
  const std::string token = monitor::generate_token();
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    log::warn("the live page's token cannot be kept in ", file.string(), " (", std::strerror(errno),
              "): a restarted run gets a new one");
    return {token, true};
  }
  ::fchmod(fd, 0600);  // an older file keeps its mode through O_CREAT
  const std::string line = token + "\n";
  const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  ::close(fd);
  if (!written) log::warn("the live page's token could not be written to ", file.string());
  return {token, true};
}

}  // namespace

std::string live_page_url(const MonitorSettings& settings, int port) {
  if (port == 0) return "";
  const std::string host = settings.host == "0.0.0.0" || settings.host == "::" ? "127.0.0.1" : settings.host;
  return settings.runpod_pod_id.empty() ? cat("http://", host, ":", port, "/")
                                        : cat("https://", settings.runpod_pod_id, "-", port, ".proxy.runpod.net/");
}

std::unique_ptr<monitor::MonitorServer> start_live_page(const MonitorSettings& settings, const std::string& token_dir,
                                                        monitor::MonitorOptions options, bool required) {
  if (settings.port == 0) return nullptr;
  const fs::path token_file = fs::path(token_dir) / monitor::kTokenFileName;
  auto [token, generated] = page_token(settings, token_file);
  options.host = settings.host;
  options.port = static_cast<int>(settings.port);
  options.token = token;
  std::unique_ptr<monitor::MonitorServer> page;
  try {
    page = std::make_unique<monitor::MonitorServer>(std::move(options));
  } catch (const Error& e) {
    if (required) throw;
    log::warn(e.what(), "; the training goes on without a page");
    return nullptr;
  }
  const std::string base = live_page_url(settings, page->port());
  if (generated) {
    // The one place the token is shown: the terminal (a pod's log), not logs/fluxtrain.log.
    log::detail::write_terminal(cat("live page: ", base, "?token=", token, "  (the token is kept in ",
                                    token_file.string(), "; MONITOR_TOKEN sets your own)\n"),
                                false);
    log::info("live page on port ", page->port(), " (its link with the token is printed above)");
  } else {
    log::info("live page: ", base, " (token: MONITOR_TOKEN)");
  }
  return page;
}

Command add_monitor_command(CLI::App& app) {
  return add_table_command(app, command_info("monitor"), [](const ResolvedConfig& config) {
    const auto settings = config.bind<MonitorCommandSettings>();
    if (settings.monitor.port == 0)
      fail("MONITOR_PORT is 0, which means no page; `fluxtrain monitor` needs a port (7860 by default)");
    stop::install(stop::grace_seconds());
    monitor::MonitorOptions options;
    options.folder = settings.output_path;
    options.run_info = {{"command", "monitor"}};
    auto page = start_live_page(settings.monitor, settings.output_path, std::move(options), true);
    // Serves until SIGINT / SIGTERM.
    while (!stop::requested()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    page->stop();
    log::info("live page closed (", stop::signal_name(), ")");
    return 0;
  });
}

}  // namespace fluxtrain::app
