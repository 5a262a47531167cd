// Setting up the sampler for `fluxtrain sample` and for the trainer's sample hook: the text encoders are
// loaded, every prompt (and negative prompt) is encoded once, the encoders are freed, and the AE is
// loaded. What is left in memory while training is the AE and the prompts' embeddings (on the CPU).
//
// Trainer use:
//   auto sampler = sample::make_sampler(setup);
//   train::SampleHook hook = [&](int64_t step, models::FluxTransformerImpl& model, TextEncoders* trained) {
//     if (trained) sampler->encode_prompts(text_encode_fn(*trained));
//     return sampler->render(step, model);
//   };
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/options.h"
#include "sample/prompts.h"
#include "sample/sampler.h"
#include "sample/text_encoding.h"

namespace fluxtrain::sample {

struct SamplerSetup {
  std::string ae_path;
  std::string clip_path;
  std::string t5_path;
  models::ModelOptions options;  // device and dtype of the AE and the text encoders (fp8_base: T5)
  TextEncoderOptions text;       // T5 length (512 dev, 256 schnell); t5_attn_mask also masks the transformer
  std::vector<SamplePrompt> prompts;
  SamplerOptions sampler;
  // LoRA files (and strengths) whose text-encoder modules (lora_te1_ CLIP-L, lora_te3_ T5) are merged into
  // the encoders before the prompts are encoded; their transformer modules are the caller's to merge.
  std::vector<std::pair<std::string, double>> text_encoder_loras;
};

std::unique_ptr<Sampler> make_sampler(const SamplerSetup& setup);

// The sample-prompt encoder over loaded text encoders: one text at a time (batch 1, as the references
// encode), CLIP pooled + T5 states, and the T5 mask when `text.t5_attn_mask`.
TextEncodeFn text_encode_fn(TextEncoders& encoders);

}  // namespace fluxtrain::sample
