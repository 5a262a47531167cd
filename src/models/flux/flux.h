// The Flux.1 rectified-flow transformer (dev and schnell), BFL layout: module paths are the keys of
// flux1-dev.safetensors (spec/flux.md §1). Forward as in BFL model.py, with norm statistics, RoPE,
// timestep embeddings and softmax in fp32 (§6).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

#include "models/flux/flux_config.h"
#include "models/linear.h"
#include "models/options.h"

namespace fluxtrain::models {

class AttentionStash;

// RMSNorm over the head width with a learned `scale` (QKNorm's query_norm / key_norm).
class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor scale;
};
TORCH_MODULE(RmsNorm);

class QkNormImpl : public torch::nn::Module {
 public:
  QkNormImpl(int64_t dim, const at::TensorOptions& options);
  RmsNorm query_norm{nullptr}, key_norm{nullptr};
};
TORCH_MODULE(QkNorm);

class MlpEmbedderImpl : public torch::nn::Module {
 public:
  MlpEmbedderImpl(int64_t in_dim, int64_t hidden, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  Linear in_layer{nullptr}, out_layer{nullptr};
};
TORCH_MODULE(MlpEmbedder);

// `lin(silu(vec))` split into n chunks of hidden_size, each [B, 1, H].
class ModulationImpl : public torch::nn::Module {
 public:
  ModulationImpl(int64_t hidden, int64_t chunks, const ModelOptions& options);
  std::vector<at::Tensor> forward(const at::Tensor& vec);
  int64_t chunks;
  Linear lin{nullptr};
};
TORCH_MODULE(Modulation);

class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t hidden, int64_t heads, bool qkv_bias, const ModelOptions& options);
  Linear qkv{nullptr}, proj{nullptr};
  QkNorm norm{nullptr};
};
TORCH_MODULE(SelfAttention);

// `0` (Linear), GELU-tanh, `2` (Linear): the key names of BFL's nn.Sequential.
class FluxMlpImpl : public torch::nn::Module {
 public:
  FluxMlpImpl(int64_t hidden, int64_t mlp_hidden, const ModelOptions& options);
  // Products through `stash` when one is given (gradient checkpointing, models/linear.h).
  at::Tensor forward(const at::Tensor& x, ProductStash* stash = nullptr);
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(FluxMlp);

// Inputs every block needs besides its stream(s).
struct BlockContext {
  at::Tensor vec;        // [B, H]
  at::Tensor rope;       // [B, 1, L, D/2, 2, 2] fp32 rotation matrices, L = Lt + Li (text first)
  at::Tensor attn_mask;  // undefined, or bool [B, 1, 1, L] (true = attend)
  // Gradient checkpointing: keeps the first run's attention for the recomputation (models/attention.h).
  AttentionStash* stash = nullptr;
  // ... and the frozen products it was told to keep (models/linear.h).
  ProductStash* products = nullptr;
};

class DoubleBlockImpl : public torch::nn::Module {
 public:
  DoubleBlockImpl(const FluxConfig& config, const ModelOptions& options);
  // Returns {img, txt}.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& img, const at::Tensor& txt, const BlockContext& ctx);
  int64_t heads;
  Modulation img_mod{nullptr}, txt_mod{nullptr};
  SelfAttention img_attn{nullptr}, txt_attn{nullptr};
  FluxMlp img_mlp{nullptr}, txt_mlp{nullptr};
};
TORCH_MODULE(DoubleBlock);

class SingleBlockImpl : public torch::nn::Module {
 public:
  SingleBlockImpl(const FluxConfig& config, const ModelOptions& options);
  at::Tensor forward(const at::Tensor& x, const BlockContext& ctx);
  int64_t hidden, mlp_hidden, heads;
  Linear linear1{nullptr}, linear2{nullptr};
  QkNorm norm{nullptr};
  Modulation modulation{nullptr};
};
TORCH_MODULE(SingleBlock);

class LastLayerImpl : public torch::nn::Module {
 public:
  LastLayerImpl(int64_t hidden, int64_t out_channels, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& vec);
  Linear linear{nullptr};
  Linear modulation{nullptr};  // registered as `adaLN_modulation.1`
};
TORCH_MODULE(LastLayer);

// Which run of a transformer block: its first (forward), or gradient checkpointing's recomputation in
// backward (train/checkpointing.h).
enum class BlockPass { forward, recompute };

// Called around every transformer block (double and single counted together from 0, in the order the
// model runs them) by FluxTransformerImpl::forward and train::flux_forward: block swapping
// (train/block_swap.h) brings a block's weights to the device before it runs and takes them back after.
class BlockHooks {
 public:
  virtual ~BlockHooks() = default;
  virtual void before_block(int64_t index, BlockPass pass) = 0;
  virtual void after_block(int64_t index) = 0;
  // Whether the block's weights must leave the device between its forward and its backward: then
  // train::flux_forward checkpoints it (recomputes it in backward) whatever the checkpoint settings.
  virtual bool needs_recompute(int64_t index) const = 0;
};

struct FluxInputs {
  at::Tensor img;        // [B, Li, in_channels] packed latents
  at::Tensor img_ids;    // [B, Li, 3]
  at::Tensor txt;        // [B, Lt, context_in_dim] T5 hidden states
  at::Tensor txt_ids;    // [B, Lt, 3]
  at::Tensor timesteps;  // [B] in [0, 1]
  at::Tensor y;          // [B, vec_in_dim] CLIP pooled
  at::Tensor guidance;   // [B] raw scale (dev); ignored without a guidance embedding
  at::Tensor txt_mask;   // optional [B, Lt], 1 = real token: padded text keys are masked out everywhere
};

class FluxTransformerImpl : public torch::nn::Module {
 public:
  FluxTransformerImpl(const FluxConfig& config, const ModelOptions& options);
  at::Tensor forward(const FluxInputs& inputs);

  // The pieces of forward(), for callers that run the blocks themselves (gradient checkpointing).
  BlockContext prepare(const FluxInputs& inputs, at::Tensor& img, at::Tensor& txt);
  at::Tensor finish(const at::Tensor& img, const BlockContext& ctx);

  FluxConfig config;
  Linear img_in{nullptr}, txt_in{nullptr};
  MlpEmbedder time_in{nullptr}, vector_in{nullptr}, guidance_in{nullptr};
  torch::nn::ModuleList double_blocks{nullptr}, single_blocks{nullptr};
  LastLayer final_layer{nullptr};
  BlockHooks* block_hooks = nullptr;  // not owned; null: none
};
TORCH_MODULE(FluxTransformer);

// Moves every Linear weight below `block` into host memory (pinned when it is on a CUDA device) as a
// fresh tensor with the same values; the autograd history of the old one is not touched (call it before
// training). Weights already on the CPU stay.
void move_linear_weights_to_host(torch::nn::Module& block);

// Flux building blocks, exposed for tests and the sampler.
at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim = 256, double time_factor = 1000.0);
// ids [B, L, 3] -> rotations [B, 1, L, sum(axes)/2, 2, 2] in fp32.
at::Tensor rope_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dim, double theta);
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& rope);
// [B, C, H, W] -> [B, H/2 * W/2, 4C] and back (spec §1.5).
at::Tensor pack_latents(const at::Tensor& latents);
at::Tensor unpack_latents(const at::Tensor& packed, int64_t height, int64_t width);
// img_ids for an h x w token grid: token i*w + j has ids (0, i, j). [B, h*w, 3] fp32.
at::Tensor make_img_ids(int64_t batch, int64_t h, int64_t w, const at::TensorOptions& options);

}  // namespace fluxtrain::models
