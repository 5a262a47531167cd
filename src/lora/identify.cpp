#include "lora/identify.h"

#include <cstdio>
#include <set>

#include "core/error.h"
#include "lora/keys.h"

namespace fluxtrain::lora {
namespace {

std::string format_alpha(double a) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", a);
  return buffer;
}

template <typename Numbers>
std::string comma_list(const Numbers& values) {
  std::string text;
  for (const auto& value : values) text += cat(text.empty() ? "" : ", ", value);
  return text;
}

}  // namespace

std::optional<models::Component> identify_lora(const models::ComponentTensors& v, const ReadScalar& read_scalar) {
  std::set<std::string> kohya_modules, peft_modules;
  std::set<int64_t> ranks;
  std::set<std::string> lycoris_types;  // LoKr, LoHa, DoRA
  bool lokr_full = false;              // a LoKr module with no decomposed factor (its rank is not stored)
  std::set<std::string> lokr_modules, lokr_decomposed;
  for (const auto& [name, t] : v.tensors) {
    const auto parsed = keys::parse(name);
    if (!parsed) continue;
    if (const std::string_view type = keys::lycoris_type(parsed->part); !type.empty()) {
      lycoris_types.insert(std::string(type));
      kohya_modules.insert(parsed->module);
      // The rank: the inner size of LoHa's and of LoKr's decomposed factors ([rank, in]).
      if (parsed->part == keys::Part::hada_w1_b || parsed->part == keys::Part::lokr_w1_b ||
          parsed->part == keys::Part::lokr_w2_b) {
        if (!t->shape.empty()) ranks.insert(t->shape[0]);
      }
      if (type == "LoKr") lokr_modules.insert(parsed->module);
      if (parsed->part == keys::Part::lokr_w1_b || parsed->part == keys::Part::lokr_w2_b)
        lokr_decomposed.insert(parsed->module);
      continue;
    }
    if (parsed->part != keys::Part::down) continue;
    (parsed->spelling == keys::Spelling::kohya ? kohya_modules : peft_modules).insert(parsed->module);
    if (!t->shape.empty()) ranks.insert(t->shape[0]);
  }
  if (kohya_modules.empty() && peft_modules.empty()) return std::nullopt;
  lokr_full = lokr_modules.size() > lokr_decomposed.size();
  models::Component c;
  std::string ranks_text = comma_list(ranks);
  if (lokr_full) ranks_text += ranks_text.empty() ? "full Kronecker factors" : ", full Kronecker factors";
  if (kohya_modules.empty()) {
    c.kind = "lora-peft";
    c.details = {{"modules", std::to_string(peft_modules.size())}, {"rank", ranks_text}};
    c.description = cat("diffusers/PEFT-format LoRA (", peft_modules.size(), " modules, rank ", ranks_text, ")");
    return c;
  }
  c.kind = "lora-kohya";
  std::set<std::string> alphas;
  size_t transformer = 0, clip = 0, t5 = 0;
  bool flux = false;
  for (const std::string& m : kohya_modules) {
    const std::string_view component = keys::component_prefix(m);
    transformer += component == keys::kTransformerPrefix;
    clip += component == keys::kClipPrefix;
    t5 += component == keys::kT5Prefix;
    // Flux's block paths, underscored.
    if (m.find("double_blocks_") != std::string::npos || m.find("single_blocks_") != std::string::npos) flux = true;
    const safetensors::TensorInfo* alpha = v.get(keys::tensor_key(m, keys::Part::alpha));
    if (alpha != nullptr && read_scalar && alpha->numel() == 1) alphas.insert(format_alpha(read_scalar(*alpha)));
  }
  std::string alpha_text = comma_list(alphas);
  if (alpha_text.empty()) {
    alpha_text = "none stored (= rank)";
    if (v.header != nullptr) {
      if (auto it = v.header->metadata.find("ss_network_alpha"); it != v.header->metadata.end())
        alpha_text = it->second;
    }
  }
  c.details = {{"modules", std::to_string(kohya_modules.size())},
               {"rank", ranks_text},
               {"alpha", alpha_text},
               {"transformer_modules", std::to_string(transformer)},
               {"clip_modules", std::to_string(clip)},
               {"t5_modules", std::to_string(t5)},
               {"flux", flux ? "true" : "false"}};
  // The network type: LoRA, or LyCORIS's (LoKr / LoHa, each possibly with DoRA, or DoRA on LoRA).
  std::string type = "LoRA";
  if (lycoris_types.count("LoKr")) type = "LoKr";
  if (lycoris_types.count("LoHa")) type = type == "LoRA" ? "LoHa" : type + "+LoHa";
  if (lycoris_types.count("DoRA")) type += " (DoRA)";
  c.details["adapter"] = type;
  c.description =
      cat(lycoris_types.empty() ? "kohya-format LoRA" : "LyCORIS " + type + " (kohya names)", flux ? " for Flux" : "", " (", kohya_modules.size(), " modules: ", transformer,
          " transformer, ", clip, " CLIP, ", t5, " T5; rank ", ranks_text, ", alpha ", alpha_text, ")");
  return c;
}

models::Recogniser lora_recogniser(ReadScalar read_scalar) {
  return [read_scalar = std::move(read_scalar)](const models::ComponentTensors& tensors) {
    return identify_lora(tensors, read_scalar);
  };
}

}  // namespace fluxtrain::lora
