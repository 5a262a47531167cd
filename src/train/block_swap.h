// Block swapping (kohya's blocks_to_swap): the Linear weights of the last N transformer blocks (double
// and single counted together, as the model runs them) wait in host memory, pinned with a CUDA device,
// and are copied to the device only while their block runs: in the forward pass, in the recomputation
// of gradient checkpointing and in that block's backward (the input gradient g W needs the weight). The
// copy of the next block in the direction of travel (forward: i + 1; backward: i - 1) runs ahead on a
// side stream while the current block computes, so at most two swapped blocks are on the device at a
// time (a third while the device finishes a block the host has already moved past).
//
// How a block gets its weights: before it runs, each LinearImpl::weight member is pointed at a fresh
// device tensor (never set_data on the shared one: autograd may have saved the previous tensor); after
// it runs, the member points at the host tensor again, and the device tensor is freed when the last
// reference (autograd's, for a block whose backward is still to come) goes. The registered parameters
// stay the host tensors throughout. Every swapped block but the last is checkpointed, whatever the
// checkpoint settings (models::BlockHooks::needs_recompute): that is what lets its weights leave the
// device between its forward and its backward. Checkpointing gives bit-identical gradients, so the
// trained LoRA is the same bit for bit as without swapping. The last block needs no recomputation: its
// backward comes right after its forward.
//
// Biases, norms and the LoRA adapters stay on the device. On the CPU the same mechanism runs (fresh CPU
// tensors copied from the host ones), so tests exercise it without a GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "models/flux/flux.h"
#include "train/memory_plan.h"

namespace fluxtrain::train {

// The most blocks a model can swap: max_blocks_to_swap (train/memory_plan.h), all but the first, which stays
// on the device and computes while the first swapped block's weights arrive (kohya stops at all but two, a
// limit of its in-place swapping).

// Error naming the option (`blocks_to_swap = N`), the model's block count and the maximum, when `blocks`
// is negative or above max_blocks_to_swap(config).
void check_blocks_to_swap(int64_t blocks, const models::FluxConfig& config);

class BlockSwap final : public models::BlockHooks {
 public:
  // Swaps the last `blocks` blocks of `model` (check_blocks_to_swap first): moves their Linear weights
  // to host memory unless they are there already (ModelOptions::host_blocks) and registers itself as
  // the model's block hooks. The model must outlive it; the weights stay on the host after it.
  BlockSwap(models::FluxTransformerImpl& model, int64_t blocks);
  ~BlockSwap() override;
  BlockSwap(const BlockSwap&) = delete;
  BlockSwap& operator=(const BlockSwap&) = delete;

  void before_block(int64_t index, models::BlockPass pass) override;
  void after_block(int64_t index) override;
  bool needs_recompute(int64_t index) const override;

  bool swapped(int64_t index) const { return index >= first_ && index < total_; }
  int64_t first_swapped() const { return first_; }
  int64_t total_blocks() const { return total_; }
  // The swapped weights' bytes (what the device does not hold between uses).
  int64_t swapped_bytes() const { return swapped_bytes_; }
  // Host-to-device block copies made so far (tests).
  int64_t copies() const { return copies_; }

 private:
  struct Loaded;
  std::unique_ptr<Loaded> load(int64_t index);
  void put_back(int64_t index);

  models::FluxTransformerImpl& model_;
  at::Device device_;
  int64_t total_ = 0;
  int64_t first_ = 0;
  // Per block from first_: the layers and their host weights, in the same order.
  std::vector<std::vector<models::LinearImpl*>> layers_;
  std::vector<std::vector<at::Tensor>> host_;
  std::unique_ptr<Loaded> ahead_;  // the copy started for the next block in the direction of travel
  int64_t resident_ = -1;          // the block whose members point at device tensors; -1: none
  int64_t swapped_bytes_ = 0;
  int64_t copies_ = 0;
  struct Streams;
  std::unique_ptr<Streams> streams_;  // null on the CPU
};

}  // namespace fluxtrain::train
