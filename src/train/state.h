// A training state on disk, for exact resume (spec/training.md "State and resume"): a directory
//   OUTPUT_PATH/state/step-00000120/
//     trainable.safetensors   the trained tensors (LoRA parameters, or the model's for full fine-tuning)
//     optimizer.safetensors   the optimizer's state tensors
//     ema.safetensors         the EMA of the trained tensors (train/ema.h), when the run keeps one
//     state.json              format version, counters, position in the epoch, scheduler step, optimizer
//                             scalars, the state of every generator (timesteps, noise, dropout, data),
//                             the run's option values and hash
//     COMPLETE                written last: JSON {"step", "files": {name: {"size", "sha256"}}} of the
//                             files above. A folder without it is an interrupted save (ignored, removed)
// The folder is built as state/.step-XXXXXXXX.tmp-PID, every file fsynced, then renamed into place and
// the state/ folder fsynced: a reader sees a whole state or none. Resuming verifies the newest state
// against its COMPLETE (sizes, SHA-256, state.json parses); one that fails is reported by name, set aside
// as step-XXXXXXXX.corrupt and the next older one is used.
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
  std::vector<std::pair<std::string, at::Tensor>> ema_tensors;  // empty: no EMA (no ema.safetensors)
  nlohmann::json info;  // counters, generators, optimizer scalars, config hash, ...
};

// The directory name of the state after `step` optimizer steps.
std::string state_dir_name(int64_t step);

// Writes `state` as dir/state/step-XXXXXXXX (replacing an older one of the same step).
std::filesystem::path save_state(const std::filesystem::path& output_dir, int64_t step, const TrainingState& state);

// Reads a state directory (verified first, unless `verified`: the caller has just verified that folder,
// and verifying a multi-GiB state means hashing it again), or a run's output folder: its newest sound
// state (newest_sound_state). Errors name the folder and what is missing or corrupt.
TrainingState load_state(const std::filesystem::path& dir, bool verified = false);

// What is wrong with a state folder: "" when its COMPLETE lists each file with the size and SHA-256 it
// has and state.json parses; else one line saying which file and how it differs. A COMPLETE of format 1
// (the step number only) is checked for the files' presence and state.json.
std::string verify_state(const std::filesystem::path& dir);

// The newest complete state under output_dir/state, if any (unverified: what exists).
std::optional<std::filesystem::path> newest_state(const std::filesystem::path& output_dir);

// The newest state under output_dir/state that verifies. Each newer complete one that does not is
// reported (a warning naming it and what is wrong) and renamed to step-XXXXXXXX.corrupt, so that it is
// neither resumed nor counted by the pruning.
std::optional<std::filesystem::path> newest_sound_state(const std::filesystem::path& output_dir);

// Keeps the newest `keep` complete states (0 = keep all) and removes incomplete ones.
void prune_states(const std::filesystem::path& output_dir, int keep);

// Removes what a killed process left in output_dir (and its run-* folders): temporary state folders,
// incomplete states and the temporary files of atomic writes (".NAME.tmp-PID-N") whose process is gone.
// Call with the output folder's lock held (one trainer per folder).
void remove_stale_temporaries(const std::filesystem::path& output_dir);

// Generator state as text (base64 of torch's byte state) and back.
std::string generator_state(const at::Generator& generator);
void set_generator_state(at::Generator& generator, const std::string& state, const std::string& what);

}  // namespace fluxtrain::train
