// Setting up the sampler for `fluxtrain sample` and for the trainer's sample hook: the text encoders are
// loaded, every prompt (and negative prompt) is encoded once, the encoders are freed, and the AE is
// loaded. What is left in memory while training is the AE and the prompts' embeddings (on the CPU).
//
// Trainer use:
//   auto sampler = app::make_sampler(setup);
//   train::SampleHook hook = [&](int64_t step, models::FluxTransformerImpl& model) { sampler->render(step, model); };
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/prompts.h"
#include "models/options.h"
#include "sample/sampler.h"
#include "train/text_encoding.h"

namespace fluxtrain::app {

struct SamplerSetup {
  std::string ae_path;
  std::string clip_path;
  std::string t5_path;
  models::ModelOptions options;    // device and dtype of the AE and the text encoders (fp8_base: T5)
  train::TextEncoderOptions text;  // T5 length (512 dev, 256 schnell); t5_attn_mask also masks the transformer
  std::vector<data::SamplePrompt> prompts;
  sample::SamplerOptions sampler;
};

std::unique_ptr<sample::Sampler> make_sampler(const SamplerSetup& setup);

// The sample-prompt encoder over loaded text encoders: one text at a time (batch 1, as the references
// encode), CLIP pooled + T5 states, and the T5 mask when `text.t5_attn_mask`.
sample::TextEncodeFn text_encode_fn(train::TextEncoders& encoders);

}  // namespace fluxtrain::app
