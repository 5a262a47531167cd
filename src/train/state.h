// A training state on disk, for exact resume (spec/training.md "State and resume"): a directory
//   OUTPUT_PATH/state/step-00000120/
//     trainable.safetensors   the trained tensors (LoRA parameters, or the model's for full fine-tuning)
//     optimizer.safetensors   the optimizer's state tensors
//     state.json              format version, counters, position in the epoch, scheduler step, optimizer
//                             scalars, the state of every generator (timesteps, noise, dropout, data),
//                             the run's option values and hash
//     COMPLETE                written last (after everything else is fsynced): a directory without it
//                             is an interrupted save and is ignored (and removed by the pruning)
// Every file is written atomically; the directory is built under a temporary name and renamed.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::train {

// The layout of state.json, written into it as "format_version". 1: no version key (before the option
// table bound its values; option values as text with 17 significant digits). 2: "format_version",
// option values in their shortest round-trip text. A state of a newer format is an Error naming both.
inline constexpr int kStateFormatVersion = 2;

struct TrainingState {
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  std::vector<std::pair<std::string, at::Tensor>> optimizer_tensors;
  nlohmann::json info;  // counters, generators, optimizer scalars, config hash, ...
};

// The directory name of the state after `step` optimizer steps.
std::string state_dir_name(int64_t step);

// Writes `state` as dir/state/step-XXXXXXXX (replacing an older one of the same step).
std::filesystem::path save_state(const std::filesystem::path& output_dir, int64_t step, const TrainingState& state);

// Reads a state directory (or a run's output folder: its newest complete state). Errors name the
// folder and what is missing or corrupt.
TrainingState load_state(const std::filesystem::path& dir);

// The newest complete state under output_dir/state, if any.
std::optional<std::filesystem::path> newest_state(const std::filesystem::path& output_dir);

// Keeps the newest `keep` complete states (0 = keep all) and removes incomplete ones.
void prune_states(const std::filesystem::path& output_dir, int keep);

// Generator state as text (base64 of torch's byte state) and back.
std::string generator_state(const at::Generator& generator);
void set_generator_state(at::Generator& generator, const std::string& state, const std::string& what);

}  // namespace fluxtrain::train
