// `fluxtrain config`: resolves the train options from the command line, the environment and a TOML
// file exactly as `fluxtrain train` will, checks them (values, combinations, files) and prints the
// result, without loading a model. Also prints the environment-variable reference (--help-env).
#include <CLI/CLI.hpp>

#include <iostream>

#include "app/commands.h"
#include "app/train_options.h"
#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::app {

Command add_config_command(CLI::App& app) {
  const CommandInfo& info = command_info("config");
  CLI::App* sub = app.add_subcommand(info.name, info.help);
  std::shared_ptr<TableCli> cli = add_table_cli(*sub, info);
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
            ResolvedConfig config = resolve_command(*cli, environment());
            for (const auto& w : validate_train_config(config, !*without_models)) log::warn(w);
            if (!*without_models) {
              const ModelFiles files = find_model_files(config.bind<TrainSettings>().models);
              log::info("model files: ", files.model, ", ", files.ae, ", ", files.clip_l, ", ", files.t5xxl);
            }
            std::cout << (cli->format == "toml" ? config.to_toml() : config.print());
            return 0;
          }};
}

}  // namespace fluxtrain::app
