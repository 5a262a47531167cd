// The two text encoders Flux is conditioned on, with their tokenizers: T5-XXL gives the token
// sequence (`txt`, [B, L, 4096]), CLIP-L the pooled vector (`y`, [B, 768]). Used by the text cache and
// by the sampler; the models can be freed (reset) once every caption is cached.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "models/options.h"

namespace fluxtrain::models {
class ClipTextModelImpl;
class T5EncoderImpl;
}  // namespace fluxtrain::models

namespace fluxtrain::sample {

struct TextEmbeddings {
  at::Tensor t5;           // [B, L, D] in the encoders' dtype
  at::Tensor t5_mask;      // [B, L] int64, 1 for tokens and </s>
  at::Tensor clip_pooled;  // [B, D]
};

struct TextEncoderOptions {
  int t5_max_length = 512;    // 512 for dev, 256 for schnell (BFL)
  bool t5_attn_mask = false;  // pass the padding mask into T5's attention (kohya apply_t5_attn_mask)
};

class TextEncoders {
 public:
  // Loads both encoders (strict, any supported layout) and the shipped tokenizers.
  TextEncoders(const std::string& clip_path, const std::string& t5_path, const models::ModelOptions& options,
               TextEncoderOptions text_options);
  ~TextEncoders();
  TextEncoders(const TextEncoders&) = delete;
  TextEncoders& operator=(const TextEncoders&) = delete;

  // Encodes a batch of captions. Outputs are on the models' device. No gradients unless `with_grad` (a
  // trained text-encoder LoRA: the adapters' parameters then get gradients through the outputs).
  TextEmbeddings encode(const std::vector<std::string>& captions, bool with_grad = false);
  // The models, for LoRA adapters (lora/text_encoder_network.h) and merges.
  models::ClipTextModelImpl& clip();
  models::T5EncoderImpl& t5();
  const TextEncoderOptions& options() const { return text_options_; }

 private:
  struct State;
  std::unique_ptr<State> state_;
  TextEncoderOptions text_options_;
};

}  // namespace fluxtrain::sample
