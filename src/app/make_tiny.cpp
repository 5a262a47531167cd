// `fluxtrain make-tiny --out DIR [--schnell] [--seed N]`: a tiny random Flux model set in the real layouts.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/tool_options.h"
#include "core/log.h"
#include "models/tiny.h"

namespace fluxtrain::app {

Command add_make_tiny_command(CLI::App& app) {
  return add_table_command(app, command_info("make-tiny"), [](const ResolvedConfig& config) {
    const auto o = config.bind<TinySettings>();
    for (const auto& path : models::write_tiny_model_set(o.out, o.schnell, o.seed, o.preset)) log::info("wrote ", path);
    return 0;
  });
}

}  // namespace fluxtrain::app
