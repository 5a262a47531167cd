// What a training run is asked to do, as plain torch-free data: the objective, gradient checkpointing,
// the LoRA, the optimizer and schedule, the run's length, cadences and seed. The train option table
// (src/app/train_options.cpp) fills TrainOptions; the trainer (train/trainer.h) takes it together with
// what the app resolves at run time (device, dtype, folders, the resume state).
//
// Member initialisers are the option table's defaults; a unit test holds every one of them equal to the
// table's, so code that builds these structs directly (tests, benchmarks) trains like a default run.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/enum_names.h"
#include "lora/options.h"
#include "models/linear_modes.h"
#include "optim/options.h"
#include "optim/schedule.h"

namespace fluxtrain::train {

enum class TimestepSampling { uniform, sigmoid, shift, flux_shift, sigma };
constexpr std::array<EnumName<TimestepSampling>, 5> enum_names(TimestepSampling) {
  return {{{"uniform", TimestepSampling::uniform},
           {"sigmoid", TimestepSampling::sigmoid},
           {"shift", TimestepSampling::shift},
           {"flux_shift", TimestepSampling::flux_shift},
           {"sigma", TimestepSampling::sigma}}};
}

// SD3's weighting schemes (kohya's weighting_scheme, diffusers' compute_density_for_timestep_sampling and
// compute_loss_weighting_for_sd3): logit_normal and mode shape timestep_sampling sigma's draw; sigma_sqrt
// and cosmap weight the loss per sample.
enum class WeightingScheme { none, sigma_sqrt, logit_normal, mode, cosmap };
constexpr std::array<EnumName<WeightingScheme>, 5> enum_names(WeightingScheme) {
  return {{{"none", WeightingScheme::none},
           {"sigma_sqrt", WeightingScheme::sigma_sqrt},
           {"logit_normal", WeightingScheme::logit_normal},
           {"mode", WeightingScheme::mode},
           {"cosmap", WeightingScheme::cosmap}}};
}

// kohya's model_prediction_type: how the transformer's output becomes the prediction compared with the
// velocity target (flow_matching.h apply_prediction_type).
enum class PredictionType { raw, additive, sigma_scaled };
constexpr std::array<EnumName<PredictionType>, 3> enum_names(PredictionType) {
  return {{{"raw", PredictionType::raw}, {"additive", PredictionType::additive}, {"sigma_scaled", PredictionType::sigma_scaled}}};
}

enum class LossType { l2, l1, huber, smooth_l1 };
constexpr std::array<EnumName<LossType>, 4> enum_names(LossType) {
  return {{{"l2", LossType::l2}, {"l1", LossType::l1}, {"huber", LossType::huber}, {"smooth_l1", LossType::smooth_l1}}};
}

// The rectified-flow objective (train/flow_matching.h).
struct ObjectiveOptions {
  TimestepSampling sampling = TimestepSampling::sigmoid;
  double sigmoid_scale = 1.0;        // kohya sigmoid_scale
  double discrete_flow_shift = 3.1582;  // kohya discrete_flow_shift (for `shift`; the seed's default)
  LossType loss = LossType::l2;
  double huber_c = 0.1;         // kohya huber_c (constant schedule)
  double noise_offset = 0.1;    // the seed's; really applied (kohya's Flux path ignores it, issue #1861)
  double guidance_scale = 1.0;  // the dev guidance vector during training
  WeightingScheme weighting = WeightingScheme::none;  // kohya weighting_scheme ("uniform" is none)
  double logit_mean = 0.0;                            // logit_normal's mean and deviation
  double logit_std = 1.0;
  double mode_scale = 1.29;                            // mode's scale
  PredictionType prediction = PredictionType::raw;     // kohya model_prediction_type
};

// Gradient checkpointing per block (train/checkpointing.h).
struct CheckpointSettings {
  bool enabled = true;
  bool offload_inputs = false;  // keep saved block inputs in (pinned) host memory
  bool keep_attention = true;   // keep each block's attention output for the recomputation
  models::KeepProducts keep_products = models::KeepProducts::outputs;  // ... and these products' outputs
  // checkpoint_keep_products = auto: the products per block (as flux_forward counts them), chosen by the
  // memory planner (train/memory_plan.h); empty: keep_products for every block.
  std::vector<models::KeepProducts> keep_per_block;
  int64_t interval = 1;  // checkpoint blocks 0, N, 2N, ... (never the last)
};

// One training step (train/step.h) but for the compute dtype, which the app resolves.
struct StepSettings {
  ObjectiveOptions objective;
  CheckpointSettings checkpointing;
  bool apply_t5_mask = false;  // mask padded T5 tokens in every attention (kohya apply_t5_attn_mask)
  double max_grad_norm = 1.0;  // 0 = no clipping (kohya's default is 1.0)
};

// The exponential moving average of the trained weights (train/ema.h), as diffusers' EMAModel (which
// SimpleTuner and ai-toolkit follow): update k gets decay min(ema_decay, (1 + s) / (10 + s)), or with the
// warm-up 1 - (1 + s / inv_gamma)^-power, floored at min_decay, where s = k - update_after_step - 1 (s <= 0:
// the average is set to the weights).
enum class EmaDevice { cpu, accelerator };
constexpr std::array<EnumName<EmaDevice>, 2> enum_names(EmaDevice) {
  return {{{"cpu", EmaDevice::cpu}, {"accelerator", EmaDevice::accelerator}}};
}

struct EmaOptions {
  double decay = 0;  // ema_decay; 0 = no EMA
  double min_decay = 0;
  int64_t update_after_step = 0;  // EMA updates that only copy the weights (diffusers update_after_step)
  bool warmup = false;            // use_ema_warmup
  double inv_gamma = 1.0;
  double power = 2.0 / 3.0;
  int64_t update_interval = 1;  // an update after every N optimizer steps (SimpleTuner ema_update_interval)
  EmaDevice device = EmaDevice::cpu;
  bool samples = false;  // render the samples with the EMA weights
  bool enabled() const { return decay > 0; }
};

struct TrainOptions {
  bool full_finetune = false;  // network_type none: every transformer weight trains (fp32 master weights)
  lora::LoraOptions lora;
  std::string network_weights;  // start from this LoRA file (any layout lora/convert.h reads)
  bool dim_from_weights = false;  // the network's modules, ranks and alphas are network_weights' (kohya)
  EmaOptions ema;
  // Text-encoder LoRA (kohya's network_train_unet_only = false; lora/text_encoder_network.h): adapters on
  // CLIP-L (and T5-XXL with train_t5xxl), trained at text_encoder_lr (unset: learning_rate). A trained
  // encoder runs in every step, so the text cache is off for such a run.
  bool train_clip = false;
  bool train_t5 = false;
  std::optional<double> text_encoder_lr;
  bool fp8_base = true;         // the seed's; frozen block weights stored as float8_e4m3fn
  int64_t blocks_to_swap = 0;   // the last N transformer blocks' weights wait in host memory (train/block_swap.h)
  optim::OptimizerSettings optimizer;
  optim::ScheduleOptions schedule;  // num_training_steps is filled in by the trainer
  StepSettings step;
  int64_t gradient_accumulation = 1;
  // Data parallelism: 1 = each rank keeps the optimizer state of its share of the trained tensors only
  // (ZeRO stage 1) and sends their new values to the others after each step; 0 = every rank keeps all.
  int zero_stage = 0;
  int prefetch_batches = 4;           // batches a background thread prepares ahead; 0 = each in the loop when needed
  std::optional<int64_t> max_epochs;  // set: the run's length in epochs, and max_steps is not used
  int64_t max_steps = 1600;
  uint64_t seed = 42;

