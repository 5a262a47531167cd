// The options of `fluxtrain train` (and of `fluxtrain config`, which resolves and checks them without
// training): the seed's environment variables, kohya-ss/sd-scripts' option names, and the engine's
// defaults, in one table (docs/configuration.md has the generated reference).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "app/options.h"

namespace CLI {
class App;
}

namespace fluxtrain::app {

// The table of the train options.
const OptionTable& train_options();

// The --device (auto, cpu, cuda, cuda:N; default auto) and --precision (auto, fp32, bf16, fp16; default
// auto = bf16 on a GPU, fp32 on the CPU) options, for the table of every command that runs a model.
OptionSpec device_option(const std::string& group);
OptionSpec precision_option(const std::string& group);

// Checks of a resolved train config that span several options or need the files on disk: one of
// dataset_name / dataset_config, the model files (see resolve_model_files), options that only make
// sense together. Throws one Error listing every problem (each naming the flags / variables involved);
// returns warnings for settings that have no effect.
// check_model_files = false leaves the model files out (a pod checks its settings before it downloads
// them).
std::vector<std::string> validate_train_config(const ResolvedConfig& config, bool check_model_files = true);

// The four model files of a run.
struct ModelFiles {
  std::string model;   // the Flux transformer
  std::string ae;      // the autoencoder
  std::string clip_l;  // the CLIP-L text encoder
  std::string t5xxl;   // the T5-XXL text encoder
};

// The names a model folder is searched for, in order of preference, per file ("model", "ae", "clip_l",
// "t5xxl"): flux1-dev.safetensors, the seed's flux_dev.safetensors or the fp8 flux1-dev-fp8.safetensors
// (flux1-schnell... for schnell), ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors or
// t5xxl_fp8_e4m3fn.safetensors.
std::vector<std::string> usual_model_names(const std::string& file, const std::string& base_model);

// Fills each file not given in `given` from `model_dir` (may be "") by its usual names. Throws Error
// naming every file that is still missing, where it looked and the flags / variables that set it;
// `model_dir_origin` names where model_dir came from (e.g. "MODEL_DIR").
ModelFiles find_model_files(const ModelFiles& given, const std::string& model_dir, const std::string& base_model,
                            const std::string& model_dir_origin = "MODEL_DIR");

// find_model_files() with the config's model, ae, clip_l, t5xxl, model_dir and base_model.
ModelFiles resolve_model_files(const ResolvedConfig& config);

// kohya's optimizer_args with the seed's separate PARAMS_D_COEF and PARAMS_WEIGHT_DECAY appended as
// `d_coef=X` / `weight_decay=X` when they are set (validate_train_config rejects a key given twice).
std::string merged_optimizer_args(const ResolvedConfig& config);

// The descriptions of the train and cache commands (the engine's and the torch-free executable's, which
// prints their --help, --help-env and --print-config without loading libtorch).
extern const char* const kTrainCommandHelp;
extern const char* const kCacheCommandHelp;

// The command-line side of the train options, shared by `fluxtrain train` and `fluxtrain config`: every
// option of the table, plus --print-config, --help-env and --format.
struct TrainCli {
  std::unique_ptr<CliBinding> binding;
  bool print_config = false;
  bool help_env = false;
  std::string format = "text";
};
// Registers the options on `command`; the returned object must outlive the parse.
std::shared_ptr<TrainCli> add_train_cli(CLI::App& command);

// Resolves the train options from the parsed command line and the process environment (or `env`),
// logs the resolution warnings, validates (Error on any problem) and logs the validation warnings.
ResolvedConfig resolve_train_config(const TrainCli& cli, const EnvMap& env, bool check_model_files = true);

}  // namespace fluxtrain::app
