// The app's side of the memory planner (train/memory_plan.h): the planner's inputs from a run's resolved
// train options, the memory budget, and the automatic choices (batch_size = auto, checkpoint_keep_products
// = auto, blocks_to_swap = auto). Torch-free: `--print-config` answers with the same numbers as `fluxtrain
// plan` and the trainer's start, which pass the device's free memory in.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "app/train_options.h"
#include "train/memory_plan.h"

namespace fluxtrain::app {

struct PlannedRun {
  train::MemoryPlanInputs inputs;  // with the automatic choices applied
  train::MemoryPlan plan;          // of `inputs`
  std::string model_note;          // where the model's shape came from
  int64_t budget = 0;              // bytes the automatic choices may use (after the margin); 0: unknown
  std::string budget_note;         // "80.0 GB given by --vram, 5 % margin"
  int64_t batch = 1;               // the batch planned for (the largest dataset's, or auto's choice)
  bool batch_auto = false;
  bool keep_auto = false;
  bool swap_auto = false;
  std::vector<std::string> notes;  // what the automatic choices did, one line each
};

// The model's shape from the transformer file's header (single .safetensors file, either layout), or, when
// the file is not there yet (a pod plans before it downloads), Flux.1's own for the base model.
models::FluxConfig planned_model_config(const TrainSettings& settings, std::string& note);

// A text-encoder LoRA (train_clip / train_t5): both encoders' shapes from their files' headers (CLIP-L's
// and T5-XXL's before the download), the trained ones marked; empty when none trains.
std::vector<train::TextEncoderShape> planned_text_encoders(const TrainSettings& settings, int64_t t5_tokens);

// The planner's inputs for `settings` on a device: `cuda` (else the CPU), compute dtype bytes, the largest
// image in pixels (w, h) the batches hold.
train::MemoryPlanInputs memory_plan_inputs(const TrainSettings& settings, const models::FluxConfig& model, bool cuda,
                                           int64_t compute_bytes, int64_t width, int64_t height);

// The largest bucket of the run's datasets (resolution as given by the config or the fallback, 1024).
std::pair<int64_t, int64_t> planned_resolution(const TrainSettings& settings, const data::DatasetGroupConfig* group);

// The whole plan with the automatic choices: `device_memory` the device's free memory when known (the
// engine asks CUDA; torch-free callers pass nullopt and get the CPU's or only --vram). `batch` the batch
// set by the dataset, or data::kAutoBatchSize.
PlannedRun plan_run_memory(const TrainSettings& settings, const models::FluxConfig& model, bool cuda,
                           int64_t compute_bytes, std::pair<int64_t, int64_t> resolution, int batch,
                           std::optional<int64_t> device_memory, const std::string& device_name);

// The CPU's memory for tensors: FLUXTRAIN_CPU_MEMORY_LIMIT_MB when set, else MemAvailable.
int64_t cpu_memory_budget(const EngineSettings& engine);

// --print-config's lines for train, cache, config and plan: the automatic choices (batch_size, kept products,
// blocks to swap) as `fluxtrain train` will make them, when the memory is known (vram given, or the CPU);
// "" when nothing is automatic.
std::string annotate_memory_plan(const ResolvedConfig& config);

// The plan as text: the terms, the table (batch -> predicted peak, fits or not) and the choices.
std::string describe_plan(const PlannedRun& run, const std::vector<int64_t>& batches);

}  // namespace fluxtrain::app
