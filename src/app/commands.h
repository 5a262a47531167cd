// The CLI's commands. Every command is declared by a CommandInfo (name, description, option table,
// cross-option checks) and runs from its resolved options; only src/app knows about flags, environment
// variables and user files.
//
// Commands that need no tensors are built into the small `fluxtrain` executable; the others live in
// libfluxtrain_engine.so (which links libtorch) and are passed to run() by the engine's entry point. The
// option tables are torch-free, so the small executable answers --help, --help-env and --print-config of
// every command itself.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "app/options.h"

namespace CLI {
class App;
}

namespace fluxtrain::app {

struct Command {
  CLI::App* subcommand;
  std::function<int()> run;
};
using CommandFactory = std::function<Command(CLI::App&)>;

struct CommandInfo {
  const char* name;
  const char* help;
  const OptionTable& (*options)();
  // Checks across options or against files: throws one Error for every problem, returns warnings.
  std::vector<std::string> (*check)(const ResolvedConfig&) = nullptr;
  bool needs_engine = true;  // the command itself runs in libfluxtrain_engine.so
  // Lines --print-config (text) adds after the options: what the options resolve to beyond themselves
  // (the memory planner's automatic choices). Torch-free.
  std::string (*annotate)(const ResolvedConfig&) = nullptr;
};

// Every command, in the order `fluxtrain --help` lists them.
const std::vector<CommandInfo>& command_infos();
const CommandInfo& command_info(const std::string& name);

// The command-line side of a command's table: every option, plus --print-config, --help-env and --format.
struct TableCli {
  const CommandInfo* info = nullptr;
  std::unique_ptr<CliBinding> binding;
  bool print_config = false;
  bool help_env = false;
  std::string format = "text";
};
std::shared_ptr<TableCli> add_table_cli(CLI::App& subcommand, const CommandInfo& info);

// Resolves the table from the parsed command line and `env` (flags > environment > --config file >
// defaults), logs the resolution warnings, runs the command's checks (Error on any problem) and logs
// their warnings.
ResolvedConfig resolve_command(const TableCli& cli, const EnvMap& env);

// Prints what --help-env or --print-config ask for and returns true; false when neither was given.
bool answer_reference(const TableCli& cli);

using CommandRunner = std::function<int(const ResolvedConfig&)>;
// Registers `info` with its table; the command runs `runner` with the resolved options after answering
// --help-env / --print-config. An empty runner registers the reference only (the small executable's
// view of an engine command; runs_without_engine() sends it nothing else).
Command add_table_command(CLI::App& app, const CommandInfo& info, CommandRunner runner);

// Torch-free commands.
Command add_inspect_command(CLI::App& app);
Command add_dataset_command(CLI::App& app);
Command add_fetch_command(CLI::App& app);
Command add_config_command(CLI::App& app);
Command add_fetch_models_command(CLI::App& app);
Command add_monitor_command(CLI::App& app);

// Engine commands (libfluxtrain_engine.so).
Command add_make_tiny_command(CLI::App& app);
Command add_train_command(CLI::App& app);
Command add_cache_command(CLI::App& app);
Command add_plan_command(CLI::App& app);
Command add_sample_command(CLI::App& app);
Command add_merge_command(CLI::App& app);
Command add_demo_command(CLI::App& app);

// The engine commands as the small executable registers them: options and references only.
std::vector<CommandFactory> engine_command_references();

// The whole CLI: parses argv, runs the command, turns every error into one readable line and an exit
// code (0 ok, 1 error, 2 usage error). `engine_commands` are added after the torch-free ones.
int run(int argc, char** argv, const std::vector<CommandFactory>& engine_commands);

// Whether a flag given before the command (the program's own options, --format) takes the next argument.
bool program_flag_takes_value(const std::string& flag);

// True when argv asks for something the torch-free executable does itself (a torch-free command,
// --version, or any command with --help, --help-env or --print-config), so libtorch is never loaded
// for it.
bool runs_without_engine(int argc, char** argv);

// Loads libfluxtrain_engine.so (beside the executable, in ../lib/fluxtrain, or $FLUXTRAIN_ENGINE) and
// runs its entry point with argv.
int run_engine(int argc, char** argv);

}  // namespace fluxtrain::app
