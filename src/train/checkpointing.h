// Gradient checkpointing per transformer block: a block's forward runs without keeping its
// activations; backward recomputes it (with the random state it had the first time, so LoRA dropout
// masks repeat exactly) and backpropagates through the recomputation. Optionally the saved block inputs
// wait in pinned host memory instead of device memory.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "models/flux/flux.h"

namespace fluxtrain::train {

using BlockFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

struct CheckpointOptions {
  bool enabled = false;
  bool offload_inputs = false;           // keep saved block inputs in (pinned) host memory
  std::vector<at::Generator> generators;  // random state to replay in the recomputation
};

// fn(inputs) with checkpointing as described above; plain fn(inputs) when !options.enabled.
std::vector<at::Tensor> checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs,
                                   const CheckpointOptions& options);

// FluxTransformer forward with every double and single block wrapped in checkpoint().
at::Tensor flux_forward(models::FluxTransformerImpl& model, const models::FluxInputs& inputs,
                        const CheckpointOptions& options);

}  // namespace fluxtrain::train
