// `fluxtrain make-tiny --out DIR [--schnell] [--seed N]`: a tiny random Flux model set in the real layouts.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "app/commands.h"
#include "core/log.h"
#include "models/tiny.h"

namespace fluxtrain::app {

Command add_make_tiny_command(CLI::App& app) {
  struct Options {
    std::string out;
    bool schnell = false;
    std::string preset = "test";
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "make-tiny", "Write a tiny random Flux model set (transformer, AE, CLIP-L, T5) in the real file layouts");
  sub->add_option("--out", o->out, "folder to write into (created if needed)")->required();
  sub->add_flag("--schnell", o->schnell, "schnell layout (no guidance embedding) instead of dev");
  sub->add_option("--seed", o->seed, "random seed")->capture_default_str();
  sub->add_option("--preset", o->preset,
                  "test (tiny, strong random modulation for parity tests) or demo (the demo's sizes, initialised for "
                  "training from scratch)")
      ->check(CLI::IsMember({"test", "demo"}))
      ->capture_default_str();
  return {sub, [o] {
            for (const auto& path : models::write_tiny_model_set(
                 o->out, o->schnell, o->seed, o->preset == "demo" ? models::TinyPreset::demo : models::TinyPreset::test)) {
              log::info("wrote ", path);
            }
            return 0;
          }};
}

}  // namespace fluxtrain::app
