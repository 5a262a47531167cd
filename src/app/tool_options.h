// The option tables of the smaller commands — inspect, dataset, fetch, make-tiny, merge, sample and demo —
// and the settings structs they fill. Torch-free, like every table, so the small executable answers
// --help, --help-env and --print-config of each.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "app/knob_options.h"
#include "app/options.h"
#include "app/shared_options.h"
#include "data/dataset_config.h"
#include "models/tiny_preset.h"

namespace fluxtrain::app {

struct InspectSettings {
  std::string file;
  bool json = false;
  int max_value_chars = 300;  // metadata values longer than this are cut in the text output
};
const OptionTable& inspect_options();

struct DatasetCommandSettings {
  std::string config;
  std::string dir;
  std::string reg_dir;
  uint64_t seed = 0;
  data::ConfigFallbacks fallbacks;
  int64_t show_epoch = 0;  // 1-based; 0 = none
  bool json = false;
  bool lint = false;                   // also the lint report and the crop previews (data/lint.h)
  std::string lint_out = "fluxtrain-lint";
  bool lint_strict = false;            // exit 1 when the lint finds anything
  int lint_tile = 384;
  int lint_near_duplicate_bits = 6;
  int lint_t5_max_length = 512;
};
const OptionTable& dataset_command_options();
std::vector<std::string> check_dataset_command(const ResolvedConfig& config);

struct FetchCommandSettings {
  std::string dataset;
  std::string cache_dir;  // "" = the default dataset cache (FLUXTRAIN_CACHE, ...)
  std::string revision;
  bool refresh = false;
  DownloadSettings downloads;
};
const OptionTable& fetch_command_options();

struct TinySettings {
  std::string out;
  bool schnell = false;
  uint64_t seed = 0;
  models::TinyPreset preset = models::TinyPreset::test;
};
const OptionTable& make_tiny_options();

struct MergeSettings {
  std::vector<std::string> loras;  // FILE or FILE:WEIGHT
  std::string base;                // bake into this checkpoint
  std::string out;
  std::optional<int64_t> rank;  // SVD to this rank
  std::string dtype;            // lora::parse_weight_dtype reads it
  std::string title;
  EngineSettings engine;
};
const OptionTable& merge_options();
std::vector<std::string> check_merge(const ResolvedConfig& config);

struct SampleSettings {
  ModelFileSettings models;        // dev or schnell by what the folder holds (no base_model option)
  std::vector<std::string> loras;  // FILE or FILE:STRENGTH
  std::string prompt;
  std::string prompts;  // a prompt file
  int width = 1024;
  int height = 1024;
  int steps = 0;  // 0: 20 for dev, 4 for schnell
  double guidance = 3.5;
  double cfg = 1.0;
  std::string negative;
  uint64_t seed = 42;
  std::string out;
  std::string name = "sample";
  ComputeSettings compute;
  int t5_max_length = 0;  // 0: 512 dev, 256 schnell
  bool t5_attn_mask = false;
  EngineSettings engine;
};
const OptionTable& sample_options();
std::vector<std::string> check_sample(const ResolvedConfig& config);

struct DemoSettings {
  std::string out = "demo-output";
  int64_t steps = 400;
  int64_t images = 24;
  ComputeSettings compute;
  uint64_t seed = 0;
  std::string build_assets;
  std::string work;
  int64_t ae_steps = 4000;
  int64_t base_steps = 3000;
  int64_t base_images = 600;
};
const OptionTable& demo_options();

}  // namespace fluxtrain::app
