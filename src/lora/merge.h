// Combining kohya-format LoRAs (network.h) with each other, and baking them into a base checkpoint.
//
// Every module holds ΔW = (alpha / r) · up @ down (up [out, r], down [r, in], alpha 0 or missing -> r).
//
// merge_loras: ΔW_total = Σ weight_i · ΔW_i per module (a module missing from a file counts as 0).
//   - concat (no target rank): down = cat_i(weight_i · scale_i · down_i), up = cat_i(up_i), alpha = rank
//     = Σ r_i: exactly ΔW_total, nothing lost.
//   - target rank R: the truncated SVD of ΔW_total, up = U_R·sqrt(S_R), down = sqrt(S_R)·V_Rᵀ, alpha = R
//     (scale 1): the best rank-R approximation in the Frobenius norm (Eckart–Young). ΔW_total is never
//     formed: with A = cat(w·s·up) [out, K], B = cat(down) [K, in] (K = Σ r_i), QR of A and Bᵀ reduce the
//     SVD to one of a K×K matrix, in float64, module by module.
//   A module whose inputs have less total rank than R keeps that rank (exact); the file then says
//   ss_network_dim "Dynamic", as kohya's resize script does.
//
// bake_loras: writes base W + Σ strength_i · ΔW_i for every LoRA module, every other tensor unchanged
//   (keys, order of the header, dtypes), streaming one tensor at a time from the memory-mapped base.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/safetensors_format.h"

namespace fluxtrain::lora {

// A LoRA file and its weight (merge) or strength (bake).
struct WeightedLora {
  std::string path;
  double weight = 1.0;
};

struct MergeOptions {
  int64_t rank = 0;                                    // target rank of the SVD merge; 0 = concat (exact)
  safetensors::Dtype dtype = safetensors::Dtype::F32;  // of down/up (alpha is always F32); F32, F16 or BF16
  std::string title;                                   // modelspec.title / ss_output_name ("" = "merged LoRA")
  std::optional<int64_t> created_at;  // modelspec.date in seconds since 1970 (SOURCE_DATE_EPOCH); unset: now
};

struct MergeReport {
  size_t modules = 0;
  int64_t min_rank = 0, max_rank = 0;
  // SVD merge: the smallest share of ΔW_total's squared Frobenius norm a module kept (1 = exact), and
  // which module; the same over all modules together.
  double worst_kept = 1.0;
  std::string worst_module;
  double total_kept = 1.0;
};

// Merges and writes `out` atomically with kohya/modelspec metadata, `fluxtrain.merged_from` and
// sshs_model_hash. Errors name the file and module (not a LoRA, unsupported tensors, shapes that differ
// between files, rank <= 0, unsupported dtype).
MergeReport merge_loras(const std::vector<WeightedLora>& inputs, const MergeOptions& options, const std::string& out);

struct BakeOptions {
  // Unset: every tensor keeps its dtype (an fp8 weight that gets a ΔW is re-quantised). F32/F16/BF16:
  // every floating tensor becomes that. F8_E4M3: the 2-D `.weight` tensors inside the Flux blocks (what
  // fluxtrain's fp8 base stores as fp8) become fp8, everything else keeps its dtype.
  std::optional<safetensors::Dtype> dtype;
};

struct BakeReport {
  size_t modules = 0;  // LoRA modules applied (counted once per file)
  size_t tensors = 0;  // base tensors changed
  size_t written = 0;  // tensors in the output
  // fp8 outputs of changed tensors: ‖rounding error‖ / ‖Σ ΔW‖ over all of them (0 when none is fp8),
  // and how many values were clamped to ±448.
  double fp8_relative_error = 0;
  int64_t fp8_clamped = 0;
};

// Every module of every LoRA must map to a 2-D `<module>.weight` of the base with matching shape: the
// module is keys::module_name(component prefix, X) for a weight `[prefix]X.weight` of the transformer,
// CLIP-L or T5 (lora/keys.h; the prefixes of merged checkpoints in models/convert.h); the Error lists
// those that do not.
BakeReport bake_loras(const std::string& base, const std::vector<WeightedLora>& loras, const std::string& out,
                      const BakeOptions& options);

// "fp32" | "fp16" | "bf16" | "fp8" (also float32, float16, bfloat16, fp8_e4m3fn) -> Dtype; Error naming
// `option` otherwise.
safetensors::Dtype parse_weight_dtype(const std::string& text, const std::string& option);

}  // namespace fluxtrain::lora
