#include "train/block_swap.h"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>

#include "core/error.h"

// Streams and events through c10's device-generic interface (c10::impl::VirtualGuardImpl, c10::Event),
// which compiles without the CUDA headers and works the same for ROCm (whose device type is also CUDA).

namespace fluxtrain::train {

void check_blocks_to_swap(int64_t blocks, const models::FluxConfig& config) {
  const int64_t total = config.depth + config.depth_single_blocks, most = max_blocks_to_swap(config);
  if (blocks < 0 || blocks > most) {
    fail("blocks_to_swap = ", blocks, ": this Flux model has ", total, " transformer blocks (", config.depth,
         " double + ", config.depth_single_blocks, " single), of which at most ", most,
         " can be swapped (all but the first); set blocks_to_swap (PARAMS_BLOCKS_TO_SWAP) between 0 and ", most);
  }
}

// The copy to the device side stream and the event the compute stream waits on.
struct BlockSwap::Streams {
  c10::impl::VirtualGuardImpl impl;
  c10::Stream side;
  explicit Streams(at::Device device)
      : impl(device.type()), side(impl.getStreamFromGlobalPool(device, /*isHighPriority=*/false)) {}
};

// A block's weights on the device (or, on the CPU, in fresh CPU tensors), and on a device the event that
// says the copy has finished.
struct BlockSwap::Loaded {
  int64_t index = -1;
  std::vector<at::Tensor> weights;
  std::optional<c10::Event> ready;
};

BlockSwap::BlockSwap(models::FluxTransformerImpl& model, int64_t blocks)
    : model_(model), device_(model.img_in->weight.device()) {
  check_blocks_to_swap(blocks, model.config);
  total_ = model.config.depth + model.config.depth_single_blocks;
  first_ = total_ - blocks;
  if (!device_.is_cpu()) streams_ = std::make_unique<Streams>(device_);
  auto add = [&](torch::nn::Module& block) {
    models::move_linear_weights_to_host(block);
    std::vector<models::LinearImpl*> layers;
    std::vector<at::Tensor> host;
    for (const auto& child : block.modules(/*include_self=*/true)) {
      auto* linear = dynamic_cast<models::LinearImpl*>(child.get());
      if (!linear) continue;
      if (linear->weight.requires_grad())
        fail("blocks_to_swap works for LoRA training only: the swapped weights must be frozen, but ",
             "a block weight requires a gradient (full fine-tuning, network_type none)");
      layers.push_back(linear);
      host.push_back(linear->weight);
      swapped_bytes_ += static_cast<int64_t>(linear->weight.nbytes());
    }
    layers_.push_back(std::move(layers));
    host_.push_back(std::move(host));
  };
  for (int64_t i = first_; i < total_; ++i) {
    if (i < model.config.depth) {
      add(*model.double_blocks->ptr(static_cast<size_t>(i)));
    } else {
      add(*model.single_blocks->ptr(static_cast<size_t>(i - model.config.depth)));
    }
  }
  if (blocks > 0) model_.block_hooks = this;
}

BlockSwap::~BlockSwap() {
  if (model_.block_hooks == this) model_.block_hooks = nullptr;
  if (resident_ >= 0) put_back(resident_);
  ahead_.reset();
}

std::unique_ptr<BlockSwap::Loaded> BlockSwap::load(int64_t index) {
  auto loaded = std::make_unique<Loaded>();
  loaded->index = index;
  const auto& host = host_[static_cast<size_t>(index - first_)];
  ++copies_;
  at::NoGradGuard no_grad;
  if (!streams_) {
    for (const auto& h : host) loaded->weights.push_back(h.clone());
    return loaded;
  }
  // Allocated on the side stream (its memory pool), filled there from pinned memory without blocking the
  // host; before_block makes the compute stream wait for the event and records the compute stream on
  // the memory, so the allocator does not hand it out again before the compute stream is done with it.
  c10::StreamGuard guard(streams_->side);
  for (const auto& h : host) {
    at::Tensor d = at::empty(h.sizes(), at::TensorOptions().dtype(h.scalar_type()).device(device_));
    d.copy_(h, /*non_blocking=*/true);
    loaded->weights.push_back(std::move(d));
  }
  loaded->ready.emplace(device_.type());
  loaded->ready->record(streams_->side);
  return loaded;
}

void BlockSwap::put_back(int64_t index) {
  auto& layers = layers_[static_cast<size_t>(index - first_)];
  const auto& host = host_[static_cast<size_t>(index - first_)];
  for (size_t k = 0; k < layers.size(); ++k) layers[k]->weight = host[k];
  resident_ = -1;
}

void BlockSwap::before_block(int64_t index, models::BlockPass pass) {
  if (!swapped(index)) return;
  if (resident_ >= 0) put_back(resident_);  // left over from a block that threw
  std::unique_ptr<Loaded> loaded;
  if (ahead_ && ahead_->index == index) {
    loaded = std::move(ahead_);
  } else {
    ahead_.reset();  // a copy for another block (the direction changed): dropped
    loaded = load(index);
  }
  if (streams_) {
    const c10::Stream compute = streams_->impl.getStream(device_);
    loaded->ready->block(compute);
    for (const auto& w : loaded->weights) streams_->impl.recordDataPtrOnStream(w.storage().data_ptr(), compute);
  }
  auto& layers = layers_[static_cast<size_t>(index - first_)];
  for (size_t k = 0; k < layers.size(); ++k) layers[k]->weight = loaded->weights[k];
  resident_ = index;

  // The next block in the direction of travel. After the forward pass's last block, a backward pass
  // (gradient mode on) recomputes the blocks from the second to last down; without one (sampling) the
  // next forward starts again at the first swapped block.
  int64_t next = -1;
  if (pass == models::BlockPass::recompute) {
    next = index - 1;
  } else if (index + 1 < total_) {
    next = index + 1;
  } else {
    next = at::GradMode::is_enabled() ? index - 1 : first_;
  }
  if (swapped(next) && next != index) ahead_ = load(next);
}

void BlockSwap::after_block(int64_t index) {
  if (swapped(index) && resident_ == index) put_back(index);
}

bool BlockSwap::needs_recompute(int64_t index) const {
  return swapped(index) && index != total_ - 1;
}

}  // namespace fluxtrain::train
