// Training a Flux-architecture autoencoder from scratch: what made the embedded demo's tiny AE
// (`fluxtrain demo --build-assets`, docs/demo.md). Users fine-tune LoRAs on the real ae.safetensors and
// never need this; the demo needs an AE that fits in a few MB and that fluxtrain made itself.
//
// Objective (a KL-regularised autoencoder, as the Flux AE was trained, minus its GAN and perceptual
// terms): L1(decode(z), x) + kl_weight * KL(q(z|x) || N(0, 1)), where z is sampled from the posterior
// and the KL is taken on the latents as the transformer sees them (scale * (z - shift), the Flux.1
// normalisation), so that a flow-matching model trained on them sees unit-scale data.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "models/ae/autoencoder.h"

namespace fluxtrain::train {

struct AeTrainingOptions {
  int64_t steps = 2000;
  double learning_rate = 1e-3;  // AdamW, cosine decay after a linear warmup
  int64_t warmup_steps = 100;
  double kl_weight = 1e-3;
  uint64_t seed = 0;  // the posterior noise
  int64_t log_every = 100;
};

struct AeTrainingResult {
  double first_loss = 0;
  double last_loss = 0;        // mean L1 of the last log_every steps
  double latent_mean = 0;      // of the scaled posterior means on the last batch
  double latent_std = 0;
};

// Trains `ae` in place; batch(step) gives pixels [B, 3, H, W] in [-1, 1] on the AE's device.
AeTrainingResult train_autoencoder(models::AutoEncoderImpl& ae, const std::function<at::Tensor(int64_t)>& batch,
                                   const AeTrainingOptions& options);

}  // namespace fluxtrain::train
