#include "sample/text_encoding.h"

#include <ATen/ATen.h>

#include "models/convert.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"

namespace fluxtrain::sample {

struct TextEncoders::State {
  models::LoadedClip clip;
  models::LoadedT5 t5;
  ClipTokenizer clip_tokenizer = ClipTokenizer::from_assets();
  T5Tokenizer t5_tokenizer = T5Tokenizer::from_assets();
  at::Device device = at::kCPU;
};

TextEncoders::TextEncoders(const std::string& clip_path, const std::string& t5_path,
                           const models::ModelOptions& options, TextEncoderOptions text_options)
    : state_(std::make_unique<State>()), text_options_(text_options) {
  state_->clip = models::load_clip(clip_path, options);
  state_->t5 = models::load_t5(t5_path, options);
  state_->device = options.device;
}

TextEncoders::~TextEncoders() = default;

models::ClipTextModelImpl& TextEncoders::clip() { return *state_->clip.model; }
models::T5EncoderImpl& TextEncoders::t5() { return *state_->t5.model; }

TextEmbeddings TextEncoders::encode(const std::vector<std::string>& captions, bool with_grad) {
  at::AutoGradMode grad_mode(with_grad);
  const int64_t batch = static_cast<int64_t>(captions.size());
  const int length = text_options_.t5_max_length;
  std::vector<int64_t> clip_ids, t5_ids, t5_mask;
  clip_ids.reserve(batch * ClipTokenizer::kContextLength);
  for (const std::string& caption : captions) {
    for (int32_t id : state_->clip_tokenizer.encode(caption)) clip_ids.push_back(id);
    T5Encoding e = state_->t5_tokenizer.encode(caption, length);
    t5_ids.insert(t5_ids.end(), e.ids.begin(), e.ids.end());
    t5_mask.insert(t5_mask.end(), e.attention_mask.begin(), e.attention_mask.end());
  }
  auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor clip = at::tensor(clip_ids, i64).view({batch, ClipTokenizer::kContextLength});
  at::Tensor ids = at::tensor(t5_ids, i64).view({batch, length});
  at::Tensor mask = at::tensor(t5_mask, i64).view({batch, length});
  TextEmbeddings out;
  out.clip_pooled = state_->clip.model->pooled(clip.to(state_->device));
  at::Tensor device_mask = mask.to(state_->device);
  out.t5 = state_->t5.model->forward(ids.to(state_->device), text_options_.t5_attn_mask ? device_mask : at::Tensor());
  out.t5_mask = device_mask;
  return out;
}

}  // namespace fluxtrain::sample
