// The T5 v1.1 encoder (t5xxl_fp16.safetensors), HF T5EncoderModel layout: module paths are the file's
// keys (spec/flux.md §4). RMS layer norms (fp32 variance), attention without 1/sqrt(d) and with a
// relative position bias computed from block 0's table and shared by all blocks, gated-GELU (tanh) FFN,
// optional padding mask. The file's duplicate `encoder.embed_tokens.weight` (= shared.weight) is not a
// parameter here; the loader ignores it explicitly.
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

namespace fluxtrain::models {

struct T5Config {
  int64_t d_model = 4096;
  int64_t d_kv = 64;
  int64_t num_heads = 64;
  int64_t d_ff = 10240;
  int64_t num_layers = 24;
  int64_t num_buckets = 32;
  int64_t max_distance = 128;  // not stored in the weights; 128 for every T5 v1.1
  int64_t vocab_size = 32128;
  double layer_norm_eps = 1e-6;

  int64_t inner_dim() const { return num_heads * d_kv; }
  static T5Config xxl() { return T5Config{}; }
  // From tensor names and shapes alone (prefix already removed); heads from the bias table's width.
  static T5Config detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                         const std::string& file);
};

// weight * x / sqrt(mean(x^2) + eps): variance in fp32, no mean, no bias; cast to the weight's dtype
// (when fp16/bf16) before the scale, as HF T5LayerNorm.
class T5LayerNormImpl : public torch::nn::Module {
 public:
  T5LayerNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(T5LayerNorm);

class T5AttentionImpl : public torch::nn::Module {
 public:
  T5AttentionImpl(const T5Config& config, bool has_relative_bias, const ModelOptions& options);
  // bias: [B or 1, heads, L, L] position bias (+ mask), added to the unscaled scores.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& bias);
  int64_t heads, d_kv;
  Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  Embedding relative_attention_bias{nullptr};  // block 0 only: [num_buckets, heads]
};
TORCH_MODULE(T5Attention);

// `layer.0`: layer_norm + SelfAttention.
class T5SelfAttentionLayerImpl : public torch::nn::Module {
 public:
  T5SelfAttentionLayerImpl(const T5Config& config, bool has_relative_bias, const ModelOptions& options);
  T5Attention SelfAttention{nullptr};
  T5LayerNorm layer_norm{nullptr};
};
TORCH_MODULE(T5SelfAttentionLayer);

// `layer.1`: layer_norm + DenseReluDense (wi_0, wi_1, wo): wo(gelu_tanh(wi_0(h)) * wi_1(h)).
class T5FeedForwardLayerImpl : public torch::nn::Module {
 public:
  T5FeedForwardLayerImpl(const T5Config& config, const ModelOptions& options);
  Linear wi_0{nullptr}, wi_1{nullptr}, wo{nullptr};  // under `DenseReluDense.`
  T5LayerNorm layer_norm{nullptr};
};
TORCH_MODULE(T5FeedForwardLayer);

class T5BlockImpl : public torch::nn::Module {
 public:
  T5BlockImpl(const T5Config& config, bool has_relative_bias, const ModelOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& bias);
  torch::nn::ModuleList layer{nullptr};
  T5SelfAttentionLayer attention{nullptr};   // layer.0
  T5FeedForwardLayer feed_forward{nullptr};  // layer.1
};
TORCH_MODULE(T5Block);

// The `encoder.` part: block.N, final_layer_norm.
class T5StackImpl : public torch::nn::Module {
 public:
  T5StackImpl(const T5Config& config, const ModelOptions& options);
  torch::nn::ModuleList block{nullptr};
  T5LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(T5Stack);

class T5EncoderImpl : public torch::nn::Module {
 public:
  // fp8 base: the 2-D Linear weights inside encoder.block.* are stored as float8_e4m3fn and upcast per
  // layer; embeddings, norms and relative_attention_bias keep `options.dtype`.
  T5EncoderImpl(const T5Config& config, const ModelOptions& options);
  // ids [B, L] integer; mask optional [B, L] (1 = real token): padded keys get (1 - mask) * finfo.min.
  // Returns the final-LN hidden states [B, L, d_model].
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& mask = {});
  // [1, heads, L, L] in the table's dtype, from block 0's relative_attention_bias.
  at::Tensor position_bias(int64_t length);

  T5Config config;
  Embedding shared{nullptr};
  T5Stack encoder{nullptr};
};
TORCH_MODULE(T5Encoder);

// HF T5Attention._relative_position_bucket, bidirectional, with the same float32 ops: relative
// positions (key - query, int64) -> bucket ids (int64).
at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets = 32,
                                       int64_t max_distance = 128);

}  // namespace fluxtrain::models
