// The rectified-flow objective Flux is trained with (spec/training.md "Objective"): sigma sampling,
// noising, the velocity target and the loss. One CPU generator per purpose (timesteps, noise) makes a
// run reproducible on any device.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <string>

#include "train/options.h"

namespace fluxtrain::train {

// sigma in (0, 1) for each sample. `image_tokens` is the packed sequence length (flux_shift uses it):
//   uniform     U(0, 1)
//   sigmoid     sigmoid(scale * N(0, 1))
//   shift       s * t / (1 + (s - 1) t),  t = sigmoid(scale * N(0, 1)),  s = discrete_flow_shift
//   flux_shift  e^mu / (e^mu + 1/t - 1),  mu = 0.5 + 0.65 (tokens - 256) / 3840 (linear through
//               (256, 0.5) and (4096, 1.15)),  t = sigmoid(scale * N(0, 1))
//   sigma       kohya's and SD3's: u from timestep_density, then the sigma of the training scheduler's
//               step floor(u * 1000): with diffusers' FlowMatchEulerDiscreteScheduler(1000 steps,
//               shift = discrete_flow_shift), sigma_i = s v / (1 + (s - 1) v), v = (1000 - i) / 1000
at::Tensor sample_sigmas(int64_t batch, int64_t image_tokens, const ObjectiveOptions& options, at::Generator& generator);

// u in [0, 1] per sample by the weighting scheme (diffusers' compute_density_for_timestep_sampling):
//   logit_normal  sigmoid(N(logit_mean, logit_std));  mode  1 - u - mode_scale (cos^2(pi u / 2) - 1 + u),
//   u ~ U(0, 1);  otherwise U(0, 1).
at::Tensor timestep_density(int64_t batch, const ObjectiveOptions& options, at::Generator& generator);

// The per-sample loss weight of the weighting scheme (diffusers' compute_loss_weighting_for_sd3) for
// sigmas [B]: sigma_sqrt 1 / sigma^2, cosmap 2 / (pi (1 - 2 sigma + 2 sigma^2)), otherwise 1. Applied with
// every prediction type (as diffusers' and kohya's SD3 trainers do; kohya's Flux trainer applies it with
// sigma_scaled only and ignores it otherwise).
at::Tensor loss_weighting(WeightingScheme scheme, const at::Tensor& sigmas);

// kohya's model_prediction_type (library/flux_train_utils.py apply_model_prediction_type): raw `pred`;
// additive pred + noisy; sigma_scaled noisy - sigma pred (an estimate of x0). `noisy` is the model input
// in pred's layout, sigmas [B].
at::Tensor apply_prediction_type(PredictionType type, const at::Tensor& pred, const at::Tensor& noisy,
                                 const at::Tensor& sigmas);

// Gaussian noise of `shape` [B, C, H, W] (fp32, CPU), plus noise_offset * N(0, 1) per (sample, channel)
// broadcast over H x W, in latent space before packing (the SD-era definition).
at::Tensor sample_noise(at::IntArrayRef shape, double noise_offset, at::Generator& generator);

struct NoisedLatents {
  at::Tensor noisy;   // (1 - sigma) x0 + sigma noise, same layout as the inputs
  at::Tensor target;  // noise - x0 (the velocity)
};
NoisedLatents add_noise(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& sigmas);

// Per-sample mean of the elementwise loss, then the mean over the batch (fp32). `mask`, if defined, is
// broadcast over pred and weights the elements (alpha-mask training); the per-sample mean then divides by
// the mask's sum. `weights` [B], if defined, multiplies each sample's loss (loss_weighting).
at::Tensor flow_loss(const at::Tensor& pred, const at::Tensor& target, const ObjectiveOptions& options,
                     const at::Tensor& mask = {}, const at::Tensor& weights = {});

}  // namespace fluxtrain::train
