// `fluxtrain`: a small torch-free executable. Commands that need no tensors run here; the rest run in
// libfluxtrain_engine.so, loaded only then (libtorch costs ~0.7 s and 100s of MB just to load).
#include "app/commands.h"

int main(int argc, char** argv) {
  using namespace fluxtrain::app;
  if (runs_without_engine(argc, argv)) return run(argc, argv, engine_command_references());
  return run_engine(argc, argv);
}
