// The training loop of `fluxtrain train`: LoRA (or full fine-tuning) on a Flux transformer over an
// addressable data source, with checkpoints, exact resume, samples and metrics (spec/training.md).
//
// Exactness: everything random is either a saved generator (timesteps, noise, LoRA dropout) or a pure
// function of (seed, epoch, index) inside the data source, and the data source is addressed by
// (epoch, batch index). A state saved after step N and resumed therefore continues exactly as the
// uninterrupted run would have: same batches, same noise, same optimizer moments.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "lora/lora_file.h"
#include "lora/network.h"
#include "models/options.h"
#include "optim/schedule.h"
#include "train/data_source.h"
#include "train/step.h"

namespace fluxtrain::train {

struct TrainerConfig {
  std::string model_path;
  models::ModelOptions model;  // dtype = storage of the frozen base; device; fp8
  at::ScalarType compute_dtype = at::kFloat;

  bool full_finetune = false;  // --network none: every transformer weight trains (fp32 master weights)
  lora::LoraOptions lora;
  std::string network_weights;  // start from this LoRA file

  std::string optimizer_type = "Prodigy";
  std::string optimizer_args;
  double learning_rate = 1.0;
  double weight_decay = 0.0;
  optim::ScheduleOptions schedule;  // num_training_steps is filled in by the trainer
  StepOptions step;
  int64_t gradient_accumulation = 1;
  int prefetch_batches = 4;  // batches a background thread prepares ahead; 0 = each in the loop when needed
  int64_t max_epochs = 1;
  int64_t max_steps = 0;  // > 0: overrides max_epochs
  uint64_t seed = 42;

  std::filesystem::path output_dir;
  std::string output_name = "flux-lora";
  int64_t save_every_n_steps = 0;
  int64_t save_every_n_epochs = 0;
  int keep_last_n = 0;         // intermediate step/epoch files kept (0 = all)
  bool save_state = true;      // a state with every intermediate save (the final and a signal's state always)
  int keep_last_n_states = 2;  // complete states kept (>= 1)
  int64_t sample_every_n_steps = 0;
  int64_t sample_every_n_epochs = 0;
  bool sample_at_first = false;
  double log_every_seconds = 10;
  std::string resume_from;  // a state folder; "" = none (the app resolves "auto")
  lora::LoraFileInfo file_info;
  nlohmann::json run_info;  // stored in every state (the app's resolved config and its hash)
};

// Called to write samples at a step with the model in its current (trained) state.
// Renders the sample prompts with the model as it is at `step`; returns the PNG files written (the
// trainer also logs them as TensorBoard images).
using SampleHook = std::function<std::vector<std::filesystem::path>(int64_t step, models::FluxTransformerImpl& model)>;

struct TrainResult {
  int64_t steps = 0;        // optimizer steps done in total (including before a resume)
  int64_t total_steps = 0;  // planned
  double last_loss = 0;
  bool interrupted = false;        // stopped by SIGINT/SIGTERM after saving a state
  std::vector<std::string> files;  // LoRA/model files written by this process
  double seconds = 0;
  double data_wait_share = 0;     // time the steps waited for the loader / time of the steps
  double peak_memory_bytes = -1;  // device peak (CUDA) or peak RSS (CPU); -1 if unknown
};

// The total number of optimizer steps the config plans for a data source of `batches_per_epoch`.
int64_t planned_steps(const TrainerConfig& config, int64_t batches_per_epoch);

// Runs the training. SIGINT/SIGTERM finish the current step, save a state and return (interrupted).
TrainResult train(const TrainerConfig& config, DataSource& data, const SampleHook& sample = {});

// Asks a running train() to stop after its current step (what the signal handlers do).
void request_stop();

}  // namespace fluxtrain::train
