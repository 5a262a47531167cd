// The LoRA a training run starts from (network_weights): a file of any layout that `sample` reads
// (lora/convert.h: kohya, diffusers/PEFT, ComfyUI), turned into the kohya tensors of the network's own
// module names that LoraNetwork::load_kohya takes, and the per-module ranks kohya's dim_from_weights builds
// the network with.
//
// diffusers/PEFT files keep the parts of BFL's fused Linears apart (to_q, to_k, to_v [, proj_mlp]). Into
// a split_qkv network they go as its parts (kohya's fused form: downs stacked, up block-diagonal). Into an
// unsplit module they go only when every part has the same down matrix (what diffusers' conversion of a
// kohya LoRA writes): then the up matrices are stacked. Parts with their own downs are an Error asking for
// split_qkv. Each module's alpha is the file's scale times its rank (PEFT files have none: scale 1).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace fluxtrain::models {
class FluxTransformerImpl;
}

namespace fluxtrain::lora {

struct StartWeights {
  std::map<std::string, at::Tensor> tensors;   // kohya keys (lora_unet_*) -> fp32 CPU tensors
  std::map<std::string, int64_t> module_dims;  // model path -> rank of each trained part (LoraOptions)
  std::string layout;                          // the file's layout ("kohya", "diffusers", "comfyui", "mixed")
  size_t text_encoder_modules = 0;             // CLIP/T5 modules in the file (not in `tensors`)
};

// Reads `path` against `model` for a network with or without split_qkv. Errors name the file, the module
// and what does not fit.
StartWeights read_start_weights(const std::string& path, const models::FluxTransformerImpl& model, bool split_qkv);

}  // namespace fluxtrain::lora
