// Every command of the CLI with its option table and checks (commands.h), torch-free.
#include "app/commands.h"
#include "app/fetch_models_options.h"
#include "app/memory_planning.h"
#include "app/monitor_options.h"
#include "app/tool_options.h"
#include "app/train_options.h"

namespace fluxtrain::app {
namespace {

std::vector<std::string> check_train(const ResolvedConfig& config) {
  return validate_train_config(config, true);
}

// A plan is made before the model files are downloaded (Flux.1's shapes stand in for them).
std::vector<std::string> check_plan(const ResolvedConfig& config) {
  return validate_train_config(config, false);
}

}  // namespace

const std::vector<CommandInfo>& command_infos() {
  static const std::vector<CommandInfo> infos = {
      {"inspect", "Show what a .safetensors file holds and what model it is (reads the header only)", inspect_options,
       nullptr, false},
      {"dataset",
       "Show the resolved dataset plan: config values, buckets, images per bucket, steps per epoch; --lint checks "
       "the images and captions and draws the crops",
       dataset_command_options, check_dataset_command, false},
      {"fetch", "Download a dataset (Hugging Face Hub, Kaggle, archive URL) into the cache and print its local folder",
       fetch_command_options, nullptr, false},
      {"fetch-models",
       "Download the Flux model files (transformer, AE, CLIP-L, T5-XXL) from the Hugging Face Hub into MODEL_DIR; "
       "files already there are skipped",
       fetch_models_options, nullptr, false},
      {"config",
       "Resolve and check the train options (flags > PARAMS_* / seed variables > --config TOML > defaults) and print "
       "them with their sources; --help-env prints the variable reference",
       train_options, nullptr, false, annotate_memory_plan},
      {"train", kTrainCommandHelp, train_options, check_train, true, annotate_memory_plan},
      {"cache", kCacheCommandHelp, train_options, check_train, true, annotate_memory_plan},
      {"plan",
       "Predict the peak device memory per batch size before training (the memory planner; no weights read), the "
       "largest batch that fits, steps per epoch, ETA and cost; --calibrate measures real steps",
       plan_options, check_plan, true, annotate_memory_plan},
      {"sample", "Generate images with a Flux model plus any number of LoRAs (kohya, diffusers/PEFT or ComfyUI layout)",
       sample_options, check_sample, true},
      {"merge", "Merge LoRAs into one (exact, or SVD to a rank), or bake LoRAs into a base checkpoint", merge_options,
       check_merge, true},
      {"make-tiny", "Write a tiny random Flux model set (transformer, AE, CLIP-L, T5) in the real file layouts",
       make_tiny_options, nullptr, true},
      {"monitor",
       "Serve the live page of a run folder (a finished run, or one a training in another process writes): "
       "progress, charts, samples, config, files; MONITOR_PORT, MONITOR_TOKEN",
       monitor_command_options, nullptr, false},
      {"demo", "The embedded demo: a tiny Flux model learns a new concept through a LoRA; samples before and after",
       demo_options, nullptr, true},
  };
  return infos;
}

}  // namespace fluxtrain::app
