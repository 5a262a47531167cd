// The options of `fluxtrain train` (and of `cache` and `config`, which resolve the same table): the seed's
// environment variables, kohya-ss/sd-scripts' option names and the engine's defaults, in one table that
// says for every option where its value goes (TrainSettings), what a change means for a resumed run and
// which LoRA metadata key records it (docs/configuration.md has the generated reference). Torch-free.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/knob_options.h"
#include "app/monitor_options.h"
#include "app/options.h"
#include "app/publish_options.h"
#include "app/shared_options.h"
#include "data/dataset_config.h"
#include "data/hub_formats.h"
#include "train/options.h"

namespace CLI {
class App;
}

namespace fluxtrain::app {

// Everything the train table sets. The trainer's part (train::TrainOptions) goes to the trainer as it
// is; the rest the app uses to find the files, fetch and plan the dataset and place the run.
struct TrainSettings {
  ModelFileSettings models;
  int t5_max_length = 0;  // T5 tokens per caption; 0 = by the model (512 dev, 256 schnell)
  bool t5_attn_mask = false;

  std::string dataset_name;                      // DATASET_NAME: a Hub or Kaggle dataset, a URL or a local folder
  std::string dataset_config;                    // DATASET_CONFIG: kohya's TOML/JSON
  data::HubFormatOptions hub_formats;            // split, config and caption column of a Parquet/imagefolder set
  // Resolution, batch size, default caption, caption extension and repeats where the config leaves them unset.
  data::ConfigFallbacks dataset_fallbacks;

  std::string output_path = "output";
  std::string resume_from;  // a state folder
  bool auto_resume = true;
  std::string cache_dir;  // "" = OUTPUT_PATH/cache
  bool cache_text_encoder_outputs = true;  // off when a text encoder trains (kohya's option)
  std::string sample_prompts;

  ComputeSettings compute;
  // With fp8_base: how its fp8 weights multiply; resolved against the device at start (app/device.h).
  Fp8Compute fp8_compute = Fp8Compute::automatic;
  std::string fp8_compute_origin = "--fp8-compute";  // how it was given (ResolvedConfig::describe)
  train::TrainOptions training;
  // The memory planner (train/memory_plan.h): the device memory planned for in GB (0: the device's free
  // memory at start), the share of it left free, checkpoint_keep_products = auto.
  double vram_gb = 0;
  double memory_margin = 0.05;
  bool keep_products_auto = false;
  bool blocks_to_swap_auto = false;
  DownloadSettings downloads;  // DATASET_NAME's download (knob_options.h)
  PublishSettings publish;     // the Hub upload and the webhook (publish_options.h)
  EngineSettings engine;
  MonitorSettings monitor;  // the live page (monitor_options.h), rank 0's

  // Data parallelism (docs/distributed.md): `--nproc N` / PARAMS_NUM_PROCESSES starts N ranks on this
  // machine; torchrun's variables (RANK, WORLD_SIZE, ...) make this process one rank of a group.
  struct Distributed {
    std::string num_processes = "auto";  // "auto" (every visible GPU; 1 on the CPU) or a count
    double collective_timeout_seconds = 600;
    int64_t cpu_threads_per_process = 0;  // 0: this machine's CPUs shared among the --nproc ranks
    std::optional<int64_t> rank, world_size, local_rank, local_world_size;
    std::string master_addr = "127.0.0.1";
    std::optional<int64_t> master_port;
    bool use_agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE
    int64_t restart_count = 0;     // TORCHELASTIC_RESTART_COUNT
  } distributed;

  // `fluxtrain plan` only (plan_options()).
  struct PlanRequest {
    std::vector<int64_t> batches;  // the table's rows
    double step_seconds = 0;       // 0: unknown (or measured by calibrate)
    double price_per_hour = 0;
    std::string json;              // also write the plan here
    bool calibrate = false;        // load the model and time (and measure) real steps
    int64_t calibrate_steps = 2;
  } plan;
};

// The table of the train options.
const OptionTable& train_options();
// train's options and those of `fluxtrain plan` (--batches, --step-seconds, --price-per-hour, --json,
// --calibrate).
const OptionTable& plan_options();

// Checks of a resolved train config that span several options or need the files on disk: one of
// dataset_name / dataset_config, the model files (see find_model_files), options that only make
// sense together. Throws one Error listing every problem (each naming the flags / variables involved);
// returns warnings for settings that have no effect.
// check_model_files = false leaves the model files out (a pod checks its settings before it downloads
// them).
std::vector<std::string> validate_train_config(const ResolvedConfig& config, bool check_model_files = true);

// The descriptions of the train and cache commands (the engine's and the torch-free executable's, which
// prints their --help, --help-env and --print-config without loading libtorch).
extern const char* const kTrainCommandHelp;
extern const char* const kCacheCommandHelp;

}  // namespace fluxtrain::app
