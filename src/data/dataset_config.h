// The dataset config: kohya-ss/sd-scripts' schema (library/config_util.py) in TOML or JSON, or a bare image
// folder. `[general]` -> `[[datasets]]` -> `[[datasets.subsets]]`; a key set at an outer level is the
// default of the inner ones (subset > dataset > general > command-line fallbacks > built-in defaults).
//
// Keys and where they may appear (as kohya's ConfigSanitizer allows them):
//   dataset keys (general, dataset):  batch_size resolution (one size, or several: one dataset per size,
//                                     data/resolutions.h) enable_bucket min_bucket_reso max_bucket_reso
//                                     bucket_reso_steps bucket_no_upscale
//   subset keys (general, dataset, subset): num_repeats caption_extension class_tokens shuffle_caption
//        caption_separator keep_tokens keep_tokens_separator secondary_separator caption_prefix
//        caption_suffix caption_dropout_rate caption_dropout_every_n_epochs caption_tag_dropout_rate
//        flip_aug random_crop
//        validation_split validation_seed (kohya's held-out images, see docs/training.md "Validation")
//        default_caption recursive (fluxtrain's, not kohya's: see docs/data.md)
//   subset only: image_dir (required) is_reg alpha_mask conditioning_data_dir (masked_loss's mask pictures)
// Every other key is an error naming the key, the file, the level and the closest valid key; kohya keys
// that fluxtrain does not implement (color_aug, enable_wildcard, token_warmup_*, ...) are accepted only at
// their no-op value. See docs/data.md.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/buckets.h"
#include "data/captions.h"

namespace fluxtrain::data {

struct SubsetConfig {
  std::filesystem::path image_dir;
  int num_repeats = 1;
  std::string caption_extension = ".caption";  // kohya's default; a bare folder uses ".txt"
  std::string class_tokens;                    // "" = none
  // The caption of images without one where class_tokens is empty (ai-toolkit's default_caption).
  std::string default_caption;
  // Images in sub-folders too (at any depth; not in labels/, masks/, annotations/ folders), each with its
  // caption beside it. kohya reads image_dir alone; a bare folder and a config subset whose image_dir holds
  // no images of its own (and no N_name subfolders) are recursive unless recursive = false.
  bool recursive = false;
  CaptionSettings captions;
  bool flip_aug = false;
  bool random_crop = false;
  bool is_reg = false;
  bool alpha_mask = false;
  // masked_loss's mask pictures (kohya's conditioning_data_dir, data/mask_images.h); empty: none. They win over
  // alpha_mask.
  std::filesystem::path conditioning_data_dir;
  // The fraction of the subset's images held out of training for the validation loss (0: none, 1: the
  // whole subset is a validation set), chosen by validation_seed (-1: the run's seed).
  double validation_split = 0;
  int validation_seed = -1;
  // Where each resolved key came from: "subset", "dataset", "general", "folder name", "--batch-size",
  // "default", ...
  std::map<std::string, std::string> origin;
};

// batch_size = "auto" (in a config file or the fallback): the largest batch the device's memory holds,
// which the app's memory planner (train/memory_plan.h) puts in before the dataset plan is built.
inline constexpr int kAutoBatchSize = 0;

struct DatasetConfig {
  int batch_size = 1;  // kAutoBatchSize: "auto"
  BucketSettings buckets;
  std::vector<SubsetConfig> subsets;
  std::map<std::string, std::string> origin;
};

struct DatasetGroupConfig {
  std::string source;  // the config file, or the image folder
  std::vector<DatasetConfig> datasets;
};

// kohya's argparse layer: values used only where the config leaves a key unset (kohya's
// --train_batch_size and --resolution behave the same way). `origin` names them in messages.
struct ConfigFallbacks {
  std::optional<int> batch_size;  // kAutoBatchSize: "auto"
  std::string batch_size_origin = "--batch-size";
  // One size, or several (multi-resolution: one dataset per size, data/resolutions.h); empty: unset.
  std::vector<Resolution> resolutions;
  std::string resolution_origin = "--resolution";
  std::optional<std::string> default_caption;
  std::string default_caption_origin = "--default-caption";
  // The train options PARAMS_CAPTION_EXTENSION and PARAMS_NUM_REPEATS: like the others, used where the config
  // file leaves the key unset, so they replace a bare folder's ".txt" and kohya's defaults. A kohya `N_name`
  // folder's repeat count is written in its name and wins over num_repeats.
  std::optional<std::string> caption_extension;
  std::string caption_extension_origin = "--caption-extension";
  std::optional<int> num_repeats;
  std::string num_repeats_origin = "--num-repeats";
  // PARAMS_VALIDATION_SPLIT: for the subsets whose config sets none (kohya's --validation_split).
  std::optional<double> validation_split;
  std::string validation_split_origin = "--validation-split";
  // kohya's --alpha_mask and --masked_loss: masked_loss allows conditioning_data_dir (mask pictures) and, where
  // alpha_mask is not given, makes the alpha the mask of subsets that set none.
  std::optional<bool> alpha_mask;
  std::string alpha_mask_origin = "--alpha-mask";
  bool masked_loss = false;
  std::string masked_loss_origin = "--masked-loss";
};

struct ConfigOptions {
  ConfigFallbacks fallbacks;
  // Relative image_dir values are resolved against this folder ("" = the current folder, as kohya does).
  std::filesystem::path base_dir;
  // bucket_reso_steps must be a multiple of this (kohya's flux_train_network.py checks 32).
  int bucket_step_multiple = 32;
  // A subset without image_dir uses this folder (the dataset fetched from DATASET_NAME); "" = error.
  std::filesystem::path default_image_dir;
};

enum class ConfigFormat { toml, json };

// Reads a .toml or .json file (by extension) and resolves it.
DatasetGroupConfig load_dataset_config(const std::filesystem::path& file, const ConfigOptions& options = {});

// Parses and resolves config text; `source` names it in errors.
DatasetGroupConfig parse_dataset_config(std::string_view text, ConfigFormat format, const std::string& source,
                                        const ConfigOptions& options = {});

// A bare image folder (no config), with the defaults of docs/data.md: resolution 1024, buckets on
// (256..2048, step 64), caption_extension ".txt", batch size 1. If the folder holds kohya-style
// `N_name` subfolders (`10_ohwx person`), each becomes a subset with num_repeats N and class_tokens
// "name" (kohya's --train_data_dir); otherwise the folder itself is the one subset. `reg_dir`
// (optional) is read the same way with is_reg = true (kohya's --reg_data_dir).
DatasetGroupConfig folder_dataset_config(const std::filesystem::path& dir, const ConfigOptions& options = {},
                                         const std::filesystem::path& reg_dir = {});

// Image file extensions the scan takes (compared case-insensitively).
bool has_image_extension(const std::filesystem::path& path);

// kohya's `N_name` folder convention: "10_ohwx person" -> (10, "ohwx person"); nullopt when the name does
// not start with a number followed by "_" or the end.
std::optional<std::pair<int, std::string>> parse_repeats_folder_name(const std::string& name);

}  // namespace fluxtrain::data
