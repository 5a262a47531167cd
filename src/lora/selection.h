// Which Linear layers of a Flux transformer a LoRA adapts, with what rank and output parts: the one
// selection rule (train_blocks, block indices, per-layer-type ranks, split_qkv), torch-free so that the
// memory planner (train/memory_plan.h) counts the same parameters the network (lora/network.h) builds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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
  // down [rank, in] and up [out, rank] per part.
  int64_t parameter_count() const;
};

// The adapted Linears in module order. Throws Error for an unknown per-type rank key, a selection outside
// the model's blocks, or a selection that adapts nothing.
std::vector<AdapterTarget> adapter_targets(const models::FluxConfig& config, const LoraOptions& options);

}  // namespace fluxtrain::lora