  std::string output_name = "flux-lora";
  lora::SavePrecision save_precision = lora::SavePrecision::bf16;  // of the LoRA files
  int64_t save_every_n_steps = 100;                                // the seed's (train-flux.sh)
  int64_t save_every_n_epochs = 0;
  int keep_last_n = 0;                   // intermediate step/epoch files kept (0 = all)
  bool save_state = true;                // a state with every intermediate save (the final and a signal's state always)
  int max_nonfinite_steps = 10;          // skipped (non-finite) steps in a row that stop the run (0: never stop)
  double stop_grace_seconds = 5;         // the time between SIGTERM and SIGKILL planned for (core/stop.h)
  double save_state_every_minutes = 10;  // a state when this long has passed since the last one (0 = off)
  int keep_last_n_states = 2;            // complete states kept (>= 1)
  int64_t sample_every_n_steps = 200;    // the seed's (train-flux.sh)
  int64_t sample_every_n_epochs = 0;
  bool sample_at_first = false;
  // The validation loss (with held-out images, TrainerConfig's validation source): every N steps, every N
  // epochs, and with every saved LoRA file.
  int64_t validate_every_n_steps = 0;
  int64_t validate_every_n_epochs = 1;
  double log_every_seconds = 10;
};

}  // namespace fluxtrain::train
