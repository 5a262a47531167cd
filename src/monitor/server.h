// The live training page (docs/monitor.md): an HTTP server (cpp-httplib, Debian's libcpp-httplib-dev) on
// MONITOR_PORT that shows a run folder — progress, loss / lr / optimizer charts, validation loss, memory, the
// samples per prompt across checkpoints, the resolved config, the dataset plan, the files — and, in a training,
// takes the save now / sample now / stop buttons. Torch-free: `fluxtrain monitor OUTPUT_PATH` serves a
// finished or running run from the small executable.
//
// What it guarantees:
//   - every request but the 401 page needs the token (Authorization: Bearer, the cookie that the printed
//     ?token= link sets, or ?token= itself), compared in constant time;
//   - every URL the page uses is relative (a path prefix, a TLS-terminating proxy), every asset is inside
//     the binary (no network);
//   - files are served from the run folder only (run_folder.h resolve_in_folder), no listings;
//   - bounded: request bodies (kMaxBody), worker threads (a fixed pool whose queue blocks the accept loop:
//     the kernel's backlog bounds the rest), live streams (kMaxStreams, so that page loads always get a
//     thread), read / write timeouts;
//   - the trainer is never slowed: its listener copies one small JSON under a mutex and returns; the server
//     reads the files on its own threads.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>

#include "train/run_hooks.h"

namespace fluxtrain::monitor {

struct MonitorOptions {
  std::string host = "0.0.0.0";
  int port = 7860;
  std::string token;                       // required (the app generates one when MONITOR_TOKEN is unset)
  std::filesystem::path folder;            // the run folder (OUTPUT_PATH or its run-*)
  train::RunRequests* requests = nullptr;  // null: no trainer here (the buttons answer 409)
  // What the page shows beside the files: "images_per_step" (the global batch), "command", ...
  nlohmann::json run_info = nlohmann::json::object();
  // The dataset plan as text (the train command's); "" = none.
  std::string dataset_plan;
  double poll_seconds = 1.0;  // the files are looked at this often
};

inline constexpr size_t kMaxBody = 16 * 1024;
inline constexpr int kWorkerThreads = 8;
inline constexpr int kMaxStreams = 4;

class MonitorServer {
 public:
  // Binds the port (an Error naming it when busy or not allowed) and starts serving.
  explicit MonitorServer(MonitorOptions options);
  ~MonitorServer();
  MonitorServer(const MonitorServer&) = delete;
  MonitorServer& operator=(const MonitorServer&) = delete;

  int port() const;
  // The trainer's listener (train/run_hooks.h): keeps the newest progress, wakes the page's streams.
  train::RunListener listener();
  // Stops serving (open streams end); the destructor does it too.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A random token: 32 hex digits from the system's random source.
std::string generate_token();
// True when `given` equals `expected`, in a time that does not depend on where they differ.
bool token_matches(const std::string& given, const std::string& expected);

}  // namespace fluxtrain::monitor
