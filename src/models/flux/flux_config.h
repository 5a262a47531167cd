// The Flux.1 transformer's configuration, and the one place it is read off a checkpoint's tensor
// names and shapes (the header alone, either layout). Torch-free, so identification uses it too.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/safetensors_format.h"

namespace fluxtrain::models {

// How a checkpoint names the transformer's tensors: BFL's own (flux1-dev.safetensors, ComfyUI) or
// diffusers' FluxTransformer2DModel.
enum class FluxLayout { bfl, diffusers };

struct FluxConfig {
  int64_t in_channels = 64;
  int64_t out_channels = 64;
  int64_t vec_in_dim = 768;       // CLIP pooled width
  int64_t context_in_dim = 4096;  // T5 width
  int64_t hidden_size = 3072;
  int64_t mlp_hidden = 12288;  // mlp_ratio 4
  int64_t num_heads = 24;
  int64_t depth = 19;
  int64_t depth_single_blocks = 38;
  std::vector<int64_t> axes_dim = {16, 56, 56};
  double theta = 10000;
  bool qkv_bias = true;
  bool guidance_embed = true;  // dev: true; schnell: false

  using Find = std::function<const safetensors::TensorInfo*(const std::string&)>;

  int64_t head_dim() const { return hidden_size / num_heads; }
  static FluxConfig dev();
  static FluxConfig schnell();
  // From tensor names and shapes alone (prefix already removed). axes_dim is not stored in the
  // weights: it is [D/8, 7D/16, 7D/16] for head width D, which is [16, 56, 56] for Flux.1 (D = 128).
  // Throws Error naming the file and the missing tensor or broken constraint.
  static FluxConfig detect(const Find& find, const std::string& file, FluxLayout layout = FluxLayout::bfl);
  // What detect() reads, for describing files that may be odd (identification): never throws, a value
  // whose tensor is absent is -1 (block counts 0, num_heads and axes_dim -1 without a head width), and
  // nothing is validated.
  static FluxConfig detect_partial(const Find& find, FluxLayout layout = FluxLayout::bfl);
  // Throws Error naming the broken constraint.
  void validate(const std::string& file) const;
};

}  // namespace fluxtrain::models
