// The CLIP-L text encoder (clip_l.safetensors), HF CLIPTextModel layout: module paths are the file's
// `text_model.` keys (spec/flux.md §3). Pre-LN transformer with a causal mask and quick_gelu; Flux uses
// the pooled output: the final-LN hidden state at the first EOS, argmax(ids) per row.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>

#include "core/safetensors_format.h"
#include "models/layers.h"
#include "models/linear.h"
#include "models/options.h"
#include "models/stated_config.h"

namespace fluxtrain::models {

struct ClipConfig {
  int64_t hidden_size = 768;
  int64_t num_heads = 12;
  int64_t num_layers = 12;
  int64_t intermediate_size = 3072;
  int64_t max_positions = 77;
  int64_t vocab_size = 49408;
  double layer_norm_eps = 1e-5;

  static ClipConfig clip_l() { return ClipConfig{}; }
  // From tensor names and shapes (prefix already removed), and the head count, which no tensor's shape
  // holds: "num_attention_heads" of `stated` (a transformers config.json of the text model) when it
  // states it, else hidden / 64, since every released CLIP text tower has heads of width 64 (L 768/12,
  // H 1024/16, bigG 1280/20); a width that is not a multiple of 64 without a stated head count is an Error.
  static ClipConfig detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                           const std::string& file, const StatedConfig& stated = {});
  void validate(const std::string& file) const;
};

class ClipAttentionImpl : public torch::nn::Module {
 public:
  ClipAttentionImpl(int64_t hidden, int64_t heads, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // causal
  int64_t heads;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  ClipMlpImpl(int64_t hidden, int64_t intermediate, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);  // fc2(quick_gelu(fc1(x)))
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

class ClipLayerImpl : public torch::nn::Module {
 public:
  ClipLayerImpl(const ClipConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  ClipAttention self_attn{nullptr};
  LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  ClipMlp mlp{nullptr};
};
TORCH_MODULE(ClipLayer);

// The `text_model.` part: embeddings, encoder.layers, final_layer_norm.
class ClipTransformerImpl : public torch::nn::Module {
 public:
  ClipTransformerImpl(const ClipConfig& config, const at::TensorOptions& options);
  torch::nn::ModuleList layers{nullptr};                            // registered as `encoder.layers`
  Embedding token_embedding{nullptr}, position_embedding{nullptr};  // under `embeddings.`
  LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(ClipTransformer);

struct ClipOutput {
  at::Tensor last_hidden_state;  // [B, L, hidden], after the final LayerNorm
  at::Tensor pooled;             // [B, hidden]: last_hidden_state at argmax(ids) per row (the first EOS)
};

class ClipTextModelImpl : public torch::nn::Module {
 public:
  // CLIP ignores `fp8_base` (kohya keeps it out of fp8 too at this size); dtype and device apply.
  ClipTextModelImpl(const ClipConfig& config, const ModelOptions& options);
  // ids [B, L] integer token ids, L <= max_positions. No attention mask (BFL passes none).
  ClipOutput forward(const at::Tensor& ids);
  at::Tensor pooled(const at::Tensor& ids) { return forward(ids).pooled; }

  ClipConfig config;
  ClipTransformer text_model{nullptr};
};
TORCH_MODULE(ClipTextModel);

}  // namespace fluxtrain::models
