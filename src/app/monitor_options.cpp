#include "app/monitor_options.h"

namespace fluxtrain::app {

std::vector<Opt<MonitorSettings>> monitor_options(const std::string& group) {
  using S = MonitorSettings;
  return {
      Opt<S>("monitor_port", kInt, group, "7860",
             "The live training page's port (progress, charts, samples, files; save / sample / stop buttons); 0 = no "
             "page. RunPod exposes it as an HTTP port (docs/monitor.md). A busy port is a warning: the training "
             "goes on without a page.")
          .env("MONITOR_PORT")
          .min(0)
          .max(65535)
          .safe_on_resume()
          .to(&S::port),
      Opt<S>("monitor_host", kString, group, "0.0.0.0",
             "The address the page listens on (0.0.0.0: every interface, as a pod's proxy needs; 127.0.0.1: this "
             "machine only).")
          .env("MONITOR_HOST")
          .safe_on_resume()
          .to(&S::host),
      Opt<S>("monitor_token", kString, group, "",
             "The page's access token (as `Authorization: Bearer`, or the ?token= link, which sets a cookie). "
             "Unset: one is generated, printed once at start as the link and kept in OUTPUT_PATH/monitor-token "
             "(mode 0600). Never printed otherwise.")
          .env("MONITOR_TOKEN")
          .secret()
          .safe_on_resume()
          .check([](const OptionValue& v) -> std::string {
            const auto& text = std::get<std::string>(v);
            if (text.empty()) return "";
            if (text.size() < 16) return "shorter than 16 characters (easy to guess)";
            for (const char c : text)
              if (c <= ' ' || c > '~' || c == ';' || c == ',' || c == '"' || c == '\\')
                return "not printable ASCII without spaces, quotes, backslashes, ';' or ',' (it goes into a cookie)";
            return "";
          })
          .allowed("16 or more printable ASCII characters, no spaces, quotes, backslashes, ';' or ','")
          .to(&S::token),
      Opt<S>("runpod_pod_id", kString, group, "",
             "The pod's id (RunPod sets it): the printed link is then the pod's proxy address, "
             "https://{RUNPOD_POD_ID}-{MONITOR_PORT}.proxy.runpod.net/.")
          .env("RUNPOD_POD_ID")
          .no_flag()
          .not_in_file()
          .safe_on_resume()
          .to(&S::runpod_pod_id),
  };
}

const OptionTable& monitor_command_options() {
  using S = MonitorCommandSettings;
  static const OptionTable table = [] {
    std::vector<OptionSpec> specs = {
        Opt<S>("output_path", kPath, "monitor", "", "The run folder (a training's OUTPUT_PATH, or one of its run-*).")
            .positional()
            .required()
            .env("OUTPUT_PATH")
            .path(PathCheck::directory)
            .to(&S::output_path),
    };
    for (const auto& o : monitor_options("monitor")) specs.push_back(lift(&S::monitor, o));
    return OptionTable("monitor", "FLUXTRAIN_MONITOR_", {{"monitor", "The live page"}}, specs);
  }();
  return table;
}

}  // namespace fluxtrain::app
