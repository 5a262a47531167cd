// The ComfyUI graph of a sample (src/sample/comfyui.h): in ComfyUI's API format, every link names an
// existing node's output of the type the input takes (the node types' outputs and inputs as ComfyUI's
// nodes.py and comfy_extras declare them), and the graph carries the sample's files, LoRAs, seed, steps,
// guidance and size.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "sample/comfyui.h"

namespace fluxtrain::sample {
namespace {

// class_type -> (its outputs' types, {input name -> type of a linked input}).
using Outputs = std::vector<std::string>;
const std::map<std::string, std::pair<Outputs, std::map<std::string, std::string>>>& schema() {
  static const std::map<std::string, std::pair<Outputs, std::map<std::string, std::string>>> s = {
      {"UNETLoader", {{"MODEL"}, {}}},
      {"DualCLIPLoader", {{"CLIP"}, {}}},
      {"VAELoader", {{"VAE"}, {}}},
      {"LoraLoaderModelOnly", {{"MODEL"}, {{"model", "MODEL"}}}},
      {"LoraLoader", {{"MODEL", "CLIP"}, {{"model", "MODEL"}, {"clip", "CLIP"}}}},
      {"ModelSamplingFlux", {{"MODEL"}, {{"model", "MODEL"}}}},
      {"CLIPTextEncode", {{"CONDITIONING"}, {{"clip", "CLIP"}}}},
      {"FluxGuidance", {{"CONDITIONING"}, {{"conditioning", "CONDITIONING"}}}},
      {"BasicGuider", {{"GUIDER"}, {{"model", "MODEL"}, {"conditioning", "CONDITIONING"}}}},
      {"CFGGuider", {{"GUIDER"}, {{"model", "MODEL"}, {"positive", "CONDITIONING"}, {"negative", "CONDITIONING"}}}},
      {"KSamplerSelect", {{"SAMPLER"}, {}}},
      {"BasicScheduler", {{"SIGMAS"}, {{"model", "MODEL"}}}},
      {"RandomNoise", {{"NOISE"}, {}}},
      {"EmptySD3LatentImage", {{"LATENT"}, {}}},
      {"SamplerCustomAdvanced",
       {{"LATENT"},
        {{"noise", "NOISE"}, {"guider", "GUIDER"}, {"sampler", "SAMPLER"}, {"sigmas", "SIGMAS"}, {"latent_image", "LATENT"}}}},
      {"VAEDecode", {{"IMAGE"}, {{"samples", "LATENT"}, {"vae", "VAE"}}}},
      {"SaveImage", {{}, {{"images", "IMAGE"}}}},
  };
  return s;
}

// Every node known, every linked input linked to an existing node's output of its type; returns the nodes
// by class type.
std::multimap<std::string, nlohmann::json> check_graph(const nlohmann::json& graph) {
  std::multimap<std::string, nlohmann::json> by_type;
  for (const auto& [id, node] : graph.items()) {
    const std::string type = node.at("class_type");
    const auto known = schema().find(type);
    EXPECT_NE(known, schema().end()) << "node " << id << ": " << type;
    if (known == schema().end()) continue;
    for (const auto& [name, wanted] : known->second.second) {
      const bool present = node.at("inputs").contains(name);
      EXPECT_TRUE(present) << type << " lacks input " << name;
      if (!present) continue;
      const nlohmann::json& value = node.at("inputs").at(name);
      const bool is_link = value.is_array() && value.size() == 2;
      EXPECT_TRUE(is_link) << type << "." << name;
      if (!is_link) continue;
      const std::string from = value[0];
      EXPECT_TRUE(graph.contains(from)) << type << "." << name << " links to a missing node " << from;
      if (!graph.contains(from)) continue;
      const Outputs& outputs = schema().at(graph.at(from).at("class_type")).first;
      const size_t output = value[1].get<size_t>();
      EXPECT_LT(output, outputs.size()) << type << "." << name;
      if (output < outputs.size()) EXPECT_EQ(outputs[output], wanted) << type << "." << name;
    }
    by_type.emplace(type, node.at("inputs"));
  }
  return by_type;
}

ComfyGraph sample_graph() {
  ComfyGraph g;
  g.unet = "flux1-dev.safetensors";
  g.weight_dtype = "fp8_e4m3fn";
  g.clip_l = "clip_l.safetensors";
  g.t5xxl = "t5xxl_fp16.safetensors";
  g.vae = "ae.safetensors";
  g.loras = {{"flux-lora-step00000400.safetensors", 1.0}, {"style.safetensors", 0.6}};
  g.prompt = "ohwx, a cat";
  g.seed = 1234567890123ull;
  g.steps = 28;
  g.guidance = 3.5;
  g.width = 1280;
  g.height = 768;
  return g;
}

TEST(ComfyUi, TheGraphIsTypedAndCarriesTheSample) {
  const auto nodes = check_graph(comfyui_api_prompt(sample_graph()));
  EXPECT_EQ(nodes.find("UNETLoader")->second.at("unet_name"), "flux1-dev.safetensors");
  EXPECT_EQ(nodes.find("UNETLoader")->second.at("weight_dtype"), "fp8_e4m3fn");
  EXPECT_EQ(nodes.find("DualCLIPLoader")->second.at("type"), "flux");
  std::set<std::string> loras;
  for (auto [it, end] = nodes.equal_range("LoraLoaderModelOnly"); it != end; ++it)
    loras.insert(it->second.at("lora_name").get<std::string>() + ":" + it->second.at("strength_model").dump());
  EXPECT_EQ(loras, (std::set<std::string>{"flux-lora-step00000400.safetensors:1.0", "style.safetensors:0.6"}));
  EXPECT_EQ(nodes.find("RandomNoise")->second.at("noise_seed"), 1234567890123ull);
  EXPECT_EQ(nodes.find("BasicScheduler")->second.at("steps"), 28);
  EXPECT_EQ(nodes.find("EmptySD3LatentImage")->second.at("width"), 1280);
  EXPECT_EQ(nodes.find("EmptySD3LatentImage")->second.at("height"), 768);
  EXPECT_EQ(nodes.find("ModelSamplingFlux")->second.at("width"), 1280);
  EXPECT_EQ(nodes.find("CLIPTextEncode")->second.at("text"), "ohwx, a cat");
  EXPECT_EQ(nodes.find("FluxGuidance")->second.at("guidance"), 3.5);
  EXPECT_EQ(nodes.find("KSamplerSelect")->second.at("sampler_name"), "euler");
  EXPECT_EQ(nodes.count("BasicGuider"), 1u);
  EXPECT_EQ(nodes.count("CFGGuider"), 0u);
  EXPECT_EQ(nodes.count("SaveImage"), 1u);
}

TEST(ComfyUi, RealCfgAddsTheNegativePromptAndSchnellHasNoShift) {
  ComfyGraph g = sample_graph();
  g.cfg = 4.0;
  g.negative = "blurry";
  g.shift = false;
  const auto nodes = check_graph(comfyui_api_prompt(g));
  EXPECT_EQ(nodes.count("CFGGuider"), 1u);
  EXPECT_EQ(nodes.find("CFGGuider")->second.at("cfg"), 4.0);
  EXPECT_EQ(nodes.count("BasicGuider"), 0u);
  std::set<std::string> texts;
  for (auto [it, end] = nodes.equal_range("CLIPTextEncode"); it != end; ++it) texts.insert(it->second.at("text"));
  EXPECT_EQ(texts, (std::set<std::string>{"ohwx, a cat", "blurry"}));
  EXPECT_EQ(nodes.count("ModelSamplingFlux"), 0u);
}

TEST(ComfyUi, AFileWithTextEncoderModulesPatchesTheClipThePromptsAreEncodedWith) {
  ComfyGraph g = sample_graph();
  g.loras = {{"style.safetensors", 0.6}, {"flux-lora.safetensors", 0.8, true}};
  const nlohmann::json graph = comfyui_api_prompt(g);
  const auto nodes = check_graph(graph);
  ASSERT_EQ(nodes.count("LoraLoader"), 1u);
  const nlohmann::json& loader = nodes.find("LoraLoader")->second;
  EXPECT_EQ(loader.at("lora_name"), "flux-lora.safetensors");
  EXPECT_EQ(loader.at("strength_model"), 0.8);
  EXPECT_EQ(loader.at("strength_clip"), 0.8);
  EXPECT_EQ(nodes.find("LoraLoaderModelOnly")->second.at("lora_name"), "style.safetensors");
  // The prompt is encoded with the LoRA's CLIP output, and the patched model is the one sampled.
  std::string loader_id;
  for (const auto& [id, node] : graph.items())
    if (node.at("class_type") == "LoraLoader") loader_id = id;
  EXPECT_EQ(nodes.find("CLIPTextEncode")->second.at("clip"), nlohmann::json::array({loader_id, 1}));
  EXPECT_EQ(nodes.find("ModelSamplingFlux")->second.at("model"), nlohmann::json::array({loader_id, 0}));
}

}  // namespace
}  // namespace fluxtrain::sample
