#include "models/tiny.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <filesystem>

#include "core/error.h"
#include "core/safetensors.h"
#include "models/random_init.h"

namespace fluxtrain::models {

// Flux.1's proportions: heads of width 128 with its RoPE axes (16, 56, 56) (the FluxConfig default),
// MLP ratio 4; only the head count and the depth are small.
FluxConfig tiny_flux_config(bool schnell) {
  FluxConfig c;
  c.vec_in_dim = 128;     // = tiny CLIP width
  c.context_in_dim = 48;  // = tiny T5 width
  c.hidden_size = 128;
  c.mlp_hidden = 512;
  c.num_heads = 1;
  c.depth = 2;
  c.depth_single_blocks = 3;
  c.guidance_embed = !schnell;
  return c;
}

AeConfig tiny_ae_config() {
  AeConfig c;
  c.ch = 32;
  c.ch_mult = {1, 2, 2, 2};
  c.num_res_blocks = 1;
  return c;
}

// CLIP-L's proportions: heads of width 64, MLP ratio 4.
ClipConfig tiny_clip_config() {
  ClipConfig c;
  c.hidden_size = 128;
  c.num_heads = 2;
  c.num_layers = 2;
  c.intermediate_size = 512;
  return c;
}

T5Config tiny_t5_config() {
  T5Config c;
  c.d_model = 48;
  c.d_kv = 8;
  c.num_heads = 4;
  c.d_ff = 80;
  c.num_layers = 2;
  return c;
}

FluxConfig demo_flux_config() {
  FluxConfig c;
  c.vec_in_dim = 64;      // = demo CLIP width
  c.context_in_dim = 32;  // = demo T5 width
  c.hidden_size = 128;    // one head of Flux.1's width 128, RoPE axes (16, 56, 56)
  c.mlp_hidden = 512;
  c.num_heads = 1;
  c.depth = 2;
  c.depth_single_blocks = 4;
  return c;
}

// GroupNorm(32) on a 32-wide layer normalises every channel on its own, which erases a flat region's
// absolute colour (only the sign of each channel's contrast survives): the demo AE is 64 wide from the
// first level on (2 channels per group), so the colours of the demo's pictures come through. (ch 64 with
// multipliers 1 rather than ch 32 with 2: diffusers' AutoencoderKL can hold only conv_in width = level 0.)
AeConfig demo_ae_config() {
  AeConfig c;
  c.ch = 64;
  c.ch_mult = {1, 1, 1, 1};
  c.num_res_blocks = 1;
  return c;
}

ClipConfig demo_clip_config() {
  ClipConfig c = tiny_clip_config();
  c.hidden_size = 64;  // one head of CLIP's width 64
  c.num_heads = 1;
  c.intermediate_size = 256;
  return c;
}

T5Config demo_t5_config() {
  T5Config c = tiny_t5_config();
  c.d_model = 32;
  c.d_ff = 64;
  return c;
}

void save_module_weights(torch::nn::Module& module, const std::string& path, at::ScalarType dtype,
                         const std::map<std::string, std::string>& metadata,
                         const std::vector<std::pair<std::string, std::string>>& duplicates) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) tensors.emplace_back(p.key(), p.value().detach().to(dtype));
  for (const auto& [copy, original] : duplicates) {
    for (const auto& [name, t] : std::vector<std::pair<std::string, at::Tensor>>(tensors)) {
      if (name == original) tensors.emplace_back(copy, t);
    }
  }
  safetensors::write(path, tensors, metadata);
}

std::vector<std::string> write_tiny_model_set(const std::string& folder, bool schnell, uint64_t seed,
                                              TinyPreset preset) {
  const bool demo = preset == TinyPreset::demo;
  const std::map<std::string, std::string> kTinyMetadata = {{"format", "pt"}, {"fluxtrain_tiny", "1"}};
  std::filesystem::create_directories(folder);
  ModelOptions fp32;
  std::vector<std::string> paths;
  auto path = [&](const std::string& name) { return (std::filesystem::path(folder) / name).string(); };

  FluxConfig flux_config = demo ? demo_flux_config() : tiny_flux_config(schnell);
  flux_config.guidance_embed = !schnell;
  FluxTransformer flux(flux_config, fp32);
  init_random(*flux, seed);
  {
    at::NoGradGuard no_grad;
    for (auto& p : flux->named_parameters()) {
      const std::string& name = p.key();
      const bool modulation = name.find("mod") != std::string::npos;  // img_mod, txt_mod, modulation, adaLN_modulation
      if (!demo && modulation && name.ends_with(".weight")) {
        p.value().mul_(4);  // every shift / scale / gate term shows in the output
      } else if (demo && (modulation || name.starts_with("final_layer.linear."))) {
        p.value().zero_();  // adaLN-Zero
      } else if (demo && name.ends_with(".bias")) {
        p.value().zero_();
      }
    }
  }
  paths.push_back(path(schnell ? "flux1-schnell.safetensors" : "flux1-dev.safetensors"));
  save_module_weights(*flux, paths.back(), at::kBFloat16, kTinyMetadata);

  AutoEncoder ae(demo ? demo_ae_config() : tiny_ae_config(), fp32);
  init_random(*ae, seed + 1);
  paths.push_back(path("ae.safetensors"));
  save_module_weights(*ae, paths.back(), at::kFloat, kTinyMetadata);

  ClipTextModel clip(demo ? demo_clip_config() : tiny_clip_config(), fp32);
  init_random(*clip, seed + 2);
  paths.push_back(path("clip_l.safetensors"));
  save_module_weights(*clip, paths.back(), at::kHalf, kTinyMetadata);

  T5Encoder t5(demo ? demo_t5_config() : tiny_t5_config(), fp32);
  init_random(*t5, seed + 3);
  paths.push_back(path("t5xxl_fp16.safetensors"));
  save_module_weights(*t5, paths.back(), at::kHalf, kTinyMetadata, {{"encoder.embed_tokens.weight", "shared.weight"}});
  return paths;
}

}  // namespace fluxtrain::models
