// The one LoRA key grammar: how the tensors of a LoRA file are named, in every layout fluxtrain reads
// and in the kohya layout it writes. Torch-free, so identification (lora/identify.h) uses it too.
//
// A key is [container prefix] + module name + part suffix:
//   kohya / sd-scripts     lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight / .lora_up.weight / .alpha
//   diffusers / PEFT       transformer.transformer_blocks.0.attn.to_q.lora_A.weight / .lora_B.weight [/ .alpha]
//                          (PEFT with its adapter name: .lora_A.default.weight; old diffusers:
//                          .lora.down.weight, .lora_linear_layer.down.weight, to_q_lora.down.weight)
//   ComfyUI / BFL          diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight (or .lora_down.weight)
//   underscored diffusers  lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight
//   LyCORIS (kohya names)  lora_unet_X.lokr_w1 / .lokr_w1_a / .lokr_w1_b / .lokr_w2 / .lokr_w2_a / .lokr_w2_b,
//                          .hada_w1_a / .hada_w1_b / .hada_w2_a / .hada_w2_b, and .dora_scale beside any of them
// kohya module names are a component prefix (lora_unet_ the Flux transformer, lora_te1_ CLIP-L,
// lora_te3_ T5-XXL, as sd-scripts' flux networks name them) + the model path with '.' -> '_'
// (module_name; ComfyUI matches files to weights by the same rule). The suffixes of any spelling are
// accepted with any module naming; alpha is optional (missing: alpha = rank).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fluxtrain::lora::keys {

// down/up/alpha: plain LoRA (alpha is shared by every type); the rest are LyCORIS's LoKr (lokr_*),
// LoHa (hada_*) and DoRA (dora_scale) tensors, named as LyCORIS writes them (no ".weight").
enum class Part {
  down,
  up,
  alpha,
  lokr_w1,
  lokr_w1_a,
  lokr_w1_b,
  lokr_w2,
  lokr_w2_a,
  lokr_w2_b,
  hada_w1_a,
  hada_w1_b,
  hada_w2_a,
  hada_w2_b,
  dora_scale,
};
// Which family a part suffix belongs to; alpha is shared by all of them and counts as kohya.
enum class Spelling { kohya, peft, diffusers_legacy };

// kohya's part suffixes: what fluxtrain writes.
inline constexpr std::string_view kDown = ".lora_down.weight";
inline constexpr std::string_view kUp = ".lora_up.weight";
inline constexpr std::string_view kAlpha = ".alpha";
// PEFT's (diffusers' own LoRA files).
inline constexpr std::string_view kPeftDown = ".lora_A.weight";
inline constexpr std::string_view kPeftUp = ".lora_B.weight";

struct PartSuffix {
  std::string_view suffix;
  Part part;
  Spelling spelling;
};
// Every part suffix of every spelling; no suffix is the end of another, so the order does not matter.
std::span<const PartSuffix> part_suffixes();

struct ParsedKey {
  std::string module;  // the key without its part suffix (container prefix kept)
  Part part;
  Spelling spelling;
};
// The module and part of a tensor key in any spelling; nullopt when it ends in no part suffix.
std::optional<ParsedKey> parse(std::string_view key);

// A kohya tensor key: module + kDown / kUp / kAlpha, or the LyCORIS suffix (".lokr_w1", ".dora_scale").
std::string tensor_key(std::string_view module, Part part);

// "down (lora_A)", "up (lora_B)", "alpha": a part as messages name it, in both common spellings.
std::string part_label(Part part);

// Module-name prefixes of kohya-form names.
inline constexpr std::string_view kTransformerPrefix = "lora_unet_";
inline constexpr std::string_view kClipPrefix = "lora_te1_";
inline constexpr std::string_view kT5Prefix = "lora_te3_";
// diffusers module paths underscored the kohya way (lora_transformer_transformer_blocks_0_attn_to_q).
inline constexpr std::string_view kDiffusersTransformerPrefix = "lora_transformer_";
// diffusers' text-encoder containers in a Flux pipeline (PEFT names below them): CLIP-L, T5-XXL.
inline constexpr std::string_view kDiffusersClipPrefix = "text_encoder.";
inline constexpr std::string_view kDiffusersT5Prefix = "text_encoder_2.";

// prefix + model path with every '.' replaced by '_': lora_unet_ + double_blocks.0.img_attn.qkv ->
// lora_unet_double_blocks_0_img_attn_qkv. Not reversible (paths hold '_' too): callers match names
// against the module names of the paths they know.
std::string module_name(std::string_view prefix, std::string_view model_path);

// The prefix above (transformer, CLIP-L, T5, underscored diffusers) a module name starts with, or "".
std::string_view component_prefix(std::string_view module);

// Prefixes written in front of module names: ComfyUI (diffusion_model.), merged checkpoints
// (model.diffusion_model.), diffusers (transformer., unet.), PEFT (base_model.model.).
std::span<const std::string_view> container_prefixes();

// An adapter of a text encoder (kohya lora_te*, diffusers text_encoder*, ComfyUI text_encoders.,
// te1./te2.) rather than of the transformer.
bool is_text_encoder(std::string_view module);

// The LyCORIS adapter type a part belongs to: "LoKr", "LoHa", "DoRA" (dora_scale), "" for plain LoRA's.
std::string_view lycoris_type(Part part);

// Adapters fluxtrain does not apply (OFT, Tucker LoCon, full differences), from one of their tensor keys.
struct AdapterType {
  std::string_view name;    // "LoHa"
  std::string_view marker;  // what in the key gives it away: "hada_*"
};
std::optional<AdapterType> unsupported_adapter(std::string_view key);

// kohya's split_qkv: the parts a fused Flux Linear is trained in, in row order. Double blocks' qkv:
// q, k, v (hidden rows each); single blocks' linear1: q, k, v, then the MLP input (mlp_hidden rows).
// diffusers keeps the same parts as separate Linears (to_q, to_k, to_v, proj_mlp). Empty for every
// other Linear.
struct SplitPart {
  std::string_view name;  // q, k, v, mlp
  bool mlp_input;         // mlp_hidden rows rather than hidden_size
};
std::vector<SplitPart> split_parts(std::string_view model_path);
// "q/k/v", "q/k/v/mlp" for messages.
std::string split_parts_text(std::string_view model_path);

}  // namespace fluxtrain::lora::keys
