// `fluxtrain config`: resolves the train options from the command line, the environment and a TOML
// file exactly as `fluxtrain train` will, checks them (values, combinations, files) and prints the
// result, without loading a model. Also prints the environment-variable reference (--help-env).
//
// Also the torch-free side of `train` and `cache`: their --help, --help-env and --print-config are
// answered here (engine_loader.cpp routes them), so a reference or a config check never loads libtorch.
#include <CLI/CLI.hpp>

#include <iostream>

#include "app/commands.h"
#include "app/train_options.h"
#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::app {
namespace {

// --help-env or --print-config of a train-option command; false when neither was asked.
bool print_reference(const TrainCli& cli) {
  if (cli.help_env) {
    std::cout << help_env(train_options(), cli.format);
    return true;
  }
  if (!cli.print_config) return false;
  ResolvedConfig config = resolve_train_config(cli, environment());
  std::cout << (cli.format == "toml" ? config.to_toml() : config.print());
  return true;
}

Command add_reference_command(CLI::App& app, const char* name, const char* help) {
  CLI::App* sub = app.add_subcommand(name, help);
  std::shared_ptr<TrainCli> cli = add_train_cli(*sub);
  return {sub, [cli, name]() {
            if (print_reference(*cli)) return 0;
            fail("internal: `fluxtrain ", name,
                 "` reached the torch-free executable without --help-env or --print-config");
          }};
}

}  // namespace

Command add_config_command(CLI::App& app) {
  CLI::App* sub = app.add_subcommand(
      "config",
      "Resolve and check the train options (flags > PARAMS_* / seed variables > --config TOML > defaults) and print "
      "them with their sources; --help-env prints the variable reference");
  std::shared_ptr<TrainCli> cli = add_train_cli(*sub);
  auto without_models = std::make_shared<bool>(false);
  sub->add_flag("--without-model-files", *without_models,
                "Check everything but the model files (a pod checks its settings before `fluxtrain fetch-models` "
                "downloads them)");
  return {sub, [cli, without_models]() {
            if (cli->help_env) {
              std::cout << help_env(train_options(), cli->format);
              return 0;
            }
            if (cli->format != "text" && cli->format != "toml")
              fail("--format \"", cli->format,
                   "\" is not a config format; allowed: text, toml (markdown with --help-env)");
            ResolvedConfig config = resolve_train_config(*cli, environment(), !*without_models);
            if (!*without_models) {
              const ModelFiles files = resolve_model_files(config);
              log::info("model files: ", files.model, ", ", files.ae, ", ", files.clip_l, ", ", files.t5xxl);
            }
            std::cout << (cli->format == "toml" ? config.to_toml() : config.print());
            return 0;
          }};
}

Command add_train_reference_command(CLI::App& app) {
  return add_reference_command(app, "train", kTrainCommandHelp);
}

Command add_cache_reference_command(CLI::App& app) {
  return add_reference_command(app, "cache", kCacheCommandHelp);
}

}  // namespace fluxtrain::app
