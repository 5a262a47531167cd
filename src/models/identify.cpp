#include "models/identify.h"

#include <algorithm>
#include <optional>

#include "core/error.h"

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

std::optional<Component> flux_bfl(const ComponentTensors& v) {
  if (!v.has("img_in.weight") ||
      !(v.has("double_blocks.0.img_attn.qkv.weight") || v.has("single_blocks.0.linear1.weight"))) {
    return std::nullopt;
  }
  Component c;
  c.kind = "flux-transformer";
  int64_t hidden = v.dim("img_in.weight", 0);
  int64_t head_dim = std::max(v.dim("double_blocks.0.img_attn.norm.query_norm.scale", 0),
                              v.dim("single_blocks.0.norm.query_norm.scale", 0));
  int double_blocks = v.count_indexed("double_blocks.");
  int single_blocks = v.count_indexed("single_blocks.");
  bool guidance = v.has("guidance_in.in_layer.weight");
  c.details = {{"layout", "bfl"},
               {"variant", guidance ? "dev" : "schnell"},
               {"hidden_size", std::to_string(hidden)},
               {"num_heads", head_dim > 0 ? std::to_string(hidden / head_dim) : "?"},
               {"double_blocks", std::to_string(double_blocks)},
               {"single_blocks", std::to_string(single_blocks)},
               {"in_channels", std::to_string(v.dim("img_in.weight", 1))},
               {"context_in_dim", std::to_string(v.dim("txt_in.weight", 1))},
               {"vec_in_dim", std::to_string(v.dim("vector_in.in_layer.weight", 1))},
               {"guidance_embed", guidance ? "true" : "false"}};
  bool full = hidden == 3072 && double_blocks == 19 && single_blocks == 38;
  c.description =
      cat(full ? "FLUX.1 " : "Flux-architecture ", guidance ? "dev" : "schnell", " transformer (", double_blocks,
          " double + ", single_blocks, " single blocks, hidden ", hidden, ", ", c.details["num_heads"], " heads",
          guidance ? ", guidance embedding" : ", no guidance embedding", "; ", v.dtypes(), ")");
  return c;
}

std::optional<Component> flux_diffusers(const ComponentTensors& v) {
  if (!v.has("x_embedder.weight") ||
      !(v.has("transformer_blocks.0.attn.to_q.weight") || v.has("single_transformer_blocks.0.attn.to_q.weight"))) {
    return std::nullopt;
  }
  Component c;
  c.kind = "flux-transformer";
  int64_t hidden = v.dim("x_embedder.weight", 0);
  int double_blocks = v.count_indexed("transformer_blocks.");
  int single_blocks = v.count_indexed("single_transformer_blocks.");
  bool guidance = v.has("time_text_embed.guidance_embedder.linear_1.weight");
  c.details = {{"layout", "diffusers"},
               {"variant", guidance ? "dev" : "schnell"},
               {"hidden_size", std::to_string(hidden)},
               {"double_blocks", std::to_string(double_blocks)},
               {"single_blocks", std::to_string(single_blocks)},
               {"guidance_embed", guidance ? "true" : "false"}};
  c.description = cat("Flux ", guidance ? "dev" : "schnell", " transformer in diffusers layout (", double_blocks,
                      " double + ", single_blocks, " single blocks, hidden ", hidden, "; ", v.dtypes(), ")");
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
  const std::vector<Recogniser> models = {flux_bfl, flux_diffusers, autoencoder, clip_text, t5_encoder};
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
