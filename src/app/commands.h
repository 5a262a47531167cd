// The CLI's commands. Each registers its subcommand and options on the CLI11 app and returns the
// function that runs it; only src/app knows about flags, environment variables and user files.
//
// Commands that need no tensors are built into the small `fluxtrain` executable; the others live in
// libfluxtrain_engine.so (which links libtorch) and are passed to run() by the engine's entry point.
#pragma once

#include <functional>
#include <vector>

namespace CLI {
class App;
}

namespace fluxtrain::app {

struct Command {
  CLI::App* subcommand;
  std::function<int()> run;
};
using CommandFactory = Command (*)(CLI::App&);

// Torch-free commands.
Command add_inspect_command(CLI::App& app);
Command add_dataset_command(CLI::App& app);
Command add_fetch_command(CLI::App& app);
Command add_config_command(CLI::App& app);
Command add_fetch_models_command(CLI::App& app);
// `train` and `cache` in the torch-free executable: the same options and --help, but only --help-env and
// --print-config run (runs_without_engine() sends nothing else here).
Command add_train_reference_command(CLI::App& app);
Command add_cache_reference_command(CLI::App& app);

// Engine commands (libfluxtrain_engine.so).
Command add_make_tiny_command(CLI::App& app);
Command add_train_command(CLI::App& app);
Command add_cache_command(CLI::App& app);
Command add_sample_command(CLI::App& app);
Command add_merge_command(CLI::App& app);
Command add_demo_command(CLI::App& app);

// The whole CLI: parses argv, runs the command, turns every error into one readable line and an exit
// code (0 ok, 1 error, 2 usage error). `engine_commands` are added after the torch-free ones.
int run(int argc, char** argv, const std::vector<CommandFactory>& engine_commands);

// True when argv asks for something the torch-free executable does itself (a torch-free command,
// --version, or train / cache with --help, --help-env or --print-config), so libtorch is never loaded
// for it.
bool runs_without_engine(int argc, char** argv);

// Loads libfluxtrain_engine.so (beside the executable, in ../lib/fluxtrain, or $FLUXTRAIN_ENGINE) and
// runs its entry point with argv.
int run_engine(int argc, char** argv);

}  // namespace fluxtrain::app
