// Gradient checkpointing per transformer block: a block's forward runs without keeping its
// activations; backward recomputes it (with the random state it had the first time, so LoRA dropout
// masks repeat exactly) and backpropagates through the recomputation. The recomputation skips attention:
// the first run keeps each attention's output and log-sum-exp (models/attention.h, `keep_attention`),
// and the outputs of the frozen products `keep_products` names (models/linear.h).
// The last block is not checkpointed: its recomputation would run right before its backward, so keeping
// its activations costs no more memory than recomputing them. Optionally the saved block inputs wait in
// pinned host memory instead of device memory.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "models/flux/flux.h"
#include "train/options.h"

namespace fluxtrain::train {

// A block: inputs -> outputs. Its attention calls and frozen products go through the stashes when they
// are given.
using BlockFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&, models::AttentionStash*,
                                                      models::ProductStash*)>;

// The settings (train/options.h) and the random state to replay in the recomputation.
struct CheckpointOptions : CheckpointSettings {
  std::vector<at::Generator> generators;
};

// fn(inputs) with checkpointing as described above; plain fn(inputs, nullptr, nullptr) when !options.enabled.
std::vector<at::Tensor> checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs,
                                   const CheckpointOptions& options);

// FluxTransformer forward with the double and single blocks (counted together, from 0) whose index is a
// multiple of options.interval, except the last block, wrapped in checkpoint(). With the model's
// block_hooks set (block swapping, train/block_swap.h) each block function calls them around the block,
// in the first run and in the recomputation, and a block the hooks say needs_recompute is checkpointed
// whatever `options` say (but the last).
at::Tensor flux_forward(models::FluxTransformerImpl& model, const models::FluxInputs& inputs,
                        const CheckpointOptions& options);

}  // namespace fluxtrain::train
