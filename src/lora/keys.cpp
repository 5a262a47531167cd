#include "lora/keys.h"

#include <array>

namespace fluxtrain::lora::keys {
namespace {

constexpr std::array<PartSuffix, 24> kPartSuffixes = {{
    {kDown, Part::down, Spelling::kohya},
    {kUp, Part::up, Spelling::kohya},
    {kAlpha, Part::alpha, Spelling::kohya},
    {kPeftDown, Part::down, Spelling::peft},
    {kPeftUp, Part::up, Spelling::peft},
    // PEFT's state_dict() with the adapter's name ("default") still in it.
    {".lora_A.default.weight", Part::down, Spelling::peft},
    {".lora_B.default.weight", Part::up, Spelling::peft},
    // diffusers before PEFT: LoRACompatibleLinear (.lora.), LoRALinearLayer (.lora_linear_layer.) and the
    // attention processors' to_q_lora.
    {".lora.down.weight", Part::down, Spelling::diffusers_legacy},
    {".lora.up.weight", Part::up, Spelling::diffusers_legacy},
    {".lora_linear_layer.down.weight", Part::down, Spelling::diffusers_legacy},
    {".lora_linear_layer.up.weight", Part::up, Spelling::diffusers_legacy},
    {"_lora.down.weight", Part::down, Spelling::diffusers_legacy},
    {"_lora.up.weight", Part::up, Spelling::diffusers_legacy},
    // LyCORIS (kohya module names, no ".weight").
    {".lokr_w1", Part::lokr_w1, Spelling::kohya},
    {".lokr_w1_a", Part::lokr_w1_a, Spelling::kohya},
    {".lokr_w1_b", Part::lokr_w1_b, Spelling::kohya},
    {".lokr_w2", Part::lokr_w2, Spelling::kohya},
    {".lokr_w2_a", Part::lokr_w2_a, Spelling::kohya},
    {".lokr_w2_b", Part::lokr_w2_b, Spelling::kohya},
    {".hada_w1_a", Part::hada_w1_a, Spelling::kohya},
    {".hada_w1_b", Part::hada_w1_b, Spelling::kohya},
    {".hada_w2_a", Part::hada_w2_a, Spelling::kohya},
    {".hada_w2_b", Part::hada_w2_b, Spelling::kohya},
    {".dora_scale", Part::dora_scale, Spelling::kohya},
}};

constexpr std::array<std::string_view, 5> kContainerPrefixes = {"diffusion_model.", "model.diffusion_model.",
                                                                "transformer.", "base_model.model.", "unet."};

constexpr std::array<std::string_view, 4> kComponentPrefixes = {kTransformerPrefix, kClipPrefix, kT5Prefix,
                                                                kDiffusersTransformerPrefix};

constexpr std::array<std::string_view, 5> kTextEncoderPrefixes = {"lora_te", "text_encoder", "text_encoders.", "te1.",
                                                                  "te2."};

}  // namespace

std::span<const PartSuffix> part_suffixes() {
  return kPartSuffixes;
}

std::optional<ParsedKey> parse(std::string_view key) {
  for (const PartSuffix& rule : kPartSuffixes) {
    if (key.ends_with(rule.suffix)) {
      return ParsedKey{std::string(key.substr(0, key.size() - rule.suffix.size())), rule.part, rule.spelling};
    }
  }
  return std::nullopt;
}

std::string tensor_key(std::string_view module, Part part) {
  std::string key(module);
  for (const PartSuffix& rule : kPartSuffixes) {
    if (rule.part == part && rule.spelling == Spelling::kohya) {
      key += rule.suffix;
      return key;
    }
  }
  return key;  // unreachable: every part has a kohya suffix
}

std::string part_label(Part part) {
  switch (part) {
    case Part::down: return "down (lora_A)";
    case Part::up: return "up (lora_B)";
    case Part::alpha: return "alpha";
    default: break;
  }
  // LyCORIS parts by their own name.
  return tensor_key("", part).substr(1);
}

std::string_view lycoris_type(Part part) {
  switch (part) {
    case Part::lokr_w1:
    case Part::lokr_w1_a:
    case Part::lokr_w1_b:
    case Part::lokr_w2:
    case Part::lokr_w2_a:
    case Part::lokr_w2_b: return "LoKr";
    case Part::hada_w1_a:
    case Part::hada_w1_b:
    case Part::hada_w2_a:
    case Part::hada_w2_b: return "LoHa";
    case Part::dora_scale: return "DoRA";
    default: return "";
  }
}

std::string module_name(std::string_view prefix, std::string_view model_path) {
  std::string name(prefix);
  name += model_path;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] == '.') name[i] = '_';
  }
  return name;
}

std::string_view component_prefix(std::string_view module) {
  for (std::string_view prefix : kComponentPrefixes) {
    if (module.starts_with(prefix)) return prefix;
  }
  return {};
}

std::span<const std::string_view> container_prefixes() {
  return kContainerPrefixes;
}

bool is_text_encoder(std::string_view module) {
  for (std::string_view prefix : kTextEncoderPrefixes) {
    if (module.starts_with(prefix)) return true;
  }
  return false;
}

std::optional<AdapterType> unsupported_adapter(std::string_view key) {
  // LoHa / LoKr tensors other than the ones parse() knows (Tucker cores: hada_t1, lokr_t2).
  if (key.find(".hada_t") != std::string_view::npos) return AdapterType{"Tucker LoHa", "hada_t*"};
  if (key.find(".lokr_t") != std::string_view::npos) return AdapterType{"Tucker LoKr", "lokr_t*"};
  if (key.find(".oft_") != std::string_view::npos) return AdapterType{"OFT", "oft_*"};
  if (key.ends_with(".diff") || key.ends_with(".diff_b")) return AdapterType{"full weight difference", "diff"};
  if (key.find(".lora_mid.") != std::string_view::npos) return AdapterType{"Tucker LoCon", "lora_mid"};
  return std::nullopt;
}

std::vector<SplitPart> split_parts(std::string_view model_path) {
  if (model_path.starts_with("double_blocks.") && model_path.ends_with(".qkv")) {
    return {{"q", false}, {"k", false}, {"v", false}};
  }
  if (model_path.starts_with("single_blocks.") && model_path.ends_with(".linear1")) {
    return {{"q", false}, {"k", false}, {"v", false}, {"mlp", true}};
  }
  return {};
}

std::string split_parts_text(std::string_view model_path) {
  std::string text;
  for (const SplitPart& part : split_parts(model_path)) {
    if (!text.empty()) text += '/';
    text += part.name;
  }
  return text;
}

}  // namespace fluxtrain::lora::keys
