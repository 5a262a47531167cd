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
at::Tensor sample_sigmas(int64_t batch, int64_t image_tokens, const ObjectiveOptions& options, at::Generator& generator);

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
// the mask's sum.
at::Tensor flow_loss(const at::Tensor& pred, const at::Tensor& target, const ObjectiveOptions& options,
                     const at::Tensor& mask = {});

}  // namespace fluxtrain::train
