// The live page's options (MONITOR_PORT, MONITOR_HOST, MONITOR_TOKEN): part of the train table, and the table
// of `fluxtrain monitor OUTPUT_PATH`, which serves the page of a finished or running run without a trainer.
// Torch-free, like every table.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "app/option_builder.h"
#include "app/options.h"

namespace fluxtrain::app {

struct MonitorSettings {
  int64_t port = 7860;           // 0: no page
  std::string host = "0.0.0.0";  // the address it listens on (a pod's proxy reaches the container's)
  std::string token;             // "" = generated (OUTPUT_PATH/monitor-token); a secret
  std::string runpod_pod_id;     // RUNPOD_POD_ID (RunPod sets it): the printed link is the pod's proxy URL
};
std::vector<Opt<MonitorSettings>> monitor_options(const std::string& group = "monitor");

struct MonitorCommandSettings {
  std::string output_path;
  MonitorSettings monitor;
};
const OptionTable& monitor_command_options();

}  // namespace fluxtrain::app

namespace fluxtrain::monitor {
class MonitorServer;
struct MonitorOptions;
}  // namespace fluxtrain::monitor

namespace fluxtrain::app {

// The page's address without its token: https://{RUNPOD_POD_ID}-{port}.proxy.runpod.net/ on RunPod, else
// http://{host}:{port}/ (127.0.0.1 for a page on every interface); "" when the page is off (port 0).
std::string live_page_url(const MonitorSettings& settings, int port);

// Starts the page of `folder` (rank 0 of a training, or `fluxtrain monitor`), or returns null when
// MONITOR_PORT is 0, or, with a warning, when the port cannot be had (a page never stops a training;
// `required` makes that an Error instead, for the monitor command). The token is MONITOR_TOKEN, else the one
// in token_dir/monitor-token, else a new one written there (mode 0600); the ?token= link is printed once, to
// the terminal only (not to logs/fluxtrain.log).
std::unique_ptr<monitor::MonitorServer> start_live_page(const MonitorSettings& settings, const std::string& token_dir,
                                                        monitor::MonitorOptions options, bool required);

}  // namespace fluxtrain::app
