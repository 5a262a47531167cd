// The command-line side every command shares: its option table's flags, --print-config, --help-env and
// --format, resolution against the environment, and the reference-only registration the small executable
// uses for engine commands.
#include <CLI/CLI.hpp>

#include <iostream>

#include "app/commands.h"
#include "app/knob_options.h"
#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::app {

std::shared_ptr<TableCli> add_table_cli(CLI::App& subcommand, const CommandInfo& info) {
  auto cli = std::make_shared<TableCli>();
  cli->info = &info;
  cli->binding = std::make_unique<CliBinding>(subcommand, info.options());
  subcommand.add_flag(
      "--print-config", cli->print_config,
      "Print every resolved value and where it came from (command line, environment, config file, default)");
  subcommand.add_flag("--help-env", cli->help_env,
                      "Print the reference of the environment variables (and their flags) and exit");
  subcommand
      .add_option("--format", cli->format, "Output format: text or toml (the config), text or markdown (--help-env)")
      ->capture_default_str();
  return cli;
}

ResolvedConfig resolve_command(const TableCli& cli, const EnvMap& env) {
  ResolvedConfig config = resolve(cli.info->options(), cli.binding->inputs(env));
  for (const auto& w : config.warnings()) log::warn(w);
  if (cli.info->check != nullptr) {
    for (const auto& w : cli.info->check(config)) log::warn(w);
  }
  return config;
}

bool answer_reference(const TableCli& cli) {
  if (cli.help_env) {
    std::cout << help_env(cli.info->options(), cli.format);
    return true;
  }
  if (!cli.print_config) return false;
  if (cli.format != "text" && cli.format != "toml")
    fail("--format \"", cli.format, "\" is not a config format; allowed: text, toml (markdown with --help-env)");
  ResolvedConfig config = resolve_command(cli, environment());
  std::cout << (cli.format == "toml" ? config.to_toml() : config.print());
  if (cli.format == "text" && cli.info->annotate != nullptr) std::cout << cli.info->annotate(config);
  return true;
}

Command add_table_command(CLI::App& app, const CommandInfo& info, CommandRunner runner) {
  CLI::App* sub = app.add_subcommand(info.name, info.help);
  std::shared_ptr<TableCli> cli = add_table_cli(*sub, info);
  return {sub, [cli, runner = std::move(runner)]() {
            if (answer_reference(*cli)) return 0;
            if (!runner)
              fail("internal: `fluxtrain ", cli->info->name,
                   "` reached the torch-free executable without --help-env or --print-config");
            return runner(resolve_command(*cli, environment()));
          }};
}

std::vector<CommandFactory> engine_command_references() {
  std::vector<CommandFactory> out;
  for (const CommandInfo& info : command_infos()) {
    if (!info.needs_engine) continue;
    out.push_back([&info](CLI::App& app) { return add_table_command(app, info, nullptr); });
  }
  return out;
}

bool program_flag_takes_value(const std::string& flag) {
  if (flag == "--format") return true;
  for (const auto& spec : process_options().specs()) {
    if (spec.has_flag && spec.flag_name() == flag) return spec.type != OptionType::boolean;
  }
  return false;
}

const CommandInfo& command_info(const std::string& name) {
  for (const CommandInfo& info : command_infos()) {
    if (name == info.name) return info;
  }
  fail("internal: no command named ", name);
}

}  // namespace fluxtrain::app
