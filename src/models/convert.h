// The one conversion layer: every foreign checkpoint layout mapped to the canonical (BFL / HF) names
// that the modules use. Maps are generated from the detected config, never from hard-coded counts.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "models/ae/autoencoder.h"
#include "models/clip/clip_text.h"
#include "models/flux/flux.h"
#include "models/loader.h"
#include "models/t5/t5_encoder.h"

namespace fluxtrain::models {

// Prefixes of merged ("all in one") checkpoints, per component (ComfyUI / kohya conventions).
inline const std::vector<std::string> kFluxPrefixes = {"", "model.diffusion_model."};
inline const std::vector<std::string> kAePrefixes = {"", "vae.", "first_stage_model."};
inline const std::vector<std::string> kClipPrefixes = {"", "text_encoders.clip_l.transformer.",
                                                       "cond_stage_model.transformer."};
inline const std::vector<std::string> kT5Prefixes = {"", "text_encoders.t5xxl.transformer."};

// diffusers FluxTransformer2DModel -> BFL. Source: diffusers
// `convert_flux_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py), read in reverse:
// q/k/v (and single blocks' proj_mlp) are concatenated back into qkv / linear1, and norm_out's
// [scale, shift] rows are swapped back to BFL's [shift, scale].
KeyMap flux_diffusers_map(const FluxConfig& config);

struct LoadedFlux {
  FluxTransformer model{nullptr};
  FluxConfig config;
  std::string layout;  // "bfl" or "diffusers"
  std::string prefix;
  LoadReport report;
};

// A Flux transformer from a BFL single file (also with the merged-checkpoint prefix, also fp8), or a
// diffusers folder / repo (transformer/ subfolder, sharded). Parameters are allocated per `options`
// (fp8 base: block weights stored as float8_e4m3fn, quantised on load unless the file is fp8 already).
// `before_build` sees the detected config before anything is allocated (a caller's checks that need the
// block counts, e.g. ModelOptions::host_blocks).
// The config load_flux would detect, from the header alone (nothing is built or read beyond it).
FluxConfig read_flux_config(const std::string& path);

LoadedFlux load_flux(const std::string& path, const ModelOptions& options,
                     const std::function<void(const FluxConfig&)>& before_build = {});

// The encoders, from their single files (ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors) or
// from a merged checkpoint (prefixes above). The config is detected from the header, so tiny models in
// the same layout load through the same path.
template <typename Model, typename Config>
struct LoadedModel {
  Model model{nullptr};
  Config config;
  std::string prefix;
  LoadReport report;
};
using LoadedAe = LoadedModel<AutoEncoder, AeConfig>;
using LoadedClip = LoadedModel<ClipTextModel, ClipConfig>;
using LoadedT5 = LoadedModel<T5Encoder, T5Config>;

LoadedAe load_ae(const std::string& path, const ModelOptions& options);
// Ignores the unused `text_model.embeddings.position_ids` and `text_projection.weight` when present.
LoadedClip load_clip(const std::string& path, const ModelOptions& options);
// Ignores the duplicate `encoder.embed_tokens.weight` (= shared.weight). fp8 base: block weights are
// stored as float8_e4m3fn (quantised on load unless the file holds F8_E4M3 already).
LoadedT5 load_t5(const std::string& path, const ModelOptions& options);

}  // namespace fluxtrain::models
