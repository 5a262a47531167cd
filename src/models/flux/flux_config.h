// The Flux.1 transformer's configuration, and the one place it is read off a checkpoint's tensor
// names and shapes (the header alone, either layout). Torch-free, so identification uses it too.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/safetensors_format.h"
#include "models/stated_config.h"

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
  std::vector<int64_t> axes_dim = {16, 56, 56};  // RoPE widths of the three position-id axes
  double theta = 10000;
  bool qkv_bias = true;
  bool guidance_embed = true;  // dev: true; schnell: false

  using Find = std::function<const safetensors::TensorInfo*(const std::string&)>;

  int64_t head_dim() const { return hidden_size / num_heads; }
  static FluxConfig dev();
  static FluxConfig schnell();
  // From tensor names and shapes (prefix already removed), and the RoPE axes, which no tensor's shape
  // holds: from `stated` (a diffusers transformer/config.json's "axes_dims_rope") when it states them,
  // else Flux.1's (16, 56, 56), known only for Flux.1's head width 128; any other head width without
  // stated axes is an Error. Throws Error naming the file and the missing tensor or broken constraint.
  static FluxConfig detect(const Find& find, const std::string& file, FluxLayout layout = FluxLayout::bfl,
                           const StatedConfig& stated = {});
  // What detect() reads, for describing files that may be odd (identification): never throws, a value
  // whose tensor is absent is -1 (block counts 0, num_heads -1 without a head width, axes_dim -1 without
  // Flux.1's head width), and nothing is validated.
  static FluxConfig detect_partial(const Find& find, FluxLayout layout = FluxLayout::bfl);
  // Throws Error naming the broken constraint.
  void validate(const std::string& file) const;
};

// One tensor of the transformer as FluxTransformer allocates it (BFL names).
struct FluxTensorShape {
  std::string path;             // "double_blocks.0.img_attn.qkv.weight"
  std::vector<int64_t> shape;   // [out, in] for a Linear weight
  bool block_linear = false;    // a 2-D Linear weight inside a double or single block (the fp8 base's)
  int64_t block = -1;           // the block (double blocks 0..depth-1, then the single blocks) or -1
};
// Every parameter of the transformer, in module order: the one inventory of its shapes, for memory plans
// and LoRA targets (torch-free; models/flux/flux.h allocates exactly these).
std::vector<FluxTensorShape> flux_parameter_shapes(const FluxConfig& config);

}  // namespace fluxtrain::models
