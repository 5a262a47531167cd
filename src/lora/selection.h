// Which Linear layers of a Flux transformer a LoRA adapts, with what rank and output parts: the one
// selection rule (train_blocks, block indices, per-layer-type ranks, split_qkv), torch-free so that the
// memory planner (train/memory_plan.h) counts the same parameters the network (lora/network.h) builds.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "lora/keys.h"
#include "lora/options.h"
#include "models/flux/flux_config.h"

namespace fluxtrain::lora {

// "all" / "none" / "" / comma-separated indices and ranges ("0,2,5-9") -> one flag per block. Errors
// name `option` and the bad item.
std::vector<bool> parse_block_selection(const std::string& text, int64_t count, const std::string& option);

struct AdapterTarget {
  std::string path;           // the Linear's model path, "double_blocks.3.img_attn.qkv"
  int64_t in_features = 0;
  std::vector<int64_t> outs;  // output rows per trained part (one part unless split_qkv splits it)
  int64_t rank = 0;
  int64_t block = 0;   // the block: double blocks 0..depth-1, then the single blocks
  std::string type;    // the per-layer-type key: img_attn, img_mlp, img_mod, txt_attn, txt_mlp, txt_mod, single, single_mod
  // down [rank, in] and up [out, rank] per part.
  int64_t parameter_count() const;
};

// LyCORIS's factorization(dimension, factor): (m, n), m <= n, m·n = dimension; factor -1: the pair
// nearest the square root, else (factor, dimension / factor) when it divides (also a bound for the search).
std::pair<int64_t, int64_t> factorization(int64_t dimension, int64_t factor);

// One trained tensor of an adapter on an [out, in] Linear: its file part, shape, and whether it starts at 0.
struct FactorShape {
  keys::Part part;
  int64_t rows = 0, cols = 0;
  bool zero = false;
};
// The tensors of `options.type`'s adapter (lora/lycoris.h), in the order they train: LoRA down, up;
// LoKr w1 (or w1_a, w1_b) then w2 (or w2_a, w2_b) by LyCORIS's rules; LoHa w1_a, w1_b, w2_a, w2_b.
// DoRA's magnitude [out] is not listed. split_qkv parts are AdapterTarget::outs' business.
std::vector<FactorShape> factor_shapes(const LoraOptions& options, int64_t out, int64_t in, int64_t rank);

// The adapted Linears in module order. Throws Error for an unknown per-type rank key, a selection outside
// the model's blocks, or a selection that adapts nothing.
std::vector<AdapterTarget> adapter_targets(const models::FluxConfig& config, const LoraOptions& options);

}  // namespace fluxtrain::lora
