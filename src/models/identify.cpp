#include "models/identify.h"

#include <algorithm>
#include <optional>

#include "core/error.h"
#include "models/flux/flux_config.h"

namespace fluxtrain::models {

const safetensors::TensorInfo* ComponentTensors::get(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : it->second;
}

int64_t ComponentTensors::dim(const std::string& name, size_t axis) const {
  const safetensors::TensorInfo* t = get(name);
  return (t && t->shape.size() > axis) ? t->shape[axis] : -1;
}

int ComponentTensors::count_indexed(const std::string& head) const {
  int best = -1;
  for (auto it = tensors.lower_bound(head); it != tensors.end() && it->first.compare(0, head.size(), head) == 0; ++it) {
    size_t pos = head.size();
    size_t dot = it->first.find('.', pos);
    if (dot == std::string::npos || dot == pos) continue;
    const std::string digits = it->first.substr(pos, dot - pos);
    if (!std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    best = std::max(best, std::stoi(digits));
  }
  return best + 1;
}

std::string ComponentTensors::dtypes() const {
  std::map<std::string, size_t> counts;
  for (const auto& [name, t] : tensors) counts[std::string(safetensors::dtype_name(t->dtype))]++;
  std::string out;
  for (const auto& [d, n] : counts) {
    out += (out.empty() ? "" : ", ") + d + (counts.size() > 1 ? " x" + std::to_string(n) : "");
  }
  return out;
}

namespace {

using safetensors::Header;
using safetensors::TensorInfo;

// A Flux transformer in either layout, its config read as the loader reads it (leniently, so that an
// odd file is still described).
std::optional<Component> flux_transformer(const ComponentTensors& v, FluxLayout layout) {
  const FluxConfig config = FluxConfig::detect_partial([&](const std::string& name) { return v.get(name); }, layout);
  if (config.hidden_size < 0 || (config.depth == 0 && config.depth_single_blocks == 0)) return std::nullopt;
  const bool guidance = config.guidance_embed;
  const bool bfl = layout == FluxLayout::bfl;
  Component c;
  c.kind = "flux-transformer";
  c.details = {{"layout", bfl ? "bfl" : "diffusers"},
               {"variant", guidance ? "dev" : "schnell"},
               {"hidden_size", std::to_string(config.hidden_size)},
               {"num_heads", config.num_heads > 0 ? std::to_string(config.num_heads) : "?"},
               {"double_blocks", std::to_string(config.depth)},
               {"single_blocks", std::to_string(config.depth_single_blocks)},
               {"in_channels", std::to_string(config.in_channels)},
               {"context_in_dim", std::to_string(config.context_in_dim)},
               {"vec_in_dim", std::to_string(config.vec_in_dim)},
               {"guidance_embed", guidance ? "true" : "false"}};
  const FluxConfig dev = FluxConfig::dev();
  const bool full = config.hidden_size == dev.hidden_size && config.depth == dev.depth &&
                    config.depth_single_blocks == dev.depth_single_blocks;
  c.description = cat(full ? "FLUX.1 " : "Flux-architecture ", guidance ? "dev" : "schnell", " transformer",
                      bfl ? "" : " in diffusers layout", " (", config.depth, " double + ", config.depth_single_blocks,
                      " single blocks, hidden ", config.hidden_size, ", ", c.details["num_heads"], " heads",
                      guidance ? ", guidance embedding" : ", no guidance embedding", "; ", v.dtypes(), ")");
  return c;
}

std::optional<Component> autoencoder(const ComponentTensors& v) {
  if (!v.has("encoder.conv_in.weight") || !v.has("decoder.conv_out.weight")) return std::nullopt;
  Component c;
  int64_t z = v.dim("decoder.conv_in.weight", 1);
  int64_t ch = v.dim("encoder.conv_in.weight", 0);
  int levels = v.count_indexed("encoder.down.");
  bool quant = v.has("quant_conv.weight");
  c.kind = (z == 16 && !quant) ? "flux-ae" : "autoencoder";
  c.details = {{"z_channels", std::to_string(z)}, {"ch", std::to_string(ch)}, {"levels", std::to_string(levels)}};
  bool full = z == 16 && ch == 128 && levels == 4 && !quant;
  c.description = cat(c.kind == "flux-ae" ? (full ? "FLUX.1 autoencoder" : "Flux-architecture autoencoder")
                                          : "autoencoder (not Flux's: has quant_conv or z != 16)",
                      " (z ", z, ", base channels ", ch, ", ", levels, " levels; ", v.dtypes(), ")");
  return c;
}

std::optional<Component> clip_text(const ComponentTensors& v) {
  const std::string emb = "text_model.embeddings.token_embedding.weight";
  if (!v.has(emb)) return std::nullopt;
  Component c;
  c.kind = "clip-text";
  int64_t hidden = v.dim(emb, 1);
  int layers = v.count_indexed("text_model.encoder.layers.");
  c.details = {{"hidden_size", std::to_string(hidden)},
               {"layers", std::to_string(layers)},
               {"vocab_size", std::to_string(v.dim(emb, 0))}};
  std::string name = (hidden == 768 && layers == 12) ? "CLIP-L text encoder"
                     : hidden == 1280                ? "CLIP-G text encoder"
                                                     : "CLIP text encoder";
  c.description = cat(name, " (hidden ", hidden, ", ", layers, " layers; ", v.dtypes(), ")");
  return c;
}

std::optional<Component> t5_encoder(const ComponentTensors& v) {
  if (!v.has("encoder.block.0.layer.0.SelfAttention.q.weight")) return std::nullopt;
  Component c;
  c.kind = "t5-encoder";
  int64_t d_model = std::max(v.dim("shared.weight", 1), v.dim("encoder.final_layer_norm.weight", 0));
  int layers = v.count_indexed("encoder.block.");
  int64_t d_ff = v.dim("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0);
  c.details = {{"d_model", std::to_string(d_model)},
               {"layers", std::to_string(layers)},
               {"d_ff", std::to_string(d_ff)},
               {"duplicate_embedding", v.has("encoder.embed_tokens.weight") ? "true" : "false"}};
  std::string name = (d_model == 4096 && layers == 24) ? "T5-XXL encoder" : "T5 encoder";
  c.description = cat(name, " (d_model ", d_model, ", ", layers, " layers, d_ff ", d_ff, "; ", v.dtypes(), ")");
  return c;
}

}  // namespace

std::vector<Component> identify(const Header& header, const std::vector<Recogniser>& recognisers) {
  // Merged checkpoints (ComfyUI "all in one") keep each part under a prefix.
  static const std::vector<std::string> prefixes = {
      "model.diffusion_model.", "vae.",        "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer.",
      "first_stage_model.",     "transformer."};
  std::map<std::string, ComponentTensors> views;
  for (const TensorInfo& t : header.tensors) {
    std::string prefix;
    for (const std::string& p : prefixes) {
      if (t.name.rfind(p, 0) == 0) {
        prefix = p;
        break;
      }
    }
    ComponentTensors& view = views[prefix];
    view.header = &header;
    view.prefix = prefix;
    view.tensors.emplace(t.name.substr(prefix.size()), &t);
  }
  const std::vector<Recogniser> models = {
      [](const ComponentTensors& v) { return flux_transformer(v, FluxLayout::bfl); },
      [](const ComponentTensors& v) { return flux_transformer(v, FluxLayout::diffusers); }, autoencoder, clip_text,
      t5_encoder};
  std::vector<Component> out;
  for (const auto& [prefix, view] : views) {
    std::optional<Component> c;
    for (const auto* list : {&recognisers, &models}) {
      for (const Recogniser& recognise : *list) {
        if (!c) c = recognise(view);
      }
    }
    if (!c) c = Component{"unknown", prefix, "not a model fluxtrain recognises", {}, 0};
    c->prefix = prefix;
    c->tensor_count = view.tensors.size();
    out.push_back(std::move(*c));
  }
  return out;
}

}  // namespace fluxtrain::models
