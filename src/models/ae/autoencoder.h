// The Flux.1 autoencoder (ae.safetensors), BFL layout: module paths are the file's keys
// (spec/flux.md §2). encode() returns scaled latents from the posterior mean (BFL `sample_z=False`);
// decode() maps latents back to pixels. GroupNorm(32, eps 1e-6) statistics are computed in fp32.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

#include "core/safetensors_format.h"
#include "models/layers.h"
#include "models/options.h"

namespace fluxtrain::models {

struct AeConfig {
  int64_t in_channels = 3;
  int64_t out_ch = 3;
  int64_t ch = 128;
  std::vector<int64_t> ch_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  int64_t z_channels = 16;
  // Not stored in the weights: Flux.1's latent normalisation (BFL util.py `ae_params`).
  double scale_factor = 0.3611;
  double shift_factor = 0.1159;

  static AeConfig flux() { return AeConfig{}; }
  // From tensor names and shapes alone (prefix already removed).
  static AeConfig detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                         const std::string& file);
  void validate(const std::string& file) const;
};

// norm1, conv1, norm2, conv2 (+ nin_shortcut, a 1x1 conv, when the width changes).
class AeResnetBlockImpl : public torch::nn::Module {
 public:
  AeResnetBlockImpl(int64_t in_channels, int64_t out_channels, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  GroupNorm norm1{nullptr}, norm2{nullptr};
  Conv2d conv1{nullptr}, conv2{nullptr}, nin_shortcut{nullptr};
};
TORCH_MODULE(AeResnetBlock);

// Single-head self-attention over the H*W positions; q, k, v, proj_out are 1x1 convs.
class AeAttnBlockImpl : public torch::nn::Module {
 public:
  AeAttnBlockImpl(int64_t channels, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  GroupNorm norm{nullptr};
  Conv2d q{nullptr}, k{nullptr}, v{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(AeAttnBlock);

// `conv` holder of downsample (pad right/bottom by 1, 3x3 stride 2) and upsample (nearest x2, 3x3).
class AeResampleImpl : public torch::nn::Module {
 public:
  AeResampleImpl(int64_t channels, bool down, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  bool down;
  Conv2d conv{nullptr};
};
TORCH_MODULE(AeResample);

// One resolution level: `block.N` and an optional `downsample` / `upsample`.
class AeLevelImpl : public torch::nn::Module {
 public:
  AeLevelImpl(int64_t in_channels, int64_t out_channels, int64_t blocks, const char* resample,
              const at::TensorOptions& options);
  at::Tensor forward(at::Tensor x);
  torch::nn::ModuleList block{nullptr};
  AeResample resample{nullptr};
};
TORCH_MODULE(AeLevel);

class AeMidImpl : public torch::nn::Module {
 public:
  AeMidImpl(int64_t channels, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  AeResnetBlock block_1{nullptr}, block_2{nullptr};
  AeAttnBlock attn_1{nullptr};
};
TORCH_MODULE(AeMid);

// pixels [B, 3, H, W] -> moments [B, 2z, H/8, W/8] (mean, logvar).
class AeEncoderImpl : public torch::nn::Module {
 public:
  AeEncoderImpl(const AeConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down{nullptr};
  AeMid mid{nullptr};
  GroupNorm norm_out{nullptr};
};
TORCH_MODULE(AeEncoder);

// unscaled latents [B, z, h, w] -> pixels [B, 3, 8h, 8w]. `up.l` runs from the top level down.
class AeDecoderImpl : public torch::nn::Module {
 public:
  AeDecoderImpl(const AeConfig& config, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& z);
  Conv2d conv_in{nullptr}, conv_out{nullptr};
  AeMid mid{nullptr};
  torch::nn::ModuleList up{nullptr};
  GroupNorm norm_out{nullptr};
};
TORCH_MODULE(AeDecoder);

class AutoEncoderImpl : public torch::nn::Module {
 public:
  // The AE ignores `fp8_base` (it is small and convolutional); dtype and device apply.
  AutoEncoderImpl(const AeConfig& config, const ModelOptions& options);
  // pixels in [-1, 1], [B, 3, H, W] with H, W multiples of 8 -> scale * (mean - shift), [B, z, H/8, W/8].
  at::Tensor encode(const at::Tensor& pixels);
  // The raw posterior moments [B, 2z, H/8, W/8] (mean, then logvar), for callers that sample.
  at::Tensor moments(const at::Tensor& pixels);
  // scaled latents -> pixels, nominally in [-1, 1]; not clamped (BFL's AutoEncoder.decode does not clamp:
  // the image writer clamps).
  at::Tensor decode(const at::Tensor& latents);

  AeConfig config;
  AeEncoder encoder{nullptr};
  AeDecoder decoder{nullptr};
};
TORCH_MODULE(AutoEncoder);

}  // namespace fluxtrain::models
