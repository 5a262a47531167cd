// A tiny random model set in the real single-file layouts (spec/flux.md §7): the same key names and
// dtypes as flux1-dev/schnell (BF16), ae (F32), clip_l (F16) and t5xxl_fp16 (F16, with the duplicate
// embedding), small enough for tests, the demo and users' smoke tests. Every file loads through the same
// detection and loading path as the real 12B set.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/ae/autoencoder.h"
#include "models/clip/clip_text.h"
#include "models/flux/flux.h"
#include "models/t5/t5_encoder.h"
#include "models/tiny_preset.h"

namespace fluxtrain::models {

FluxConfig tiny_flux_config(bool schnell);
AeConfig tiny_ae_config();
ClipConfig tiny_clip_config();
T5Config tiny_t5_config();

// The embedded demo's sizes (docs/demo.md): a transformer of width 128 (one head of Flux.1's width 128,
// 2 double and 4 single blocks), a CLIP of width 64 (one head of CLIP's width 64) and a T5 of width 32,
// all the files together about 20 MB.
FluxConfig demo_flux_config();
AeConfig demo_ae_config();
ClipConfig demo_clip_config();
T5Config demo_t5_config();

// Writes a module's parameters (names as the module paths, converted to `dtype`) to a safetensors file;
// `duplicates` adds (copy, original) tensors under a second name, as t5xxl_fp16's embed_tokens/shared.
void save_module_weights(torch::nn::Module& module, const std::string& path, at::ScalarType dtype,
                         const std::map<std::string, std::string>& metadata,
                         const std::vector<std::pair<std::string, std::string>>& duplicates = {});

// Writes the four files into `folder` (created if needed) under their usual names; returns their paths.
std::vector<std::string> write_tiny_model_set(const std::string& folder, bool schnell, uint64_t seed,
                                              TinyPreset preset = TinyPreset::test);

}  // namespace fluxtrain::models
