// `fluxtrain plan`: the memory planner's table for a run's options (train's, plus --batches,
// --step-seconds, --price-per-hour, --json, --calibrate) without reading model weights: the predicted peak
// device memory per batch size, the largest batch that fits --vram or the device, the automatic choices,
// steps per epoch when the dataset is on disk, and the ETA and cost once a step time is known.
// --calibrate loads the model and runs real steps on random inputs of the largest bucket (with a text-encoder
// LoRA also both encoders, which encode a caption in every step as training does): the measured step time and
// peak beside the prediction.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "app/commands.h"
#include "app/device.h"
#include "app/memory_planning.h"
#include "app/train_options.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "lora/network.h"
#include "lora/text_encoder_network.h"
#include "models/convert.h"
#include "optim/optimizer.h"
#include "sample/text_encoding.h"
#include "train/cpu_allocator.h"
#include "train/device_memory.h"
#include "train/step.h"

namespace fluxtrain::app {
namespace fs = std::filesystem;
namespace {

struct Calibration {
  double step_seconds = 0;
  int64_t peak_bytes = 0;
  int64_t predicted_bytes = 0;
};

// Real steps of the run's model, LoRA and optimizer at `batch` on random inputs of the planned bucket.
Calibration calibrate(const TrainSettings& settings, const PlannedRun& run, at::Device device, at::ScalarType dtype) {
  const ModelFiles files = find_model_files(settings.models);
  models::ModelOptions model_options;
  model_options.device = device;
  model_options.dtype = settings.training.full_finetune ? at::kFloat : dtype;
  model_options.fp8_base = run.inputs.fp8_base && !settings.training.full_finetune;
  models::FluxTransformer model = models::load_flux(files.model, model_options).model;
  std::unique_ptr<lora::LoraNetwork> network;
  std::vector<at::Tensor> params;
  if (settings.training.full_finetune) {
    for (auto& p : model->parameters()) params.push_back(p.requires_grad_(true));
  } else {
    for (auto& p : model->parameters()) p.requires_grad_(false);
    network = std::make_unique<lora::LoraNetwork>(*model, settings.training.lora, settings.training.seed);
    network->set_training(true);
    params = network->parameters();
  }
  // A text-encoder LoRA: both encoders loaded, the trained ones' LoRA, the captions encoded in every step.
  std::unique_ptr<sample::TextEncoders> encoders;
  std::unique_ptr<lora::TextEncoderNetwork> te_network;
  const train::TrainOptions& t = settings.training;
  if (network && (t.train_clip || t.train_t5)) {
    models::ModelOptions encoder_options;
    encoder_options.device = device;
    encoder_options.dtype = dtype;
    sample::TextEncoderOptions text;
    text.t5_max_length = static_cast<int>(run.inputs.text_tokens);
    text.t5_attn_mask = settings.t5_attn_mask;
    encoders = std::make_unique<sample::TextEncoders>(files.clip_l, files.t5xxl, encoder_options, text);
    for (auto& p : encoders->clip().parameters()) p.requires_grad_(false);
    for (auto& p : encoders->t5().parameters()) p.requires_grad_(false);
    te_network = std::make_unique<lora::TextEncoderNetwork>(t.train_clip ? &encoders->clip() : nullptr,
                                                            t.train_t5 ? &encoders->t5() : nullptr, t.lora, t.seed + 3,
                                                            network->dropout_generator());
    te_network->set_training(true);
    for (const at::Tensor& p : te_network->parameters()) params.push_back(p);
  }
  auto optimizer = optim::make_optimizer(settings.training.optimizer, params);
  train::StepOptions step(settings.training.step);
  static_cast<train::CheckpointSettings&>(step.checkpointing) = run.inputs.checkpointing;
  step.compute_dtype = dtype;
  if (network) step.checkpointing.generators = {network->dropout_generator()};
  train::StepGenerators generators{at::detail::createCPUGenerator(1), at::detail::createCPUGenerator(2)};

  const models::FluxConfig& c = run.inputs.model;
  const int64_t b = run.batch, h = run.inputs.image_height / 8, w = run.inputs.image_width / 8;
  at::Generator data = at::detail::createCPUGenerator(3);
  train::LatentBatch batch;
  batch.latents = at::randn({b, c.in_channels / 4, h, w}, data);
  if (encoders) {
    batch.captions.assign(static_cast<size_t>(b), "a photo of ohwx, a red square on a green field");
    step.encode_text = [&encoders](train::LatentBatch& rows) {
      sample::TextEmbeddings e = encoders->encode(rows.captions, at::GradMode::is_enabled());
      rows.t5 = e.t5;
      rows.t5_mask = e.t5_mask;
      rows.clip_pooled = e.clip_pooled;
    };
  } else {
    batch.t5 = at::randn({b, run.inputs.text_tokens, c.context_in_dim}, data);
    batch.clip_pooled = at::randn({b, c.vec_in_dim}, data);
  }
  if (device.is_cuda()) batch = train::pin_for_device(std::move(batch), dtype);

  // What the planner predicts for exactly this (no batches waiting in a prefetch queue).
  train::MemoryPlanInputs inputs = run.inputs;
  inputs.prefetch_batches = 0;
  Calibration out;
  out.predicted_bytes = train::plan_memory(inputs).peak(b);
  if (device.is_cuda())
    train::reset_device_peak_memory(device);
  else
    train::reset_cpu_peak();
  double timed = 0;
  const int64_t steps = settings.plan.calibrate_steps;
  for (int64_t i = 0; i < steps; ++i) {
    const auto started = std::chrono::steady_clock::now();
    train::train_step(*model, *optimizer, {batch}, step, generators);
    if (device.is_cuda()) at::zeros({1}, at::TensorOptions().device(device)).cpu();  // waits for the queue
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (i > 0 || steps == 1) timed += seconds;
  }
  out.step_seconds = timed / static_cast<double>(steps > 1 ? steps - 1 : 1);
  out.peak_bytes = device.is_cuda() ? train::device_peak_allocated_bytes(device) : train::cpu_cache_stats().peak_tensor_bytes;
  return out;
}

std::string duration_text(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return cat(s / 3600, " h ", (s % 3600) / 60, " min");
}

int run_plan(const ResolvedConfig& config) {
  const TrainSettings settings = config.bind<TrainSettings>();
  // A plan for a GPU may be made on a machine without one (before renting it): with --vram, no calibration.
  const bool absent_gpu = settings.compute.device.rfind("cuda", 0) == 0 && !at::hasCUDA() && !settings.plan.calibrate &&
                          settings.vram_gb > 0;
  const at::Device device = absent_gpu ? at::Device(settings.compute.device)
                                       : resolve_device(settings.compute, settings.engine);
  const at::ScalarType precision = resolve_precision(settings.compute.precision, device);
  std::string model_note;
  const models::FluxConfig model = planned_model_config(settings, model_note);

  // The datasets' resolutions and batch sizes from a config file or a folder on disk (a dataset still to
  // be downloaded plans with the fallbacks).
  std::optional<data::DatasetGroupConfig> group;
  data::ConfigOptions options;
  options.fallbacks = settings.dataset_fallbacks;
  if (!settings.dataset_config.empty()) {
    group = data::load_dataset_config(settings.dataset_config, options);
  } else if (!settings.dataset_name.empty() && fs::is_directory(settings.dataset_name)) {
    group = data::folder_dataset_config(settings.dataset_name, options);
  }
  int batch = settings.dataset_fallbacks.batch_size.value_or(1);
  if (group && !group->datasets.empty()) batch = group->datasets.front().batch_size;
  const std::optional<int64_t> free = device.is_cuda() && !absent_gpu
                                          ? std::optional<int64_t>(train::device_free_bytes(device))
                                          : std::nullopt;
  if (absent_gpu) std::cout << "planning for " << device.str() << " (not on this machine) with the given vram\n";
  PlannedRun run = plan_run_memory(settings, model, device.is_cuda(), at::elementSize(precision),
                                   planned_resolution(settings, group ? &*group : nullptr), batch, free, device.str());
  run.model_note = model_note;
  std::vector<int64_t> batches = settings.plan.batches;
  if (run.budget > 0) {
    const int64_t largest = run.plan.largest_batch(run.budget);
    if (largest > 0 && std::find(batches.begin(), batches.end(), largest) == batches.end()) batches.push_back(largest);
    std::sort(batches.begin(), batches.end());
  }
  std::cout << describe_plan(run, batches);

  nlohmann::json json;
  json["model"] = model_note;
  json["image_tokens"] = run.plan.image_tokens;
  json["text_tokens"] = run.plan.text_tokens;
  json["resolution"] = {run.inputs.image_width, run.inputs.image_height};
  json["budget_bytes"] = run.budget;
  json["fixed_bytes"] = run.plan.fixed();
  json["per_image_bytes"] = run.plan.per_image();
  json["batch"] = run.batch;
  json["swapped_blocks"] = run.inputs.blocks_to_swap;
  json["largest_batch"] = run.budget > 0 ? run.plan.largest_batch(run.budget) : 0;
  for (int64_t b : batches) json["rows"].push_back({{"batch", b}, {"peak_bytes", run.plan.peak(b)}});
  for (const auto& term : run.plan.terms)
    json["terms"].push_back({{"name", term.name}, {"bytes", term.bytes}, {"per_image", term.per_image}});
  json["notes"] = run.notes;

  // Steps per epoch and the run's length, when the images are on disk.
  int64_t total_steps = settings.training.max_epochs ? 0 : settings.training.max_steps;
  if (group) {
    for (auto& d : group->datasets)
      if (d.batch_size == data::kAutoBatchSize) d.batch_size = static_cast<int>(run.batch);
    data::ScanOptions scan;
    scan.probe = data::default_image_probe();
    const data::DatasetPlan plan = data::DatasetPlan::build(std::move(*group), scan);
    const int64_t ga = std::max<int64_t>(1, settings.training.gradient_accumulation);
    const int64_t per_epoch = (plan.steps_per_epoch() + ga - 1) / ga;
    if (settings.training.max_epochs) total_steps = *settings.training.max_epochs * per_epoch;
    std::cout << "  steps per epoch: " << per_epoch << " (" << plan.train_samples() << " images with repeats, batch "
              << run.batch << "); steps in the run: " << total_steps << "\n";
    json["steps_per_epoch"] = per_epoch;
  } else if (settings.training.max_epochs) {
    std::cout << "  steps per epoch: unknown (the dataset is not on disk yet)\n";
  }
  json["total_steps"] = total_steps;

  double step_seconds = settings.plan.step_seconds;
  if (settings.plan.calibrate) {
    const Calibration c = calibrate(settings, run, device, precision);
    const double error = static_cast<double>(c.peak_bytes) / static_cast<double>(c.predicted_bytes) - 1.0;
    std::cout << "  calibration (" << settings.plan.calibrate_steps << " steps at batch " << run.batch << " on "
              << device.str() << "): " << c.step_seconds << " s per step, measured peak "
              << train::gigabytes(c.peak_bytes) << " (" << c.peak_bytes << " bytes), predicted "
              << train::gigabytes(c.predicted_bytes) << " (" << c.predicted_bytes << " bytes), error "
              << error * 100.0 << " %\n";
    json["calibration"] = {{"batch", run.batch},
                           {"measured_seconds_per_step", c.step_seconds},
                           {"measured_peak_bytes", c.peak_bytes},
                           {"predicted_peak_bytes", c.predicted_bytes},
                           {"error", error}};
    if (step_seconds <= 0) step_seconds = c.step_seconds;
  }
  if (step_seconds > 0 && total_steps > 0) {
    const double seconds = step_seconds * static_cast<double>(total_steps);
    std::cout << "  ETA: " << duration_text(seconds) << " for " << total_steps << " steps at " << step_seconds
              << " s per step";
    json["eta_seconds"] = seconds;
    if (settings.plan.price_per_hour > 0) {
      const double cost = seconds / 3600.0 * settings.plan.price_per_hour;
      std::cout << ", cost " << cost << " at " << settings.plan.price_per_hour << " per hour";
      json["cost"] = cost;
    }
    std::cout << "\n";
  }
  if (!settings.plan.json.empty()) write_file_atomic(settings.plan.json, json.dump(2) + "\n");
  return 0;
}

}  // namespace

Command add_plan_command(CLI::App& app) {
  return add_table_command(app, command_info("plan"), run_plan);
}

}  // namespace fluxtrain::app
