// Entry point of libfluxtrain_engine.so: the full CLI, with the commands that need libtorch.
#include "app/commands.h"

namespace fluxtrain::app {
namespace {

// Commands that run models, read or write tensors. (Torch-free commands are added by run() itself.)
const std::vector<CommandFactory>& engine_commands() {
  static const std::vector<CommandFactory> commands = {add_train_command, add_cache_command, add_plan_command, add_sample_command,
                                                       add_merge_command, add_make_tiny_command, add_demo_command};
  return commands;
}

}  // namespace
}  // namespace fluxtrain::app

extern "C" __attribute__((visibility("default"))) int fluxtrain_engine_main(int argc, char** argv) {
  return fluxtrain::app::run(argc, argv, fluxtrain::app::engine_commands());
}
