// Sampling images from a Flux transformer (spec/training.md "Samples"): BFL's Euler sampler on the
// rectified-flow ODE with dev's resolution-dependent time shift, CPU-seeded noise, optional true
// classifier-free guidance, and the AE decode to 8-bit pixels.
//
// Reference: black-forest-labs/flux `sampling.py` (get_noise, get_schedule, denoise, unpack) and
// diffusers' FluxPipeline for true CFG (`true_cfg_scale` with a negative prompt):
//   noise  randn([1, 16, 2*ceil(H/16), 2*ceil(W/16)]) fp32 from a CPU generator seeded with the seed
//   t      linspace(1, 0, steps + 1), shifted (dev) by t' = e^mu / (e^mu + 1/t - 1),
//          mu linear in the image tokens from (256, 0.5) to (4096, 1.15); schnell: no shift
//   step   x += (t_next - t) * v,  v = model(x, t, guidance)      (cfg != 1: v = neg + cfg * (pos - neg))
//   image  clamp(decode(x), -1, 1), (x + 1) * 127.5, rounded to nearest
// The latents stay fp32 between steps; each forward runs in the compute dtype.
//
// The trainer's sample hook is a Sampler: it owns the AE and the prompts' text embeddings (computed once,
// up front, so the text encoders can be freed before training; again before each rendering while a
// text-encoder LoRA trains, with the trained encoders) and renders with whatever transformer it
// is handed — the training model with its LoRA attached, or a base model with LoRAs merged.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/image.h"
#include "models/ae/autoencoder.h"
#include "sample/comfyui.h"
#include "sample/prompts.h"

namespace fluxtrain::models {
class FluxTransformerImpl;
}

namespace fluxtrain::sample {

struct SampleSettings {
  int width = 1024;  // multiples of 16
  int height = 1024;
  int steps = 20;
  double guidance = 3.5;  // dev's embedded guidance (ignored by schnell)
  double cfg = 1.0;       // true CFG scale; 1 = off (one forward per step)
  uint64_t seed = 0;
  std::string negative;  // the negative prompt's text (its embedding is passed separately)
  // Time shift of the schedule; unset: shift when the model has a guidance embedding (dev), not
  // without one (schnell), as BFL and kohya decide by the model.
  std::optional<bool> shift;
};

// The text conditioning of one prompt, batch 1: T5 states [1, L, D], optional T5 mask [1, L] (1 = token;
// passed to the transformer only when defined, as kohya's apply_t5_attn_mask), CLIP pooled [1, Dy].
struct Conditioning {
  at::Tensor txt;
  at::Tensor txt_mask;
  at::Tensor y;
};

// The timesteps t_0 = 1 > ... > t_steps = 0 as fp32 [steps + 1] (computed with the same fp32 tensor
// operations as BFL's get_schedule). `shift` false: the plain linspace (schnell).
at::Tensor schedule(int steps, int64_t image_tokens, bool shift);

// mu of the time shift for a number of image tokens (BFL get_lin_function(256, 0.5, 4096, 1.15)).
double schedule_mu(int64_t image_tokens);

// CPU fp32 noise [1, 16, 2*ceil(height/16), 2*ceil(width/16)] from a generator seeded with `seed`
// (equals torch.randn(shape, generator=torch.Generator().manual_seed(seed))).
at::Tensor initial_noise(int width, int height, uint64_t seed);

// Runs the Euler sampler and returns the final latents [1, 16, h, w] fp32 on the model's device.
// `negative` is used only when settings.cfg != 1 (it must then be given). `compute_dtype` Undefined:
// the dtype of the model's img_in weight. Throws Error for a size that is not a positive multiple of 16
// or steps < 1.
at::Tensor sample_latents(models::FluxTransformerImpl& model, const Conditioning& positive,
                          const Conditioning* negative, const SampleSettings& settings,
                          at::ScalarType compute_dtype = at::ScalarType::Undefined);

// AE decode of latents [1, 16, h, w] to an RGB image: clamp to [-1, 1], (x + 1) * 127.5, round.
data::Image decode_to_image(models::AutoEncoderImpl& ae, const at::Tensor& latents);

// Encodes texts to one Conditioning each (on any device; the Sampler keeps them on the CPU).
using TextEncodeFn = std::function<std::vector<Conditioning>(const std::vector<std::string>&)>;

struct SamplerOptions {
  std::filesystem::path out_dir;  // created if needed
  std::string name = "sample";    // file name prefix: {name}_{step:06d}_{idx:02d}_{seed}.png
  uint64_t run_seed = 42;         // seeds of prompts without --d (sample_seed)
  std::optional<bool> shift;      // see SampleSettings::shift
  // tEXt chunks added to every PNG besides the prompt's own, e.g. {"model", "flux1-dev.safetensors"},
  // {"loras", "a.safetensors:0.8"}.
  std::vector<std::pair<std::string, std::string>> text;
  // The ComfyUI graph written into each PNG's `prompt` chunk (sample/comfyui.h), which ComfyUI rebuilds when
  // the PNG is dropped on it: the files and LoRAs come from here, the prompt, seed, steps, guidance, cfg,
  // size and shift are each sample's. Unset: no graph.
  std::optional<ComfyGraph> comfy;
  // The graph's LoRAs for the samples of a training step (the file a user loads for that picture); unset:
  // comfy->loras.
  std::function<std::vector<ComfyLora>(int64_t step)> comfy_loras;
};

class Sampler {
 public:
  // Encodes every prompt (and the negative prompts of those with cfg != 1) with `encode` right away,
  // so the caller can free the text encoders when this returns. Width/height must be multiples of 16
  // (load_prompts rounds them). `ae` is used for every decode (its device and dtype are kept).
  Sampler(models::AutoEncoder ae, std::vector<SamplePrompt> prompts, const TextEncodeFn& encode,
          SamplerOptions options);

  // Encodes the prompts again, replacing the embeddings (the trainer's samples while a text-encoder LoRA
  // trains: the encoders as trained so far).
  void encode_prompts(const TextEncodeFn& encode);

  // Renders every prompt with `model` (no gradients; the caller puts LoRA dropouts in eval mode) and
  // writes the PNGs; returns their paths. `step` names the files and goes into the text chunks.
  std::vector<std::filesystem::path> render(int64_t step, models::FluxTransformerImpl& model);

  const std::vector<SamplePrompt>& prompts() const { return prompts_; }
  // The settings of prompt `index` (seed resolved).
  SampleSettings settings(size_t index) const;

 private:
  models::AutoEncoder ae_;
  std::vector<SamplePrompt> prompts_;
  std::vector<Conditioning> positive_;
  std::vector<Conditioning> negative_;  // undefined tensors where cfg == 1
  SamplerOptions options_;
};

}  // namespace fluxtrain::sample
