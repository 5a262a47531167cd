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
  CLI::App* sub = app.add_subcommand(
      "config",
      "Resolve and check the train options (flags > PARAMS_* / seed variables > --config TOML > defaults) and print "
      "them with their sources; --help-env prints the variable reference");
  std::shared_ptr<TrainCli> cli = add_train_cli(*sub);
  return {sub, [cli]() {
            if (cli->help_env) {
              std::cout << help_env(train_options(), cli->format);
              return 0;
            }
            if (cli->format != "text" && cli->format != "toml")
              fail("--format \"", cli->format,
                   "\" is not a config format; allowed: text, toml (markdown with --help-env)");
            ResolvedConfig config = resolve_train_config(*cli, environment());
            const ModelFiles files = resolve_model_files(config);
            log::info("model files: ", files.model, ", ", files.ae, ", ", files.clip_l, ", ", files.t5xxl);
            std::cout << (cli->format == "toml" ? config.to_toml() : config.print());
            return 0;
          }};
}

}  // namespace fluxtrain::app
