#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <new>

#include "app/commands.h"
#include "app/knob_options.h"
#include "core/error.h"
#include "core/log.h"
#include "core/stop.h"
#include "core/strings.h"
#include "core/version.h"

namespace fluxtrain::app {

namespace {

// The first line of a torch error: torch appends a C++ backtrace that means nothing to a user.
std::string first_line(const std::string& text) {
  size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

}  // namespace

int run(int argc, char** argv, const std::vector<CommandFactory>& engine_commands) {
  CLI::App app{"fluxtrain: a native LoRA trainer for Flux.1 models", "fluxtrain"};
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", std::string(kVersion));
  // The program's own options (log level, progress interval, assets), before the command.
  CliBinding process(app, process_options());
  bool want_help_env = false;
  std::string format = "text";
  app.add_flag("--help-env", want_help_env,
               "Print the reference of the program's own variables (each command has its own)");
  app.add_option("--format", format, "--help-env format: text or markdown")->capture_default_str();

  std::vector<Command> commands = {add_inspect_command(app), add_dataset_command(app), add_fetch_command(app),
                                   add_fetch_models_command(app), add_config_command(app),
                                   add_monitor_command(app)};
  for (CommandFactory factory : engine_commands) commands.push_back(factory(app));

  // An unknown command gets a hint rather than CLI11's "A subcommand is required".
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (program_flag_takes_value(arg)) ++i;
    if (arg.empty() || arg[0] == '-') continue;
    std::vector<std::string> names;
    for (const Command& command : commands) names.push_back(command.subcommand->get_name());
    if (std::find(names.begin(), names.end(), arg) == names.end()) {
      std::string hint = closest_match(arg, names);
      log::error("unknown command '", arg, "'", hint.empty() ? "" : "; did you mean '" + hint + "'?",
                 " (commands: ", join(names), "; see fluxtrain --help)");
      return 2;
    }
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the message (or the help) and gives its own code per kind of mistake (105..109);
    // every usage error exits 2, as documented.
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    apply_process_settings(process.values(), environment());
    for (const Command& command : commands) {
      if (command.subcommand->parsed()) return command.run();
    }
    if (want_help_env) {
      std::cout << help_env(process_options(), format);
      return 0;
    }
    log::error("no command given (see fluxtrain --help)");
    return 2;
  } catch (const stop::Stopped& stopped) {
    // A requested stop before training began (core/stop.h): nothing half-written is left where a complete
    // file is expected, so a restart carries on from what is there. Not an error: exit 0.
    log::info("stopped during ", stopped.phase(), " on ", stop::signal_name(), " (",
              static_cast<int>(stop::seconds_since_request() * 1000), " ms after it); a restart carries on");
    return 0;
  } catch (const Error& e) {
    log::error(e.what());
  } catch (const std::bad_alloc&) {
    log::error("out of memory: use a smaller batch size or resolution, or a machine with more memory");
  } catch (const std::exception& e) {
    // Torch errors (c10::Error) append a C++ backtrace that means nothing to a user.
    log::error(first_line(e.what()));
  }
  return 1;
}

}  // namespace fluxtrain::app
