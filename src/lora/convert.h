// LoRA files of every common layout, read against a Flux transformer and merged into its weights.
//
// Every layout of the key grammar (lora/keys.h) is accepted: kohya, diffusers/PEFT, ComfyUI and
// underscored diffusers module names, with the part suffixes of any spelling.
// diffusers names map onto BFL's fused layers with a row range: to_q / to_k / to_v (add_q_proj ...) are
// the three thirds of `qkv`, single blocks' to_q, to_k, to_v, proj_mlp are the four row ranges of
// `linear1` (keys::split_parts), and norm_out's [scale, shift] rows are BFL's [shift, scale] (the same
// map as the model loader, models::flux_diffusers_map). Scale = alpha / rank, or 1 without an alpha
// (PEFT/diffusers files store none: their adapters were saved with alpha = rank).
//
// LyCORIS's LoKr, LoHa and DoRA (lora/lycoris.h) on kohya/ComfyUI module names are applied by ComfyUI's
// rule; other adapter types (OFT, Tucker cores, full diffs) are refused with an error naming them.
// Text-encoder adapters (keys::is_text_encoder) are counted here and left to merge_text_encoder_lora
// (lora/text_encoder_network.h), which applies them to CLIP-L / T5 (`sample` does both).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "lora/lycoris.h"

namespace fluxtrain::models {
class FluxTransformerImpl;
}

namespace fluxtrain::lora {

// One low-rank update of (a row range of) one Linear weight of the transformer:
// W[row_offset : row_offset + up.size(0)] += strength * scale * up @ down.
struct LoraDelta {
  std::string module;  // BFL module path, e.g. "double_blocks.0.img_attn.qkv"
  int64_t row_offset = 0;
  at::Tensor down;  // [rank, in] fp32, CPU
  at::Tensor up;    // [rows, rank] fp32, CPU (rows already in BFL order)
  double scale = 1.0;
  std::string source;  // the file's module name, for messages
  // A LyCORIS module (LoKr, LoHa, DoRA) of a whole Linear: its tensors, applied by apply_adapter (down/up
  // unused, row_offset 0).
  std::shared_ptr<const PartTensors> adapter;
};

struct LoraContents {
  std::string path;
  std::string layout;  // "kohya", "diffusers", "comfyui", "mixed"
  std::vector<LoraDelta> deltas;
  size_t text_encoder_modules = 0;  // adapters of CLIP/T5 in the file (merge_text_encoder_lora's)
};

// Reads a LoRA file and resolves every module against `model` (names, shapes). Throws Error naming the
// file and the keys that fit no layer (with the layout they look like), shape mismatches, and modules
// with a missing half.
LoraContents read_lora(const std::string& path, const models::FluxTransformerImpl& model);

// Adds strength * scale * up @ down to the weights (in fp32, then stored in the weight's dtype).
// Merging is exact for any number of LoRAs and layouts, costs no time per step, and is what `sample`
// uses; the base weights change, so load a fresh model to undo it.
void merge_lora(models::FluxTransformerImpl& model, const LoraContents& lora, double strength);

}  // namespace fluxtrain::lora
