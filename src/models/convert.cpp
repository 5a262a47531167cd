#include "models/convert.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::models {
namespace {

using Op = KeySource::Op;

void linear_pair(KeyMap& map, const std::string& bfl, const std::string& diffusers, bool bias = true) {
  map[bfl + ".weight"] = {{diffusers + ".weight"}, Op::copy};
  if (bias) map[bfl + ".bias"] = {{diffusers + ".bias"}, Op::copy};
}

void concat_linear(KeyMap& map, const std::string& bfl, const std::vector<std::string>& parts, bool bias = true) {
  KeySource w{{}, Op::concat}, b{{}, Op::concat};
  for (const auto& p : parts) {
    w.keys.push_back(p + ".weight");
    b.keys.push_back(p + ".bias");
  }
  map[bfl + ".weight"] = w;
  if (bias) map[bfl + ".bias"] = b;
}

}  // namespace

KeyMap flux_diffusers_map(const FluxConfig& c) {
  KeyMap m;
  linear_pair(m, "img_in", "x_embedder");
  linear_pair(m, "time_in.in_layer", "time_text_embed.timestep_embedder.linear_1");
  linear_pair(m, "time_in.out_layer", "time_text_embed.timestep_embedder.linear_2");
  linear_pair(m, "vector_in.in_layer", "time_text_embed.text_embedder.linear_1");
  linear_pair(m, "vector_in.out_layer", "time_text_embed.text_embedder.linear_2");
  if (c.guidance_embed) {
    linear_pair(m, "guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1");
    linear_pair(m, "guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2");
  }
  linear_pair(m, "txt_in", "context_embedder");
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "double_blocks." + std::to_string(i) + ".";
    const std::string d = "transformer_blocks." + std::to_string(i) + ".";
    linear_pair(m, b + "img_mod.lin", d + "norm1.linear");
    linear_pair(m, b + "txt_mod.lin", d + "norm1_context.linear");
    concat_linear(m, b + "img_attn.qkv", {d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"}, c.qkv_bias);
    concat_linear(m, b + "txt_attn.qkv", {d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"},
                  c.qkv_bias);
    m[b + "img_attn.norm.query_norm.scale"] = {{d + "attn.norm_q.weight"}, Op::copy};
    m[b + "img_attn.norm.key_norm.scale"] = {{d + "attn.norm_k.weight"}, Op::copy};
    m[b + "txt_attn.norm.query_norm.scale"] = {{d + "attn.norm_added_q.weight"}, Op::copy};
    m[b + "txt_attn.norm.key_norm.scale"] = {{d + "attn.norm_added_k.weight"}, Op::copy};
    linear_pair(m, b + "img_attn.proj", d + "attn.to_out.0");
    linear_pair(m, b + "txt_attn.proj", d + "attn.to_add_out");
    linear_pair(m, b + "img_mlp.0", d + "ff.net.0.proj");
    linear_pair(m, b + "img_mlp.2", d + "ff.net.2");
    linear_pair(m, b + "txt_mlp.0", d + "ff_context.net.0.proj");
    linear_pair(m, b + "txt_mlp.2", d + "ff_context.net.2");
  }
  for (int64_t i = 0; i < c.depth_single_blocks; ++i) {
    const std::string b = "single_blocks." + std::to_string(i) + ".";
    const std::string d = "single_transformer_blocks." + std::to_string(i) + ".";
    concat_linear(m, b + "linear1", {d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"});
    linear_pair(m, b + "linear2", d + "proj_out");
    m[b + "norm.query_norm.scale"] = {{d + "attn.norm_q.weight"}, Op::copy};
    m[b + "norm.key_norm.scale"] = {{d + "attn.norm_k.weight"}, Op::copy};
    linear_pair(m, b + "modulation.lin", d + "norm.linear");
  }
  linear_pair(m, "final_layer.linear", "proj_out");
  m["final_layer.adaLN_modulation.1.weight"] = {{"norm_out.linear.weight"}, Op::swap_halves};
  m["final_layer.adaLN_modulation.1.bias"] = {{"norm_out.linear.bias"}, Op::swap_halves};
  return m;
}

namespace {

// What load_flux reads before it builds anything: the layout, the prefix and the config (header only).
struct FluxHeader {
  LoadOptions load;
  FluxConfig config;
  bool diffusers = false;
};

FluxHeader read_flux_header(const Checkpoint& checkpoint) {
  FluxHeader h;
  h.load.what = "Flux transformer";
  for (const std::string& p : {std::string(), std::string("transformer.")}) {
    if (checkpoint.contains(p + "x_embedder.weight")) {
      h.diffusers = true;
      h.load.prefix = p;
    }
  }
  if (!h.diffusers) h.load.prefix = find_prefix(checkpoint, kFluxPrefixes, "img_in.weight", "Flux transformer");
  auto find = [&](const std::string& name) -> const safetensors::TensorInfo* {
    return checkpoint.contains(h.load.prefix + name) ? &checkpoint.info(h.load.prefix + name) : nullptr;
  };
  h.config = FluxConfig::detect(find, checkpoint.path(), h.diffusers ? FluxLayout::diffusers : FluxLayout::bfl,
                                StatedConfig::beside(checkpoint.folder()));
  if (h.diffusers) h.load.map = flux_diffusers_map(h.config);
  return h;
}

}  // namespace

FluxConfig read_flux_config(const std::string& path) {
  return read_flux_header(Checkpoint::open(path, "transformer")).config;
}

LoadedFlux load_flux(const std::string& path, const ModelOptions& options,
                     const std::function<void(const FluxConfig&)>& before_build) {
  Checkpoint checkpoint = Checkpoint::open(path, "transformer");
  LoadedFlux out;
  FluxHeader header = read_flux_header(checkpoint);
  LoadOptions& load = header.load;
  out.config = header.config;
  out.layout = header.diffusers ? "diffusers" : "bfl";
  out.prefix = load.prefix;
  if (before_build) before_build(out.config);
  out.model = FluxTransformer(out.config, options);
  out.report = load_strict(*out.model, checkpoint, load);
  out.model->eval();
  if (options.fp8_base && options.fp8_matmul != Fp8Matmul::off) {
    int64_t layers = set_fp8_matmul(*out.model, options.fp8_matmul);
    log::debug("fp8 matmul (", name_of(options.fp8_matmul), ") on ", layers, " Linear layers");
  }
  log::debug("loaded Flux transformer from ", path, " (", out.layout, " layout, ", out.report.loaded, " tensors)");
  return out;
}

namespace {

// The common path of the encoders: open, find the prefix by a probe key, detect (from the header, and
// the config.json beside the weights for the detectors that read one), build, load strictly.
template <typename Model, typename Config, typename Detect>
LoadedModel<Model, Config> load_encoder(const std::string& path, const ModelOptions& options, const std::string& what,
                                        const std::vector<std::string>& prefixes, const std::string& probe,
                                        std::vector<std::string> ignore, Detect detect) {
  Checkpoint checkpoint = Checkpoint::open(path);
  LoadedModel<Model, Config> out;
  LoadOptions load;
  load.what = what;
  load.prefix = find_prefix(checkpoint, prefixes, probe, what);
  load.ignore = std::move(ignore);
  auto find = [&](const std::string& name) -> const safetensors::TensorInfo* {
    return checkpoint.contains(load.prefix + name) ? &checkpoint.info(load.prefix + name) : nullptr;
  };
  out.config = detect(find, checkpoint.path(), [&] { return StatedConfig::beside(checkpoint.folder()); });
  out.prefix = load.prefix;
  out.model = Model(out.config, options);
  out.report = load_strict(*out.model, checkpoint, load);
  out.model->eval();
  log::debug("loaded ", what, " from ", path, " (prefix '", out.prefix, "', ", out.report.loaded, " tensors)");
  return out;
}

}  // namespace

LoadedAe load_ae(const std::string& path, const ModelOptions& options) {
  return load_encoder<AutoEncoder, AeConfig>(
      path, options, "Flux autoencoder", kAePrefixes, "encoder.conv_in.weight", {},
      [](const auto& find, const std::string& file, const auto&) { return AeConfig::detect(find, file); });
}

LoadedClip load_clip(const std::string& path, const ModelOptions& options) {
  // position_ids: a buffer older transformers saved; text_projection: CLIPTextModelWithProjection's head.
  return load_encoder<ClipTextModel, ClipConfig>(path, options, "CLIP text encoder", kClipPrefixes,
                                                 "text_model.embeddings.token_embedding.weight",
                                                 {"text_model.embeddings.position_ids", "text_projection.weight"},
                                                 [](const auto& find, const std::string& file, const auto& stated) {
                                                   return ClipConfig::detect(find, file, stated());
                                                 });
}

LoadedT5 load_t5(const std::string& path, const ModelOptions& options) {
  // encoder.embed_tokens.weight: HF ties it to shared.weight; the real file stores both.
  return load_encoder<T5Encoder, T5Config>(
      path, options, "T5 encoder", kT5Prefixes, "shared.weight", {"encoder.embed_tokens.weight"},
      [](const auto& find, const std::string& file, const auto&) { return T5Config::detect(find, file); });
}

}  // namespace fluxtrain::models
