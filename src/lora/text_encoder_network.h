// LoRA on Flux's text encoders, as kohya's networks/lora_flux.py trains them (network_train_unet_only =
// false): plain LoRA modules (lora/lora_module.h) on every Linear of CLIP-L's encoder layers (q_proj,
// k_proj, v_proj, out_proj, mlp.fc1, mlp.fc2) and, with train_t5xxl, of T5-XXL's blocks (SelfAttention
// q, k, v, o and DenseReluDense wi_0, wi_1, wo). Module names are the component prefix (lora_te1_ CLIP-L,
// lora_te3_ T5) + the Hugging Face module path with '.' -> '_' (lora/keys.h):
//   lora_te1_text_model_encoder_layers_0_self_attn_q_proj, lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0
// The same rank, alpha and dropouts as the transformer's network; the tensors are written into the same
// LoRA file (kohya's layout: one file, lora_unet_ + lora_te1_ [+ lora_te3_] modules).
//
// For `sample` (and anything else that applies a finished file), merge_text_encoder_lora adds a file's
// text-encoder modules to the encoders' weights; it reads kohya (lora_te1_ / lora_te3_) and diffusers/PEFT
// (text_encoder. / text_encoder_2.) names.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lora/lora_module.h"
#include "lora/options.h"

namespace fluxtrain::models {
class ClipTextModelImpl;
class T5EncoderImpl;
class LinearImpl;
}  // namespace fluxtrain::models

namespace fluxtrain::lora {

class TextEncoderNetwork {
 public:
  // Adapters on `clip` and/or `t5` (null: that encoder is not trained; both null is an Error), fp32 on the
  // encoder's device, down matrices drawn from a generator seeded with `seed`, up matrices zero. The
  // dropouts draw from `dropout` (the transformer network's generator, so a training state holds one).
  TextEncoderNetwork(models::ClipTextModelImpl* clip, models::T5EncoderImpl* t5, const LoraOptions& options,
                     uint64_t seed, at::Generator dropout);
  ~TextEncoderNetwork();  // detaches the adapters
  TextEncoderNetwork(const TextEncoderNetwork&) = delete;
  TextEncoderNetwork& operator=(const TextEncoderNetwork&) = delete;

  const std::vector<std::shared_ptr<LoraModule>>& modules() const { return modules_; }
  size_t clip_modules() const { return clip_modules_; }
  size_t t5_modules() const { return modules_.size() - clip_modules_; }
  // Each module's down matrix, then its up matrix (the order LoraNetwork::parameters() uses).
  std::vector<at::Tensor> parameters() const;
  void set_training(bool training);
  void set_multiplier(double multiplier);

  // kohya-format tensors (module.lora_down.weight / .lora_up.weight / .alpha), CPU fp32, sorted by name.
  std::vector<std::pair<std::string, at::Tensor>> kohya_state() const;
  // Loads the text-encoder tensors of a file (keys::is_text_encoder; the others are ignored): every module
  // of this network must be there with the right shapes and every text-encoder tensor must belong to one.
  void load_kohya(const std::map<std::string, at::Tensor>& tensors, const std::string& file);

 private:
  std::vector<std::shared_ptr<LoraModule>> modules_;
  std::vector<std::shared_ptr<models::LinearImpl>> targets_;
  size_t clip_modules_ = 0;
};

// The Linear layers kohya's Flux network adapts in a text encoder, by their module path
// ("text_model.encoder.layers.0.self_attn.q_proj", "encoder.block.0.layer.0.SelfAttention.q").
std::vector<std::pair<std::string, std::shared_ptr<models::LinearImpl>>> clip_lora_targets(
    models::ClipTextModelImpl& clip);
std::vector<std::pair<std::string, std::shared_ptr<models::LinearImpl>>> t5_lora_targets(models::T5EncoderImpl& t5);

// Whether the LoRA file at `path` has text-encoder modules (kohya's lora_te1_ / lora_te3_, diffusers'
// text_encoder. / text_encoder_2.); reads the header only.
bool has_text_encoder_modules(const std::string& path);

struct TextEncoderMergeReport {
  size_t clip_modules = 0;
  size_t t5_modules = 0;
  size_t skipped = 0;  // modules of an encoder that was not given (null)
};

// Adds strength * alpha/rank * up @ down of every text-encoder module of the LoRA file at `path` to the
// weights of `clip` / `t5` (in fp32, stored back in each weight's dtype); modules of an encoder passed as
// null are skipped (counted). A module that names no layer of a given encoder, a shape that does not fit,
// or another adapter type (LoKr, LoHa, DoRA on an encoder) is an Error naming the file and the module.
// Transformer modules are not looked at.
TextEncoderMergeReport merge_text_encoder_lora(const std::string& path, models::ClipTextModelImpl* clip,
                                               models::T5EncoderImpl* t5, double strength);

}  // namespace fluxtrain::lora
