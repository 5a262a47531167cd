// A sample's picture as a ComfyUI graph in its API ("prompt") format: the nodes that load the same base
// model, text encoders, AE and LoRAs and render the same prompt, seed, steps, guidance and size with the
// sampler fluxtrain uses (Euler on BFL's shifted schedule: ComfyUI's ModelSamplingFlux + the "simple"
// scheduler + KSamplerSelect "euler" + SamplerCustomAdvanced). ComfyUI rebuilds the graph from a PNG's
// `prompt` text chunk. Torch-free (in fluxtrain_core).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::sample {

// A LoRA of the graph. `text_encoders`: the file has text-encoder modules as well (lora_te1_, lora_te3_), so
// it is loaded with LoraLoader, which patches the text encoders too (strength_clip = strength); else with
// LoraLoaderModelOnly.
struct ComfyLora {
  std::string file;
  double strength = 1.0;
  bool text_encoders = false;
  bool operator==(const ComfyLora&) const = default;
};

struct ComfyGraph {
  // File names as ComfyUI lists them in its models/diffusion_models, text_encoders (clip), vae, loras folders.
  std::string unet;
  std::string weight_dtype = "default";  // "fp8_e4m3fn" for an fp8 base
  std::string clip_l;
  std::string t5xxl;
  std::string vae;
  std::vector<ComfyLora> loras;  // applied in order
  std::string prompt;
  std::string negative;  // used with cfg != 1 (real CFG)
  uint64_t seed = 0;
  int steps = 20;
  double guidance = 3.5;  // Flux dev's distilled guidance (FluxGuidance)
  double cfg = 1.0;       // 1: no negative pass (BasicGuider); else CFGGuider
  int width = 1024, height = 1024;
  bool shift = true;  // BFL's resolution-dependent shift (dev); false: none (schnell)
  std::string filename_prefix = "fluxtrain";
};

// The graph: node id (a decimal string) -> {"class_type", "inputs"}; a link is [node id, output index].
nlohmann::json comfyui_api_prompt(const ComfyGraph& graph);

}  // namespace fluxtrain::sample
