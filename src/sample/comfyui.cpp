#include "sample/comfyui.h"

namespace fluxtrain::sample {
namespace {

using nlohmann::json;

json link(int node, int output = 0) { return json::array({std::to_string(node), output}); }

}  // namespace

json comfyui_api_prompt(const ComfyGraph& g) {
  json nodes = json::object();
  int next = 1;
  auto add = [&](const char* type, json inputs) {
    const int id = next++;
    nodes[std::to_string(id)] = {{"class_type", type}, {"inputs", std::move(inputs)}};
    return id;
  };
  int model = add("UNETLoader", {{"unet_name", g.unet}, {"weight_dtype", g.weight_dtype}});
  json clip = link(add("DualCLIPLoader", {{"clip_name1", g.clip_l}, {"clip_name2", g.t5xxl}, {"type", "flux"}}));
  const int vae = add("VAELoader", {{"vae_name", g.vae}});
  for (const ComfyLora& lora : g.loras) {
    if (lora.text_encoders) {
      // LoraLoader's outputs: the patched MODEL (0) and CLIP (1).
      model = add("LoraLoader", {{"model", link(model)},
                                 {"clip", clip},
                                 {"lora_name", lora.file},
                                 {"strength_model", lora.strength},
                                 {"strength_clip", lora.strength}});
      clip = link(model, 1);
    } else {
      model = add("LoraLoaderModelOnly",
                  {{"model", link(model)}, {"lora_name", lora.file}, {"strength_model", lora.strength}});
    }
  }
  if (g.shift) {
    // BFL's schedule: the shift mu grows with the image tokens from base_shift (256) to max_shift (4096).
    model = add("ModelSamplingFlux", {{"model", link(model)},
                                      {"max_shift", 1.15},
                                      {"base_shift", 0.5},
                                      {"width", g.width},
                                      {"height", g.height}});
  }
  const int positive_text = add("CLIPTextEncode", {{"text", g.prompt}, {"clip", clip}});
  const int positive = add("FluxGuidance", {{"conditioning", link(positive_text)}, {"guidance", g.guidance}});
  int guider = 0;
  if (g.cfg != 1.0) {
    const int negative_text = add("CLIPTextEncode", {{"text", g.negative}, {"clip", clip}});
    const int negative = add("FluxGuidance", {{"conditioning", link(negative_text)}, {"guidance", g.guidance}});
    guider = add("CFGGuider",
                 {{"model", link(model)}, {"positive", link(positive)}, {"negative", link(negative)}, {"cfg", g.cfg}});
  } else {
    guider = add("BasicGuider", {{"model", link(model)}, {"conditioning", link(positive)}});
  }
  const int sampler = add("KSamplerSelect", {{"sampler_name", "euler"}});
  const int sigmas =
      add("BasicScheduler", {{"model", link(model)}, {"scheduler", "simple"}, {"steps", g.steps}, {"denoise", 1.0}});
  const int noise = add("RandomNoise", {{"noise_seed", g.seed}});
  const int latent = add("EmptySD3LatentImage", {{"width", g.width}, {"height", g.height}, {"batch_size", 1}});
  const int sampled = add("SamplerCustomAdvanced", {{"noise", link(noise)},
                                                    {"guider", link(guider)},
                                                    {"sampler", link(sampler)},
                                                    {"sigmas", link(sigmas)},
                                                    {"latent_image", link(latent)}});
  const int image = add("VAEDecode", {{"samples", link(sampled)}, {"vae", link(vae)}});
  add("SaveImage", {{"images", link(image)}, {"filename_prefix", g.filename_prefix}});
  return nodes;
}

}  // namespace fluxtrain::sample
