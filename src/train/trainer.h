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
#include "sample/text_encoding.h"
#include "train/data_source.h"
#include "train/options.h"
#include "train/parallel.h"
#include "train/run_hooks.h"
#include "train/step.h"

namespace fluxtrain::train {

// The run's options (train/options.h, filled by the option table) plus what the app resolves for it.
struct TrainerConfig : TrainOptions {
  std::string model_path;
  models::ModelOptions model;  // dtype = storage of the frozen base; device; fp8 (from fp8_base)
  at::ScalarType compute_dtype = at::kFloat;
  std::filesystem::path output_dir;
  std::string resume_from;       // a state folder; "" = none (the app resolves "auto")
  bool resume_verified = false;  // resume_from was verified against its COMPLETE already (not read twice)
  lora::LoraFileInfo file_info;
  // The text encoders, loaded by the trainer when their LoRA trains (train_clip / train_t5).
  std::string clip_path;
  std::string t5_path;
  models::ModelOptions encoder_options;
  sample::TextEncoderOptions text_options;
  nlohmann::json run_info;  // stored in every state (the app's resolved config and its hash)
  // The memory planner's figures for this run (train/memory_plan.h), for the out-of-memory error: the
  // predicted peak of a step at the largest bucket and the memory it was planned against (0: none).
  int64_t planned_peak_bytes = 0;
  int64_t planned_budget_bytes = 0;
  // Data parallelism (train/parallel.h; null: one process). The data source gives each rank its share of
  // global batches; device_batch is the dataset's batch_size per device (the largest of its datasets),
  // recorded in states with the world size so that a resume at another world size can check that the
  // global batch (device_batch x world x gradient_accumulation) is the same.
  Parallel* parallel = nullptr;
  int64_t device_batch = 1;
  // The held-out images of the validation loss (rank 0's; null: no validation), and the seed of its noise.
  DataSource* validation = nullptr;
  uint64_t validation_seed = 42;
  // The listeners of the run's events and the page's requests (train/run_hooks.h); rank 0's only.
  RunHooks hooks;
};

// Renders the sample prompts with the model as it is at `step`; returns the PNG files written (the
// trainer also logs them as TensorBoard images). `trained_encoders`: the text encoders with their LoRA as
// trained so far when a text-encoder LoRA trains (the prompts are encoded with them), else null.
using SampleHook = std::function<std::vector<std::filesystem::path>(
    int64_t step, models::FluxTransformerImpl& model, sample::TextEncoders* trained_encoders)>;

struct TrainResult {
  int64_t steps = 0;        // optimizer steps done in total (including before a resume)
  int64_t total_steps = 0;  // planned
  double last_loss = 0;
  bool interrupted = false;        // stopped by SIGINT/SIGTERM after saving a state
  int64_t skipped_steps = 0;       // steps of this process whose loss or gradient norm was not finite
  std::vector<std::string> files;  // LoRA/model files written by this process
  double seconds = 0;
  double data_wait_share = 0;     // time the steps waited for the loader / time of the steps
  double peak_memory_bytes = -1;  // device peak (CUDA) or peak RSS (CPU); -1 if unknown
};

// The total number of optimizer steps the config plans for a data source of `batches_per_epoch`.
int64_t planned_steps(const TrainerConfig& config, int64_t batches_per_epoch);

// The file name of the LoRA (or model) saved at `step` by save_every_n_steps: {output_name}-step{step:08}.safetensors.
std::string step_file_name(const std::string& output_name, int64_t step);

// Runs the training. SIGINT/SIGTERM finish the current step, save a state and return (interrupted).
TrainResult train(const TrainerConfig& config, DataSource& data, const SampleHook& sample = {});

// Asks a running train() to stop after its current step (what the signal handlers do).
void request_stop();

}  // namespace fluxtrain::train
