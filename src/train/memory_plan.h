// The memory planner: the peak device memory of a training step predicted from the run's options and the
// model's shape alone (no weights read), per batch size, and the choices that follow from it (the largest
// batch that fits, the kept products per block, the blocks to swap). Torch-free: `fluxtrain plan`,
// `--print-config` of batch_size = auto and the trainer's start use the same numbers.
//
// The model (docs/performance.md "Memory planner" derives each term):
//   peak(B) = weights + trainable + adapters + B * (sum over checkpointed blocks of held(block) + step(one image))
//   weights    the frozen transformer as stored (fp8 block weights with fp8_base), minus swapped blocks
//   trainable  LoRA parameters (fp32), their gradients, the optimizer's state (and an EMA on the device)
//   adapters   LyCORIS: the weight changes (LoKr, LoHa) the blocks' graphs keep, one module's fp32 temporaries
//   encoders   a text-encoder LoRA: both text encoders stay loaded (their weights), the trained ones' LoRA with
//              the trainable tensors, and per image the graph of each trained encoder (held until the backward)
//   held       what a checkpointed block keeps from its forward to its backward: its input, the attention
//              output (keep_attention), the kept products (keep_products)
//   step       the rest of one image's step at its worst moment: the blocks that are not checkpointed
//              (their whole autograd graph), the recomputation and backward of one block, the model's
//              inputs and RoPE tables, and (on the CPU) the batch as read from the caches
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "lora/options.h"
#include "models/flux/flux_config.h"
#include "models/linear_modes.h"
#include "optim/options.h"
#include "train/options.h"

namespace fluxtrain::train {

// A text encoder kept on the device while the transformer trains (the text cache is off): its shape, as
// models::ClipConfig / T5Config read it from the file's header.
struct TextEncoderShape {
  enum class Kind { clip, t5 } kind = Kind::clip;
  int64_t vocab = 0, width = 0, heads = 0, head_width = 0, mlp = 0, layers = 0;
  int64_t tokens = 0;     // CLIP: its positions (77); T5: t5xxl_max_token_length
  bool trained = false;   // its LoRA trains: its graph is kept until the backward
  // The weights the loader builds (CLIP: embeddings, layers, final norm; T5: one shared embedding, blocks,
  // relative bias, final norm); every number in the compute dtype.
  int64_t parameters() const;
  // The Linear layers a LoRA adapts in one layer: {in, out} each (lora/text_encoder_network.h).
  std::vector<std::pair<int64_t, int64_t>> adapted_linears() const;
  const char* name() const { return kind == Kind::clip ? "CLIP-L" : "T5-XXL"; }
  // The released encoders Flux.1 uses (T5's tokens are the run's).
  static TextEncoderShape clip_l() {
    return {.kind = Kind::clip, .vocab = 49408, .width = 768, .heads = 12, .head_width = 64, .mlp = 3072, .layers = 12,
            .tokens = 77};
  }
  static TextEncoderShape t5_xxl() {
    return {.kind = Kind::t5, .vocab = 32128, .width = 4096, .heads = 64, .head_width = 64, .mlp = 10240, .layers = 24};
  }
};

struct MemoryPlanInputs {
  models::FluxConfig model;
  bool full_finetune = false;
  lora::LoraOptions lora;
  optim::OptimizerSettings optimizer;
  bool fp8_base = true;
  int64_t compute_bytes = 2;  // bf16 / fp16: 2, fp32: 4 (weights not in fp8 are stored in it too)
  CheckpointSettings checkpointing;
  int64_t blocks_to_swap = 0;
  int64_t image_width = 1024, image_height = 1024;  // the largest bucket, pixels
  int64_t text_tokens = 512;
  bool host_is_device = false;  // CPU training: the batches read from the caches count as well
  int64_t prefetch_batches = 0;  // batches waiting in host memory (counted when host_is_device)
  // Data parallelism: the ranks (> 1: the gradient all-reduce's buckets in flight, at most 4 x 25 MiB) and
  // the shards of the optimizer state (zero_stage 1: the ranks; else 1).
  int64_t ranks = 1;
  int64_t optimizer_shards = 1;
  // An EMA of the trained tensors kept in device memory (ema_device = accelerator, or CPU training): one
  // more fp32 copy of them.
  bool ema_on_device = false;
  // A text-encoder LoRA trains: both encoders, loaded in the compute dtype (empty: the text cache is on).
  std::vector<TextEncoderShape> text_encoders;
};

// One line of the plan's explanation: a term and its bytes.
struct MemoryTerm {
  std::string name;
  int64_t bytes = 0;
  bool per_image = false;  // multiplied by the batch size
};

struct MemoryPlan {
  int64_t weights = 0;          // frozen base on the device
  int64_t swapped = 0;          // base weights kept in host memory by block swap
  int64_t trainable = 0;        // parameters + optimizer state
  int64_t trainable_params = 0; // how many trained numbers
  int64_t held_per_image = 0;   // sum over checkpointed blocks
  int64_t step_per_image = 0;
  // Live at the end of the backward pass beside every gradient: the first blocks' recomputation and
  // backward, the inputs, the batches (what step_per_image holds but the graphs of the last blocks).
  int64_t tail_per_image = 0;
  int64_t fixed_workspace = 0;  // gradients, the optimizer step's temporaries and an upcast weight
  // LyCORIS (LoKr, LoHa, DoRA): the weight changes the blocks' graphs keep and one module's fp32 temporaries,
  // live with the activations (not in the optimizer step).
  int64_t adapter_workspace = 0;
  std::vector<MemoryTerm> terms;
  int64_t image_tokens = 0, text_tokens = 0;

  // The gradients are whole at the end of backward, when only the tail of the activations is left, and in
  // the optimizer step: the peak is the larger of that moment and the activations' own.
  int64_t fixed() const { return weights + trainable; }
  int64_t per_image() const { return held_per_image + step_per_image; }
  int64_t peak(int64_t batch) const {
    return fixed() + std::max(adapter_workspace + batch * per_image(), fixed_workspace + batch * tail_per_image);
  }
  // The largest batch whose peak is at most `budget` bytes (0: not even one image).
  int64_t largest_batch(int64_t budget) const;
};

// Throws Error for settings the planner cannot describe (an unknown optimizer, a LoRA selecting nothing).
MemoryPlan plan_memory(const MemoryPlanInputs& inputs);

// checkpoint_keep_products = auto: the products each block keeps (index as flux_forward counts blocks;
// the last and the blocks not checkpointed keep nothing) so that a batch of `batch` images stays within
// `budget` bytes: `all` for as many blocks as fit, from the first, the others `outputs`, or `none` where
// even `outputs` does not fit.
std::vector<models::KeepProducts> choose_kept_products(const MemoryPlanInputs& inputs, int64_t batch, int64_t budget);

// Bytes one block keeps for its recomputation per image at `keep` (attention included when kept).
int64_t held_bytes(const MemoryPlanInputs& inputs, int64_t block, models::KeepProducts keep);

// The fewest blocks to swap so that a batch of `batch` fits `budget`; -1 when swapping every block that can
// be swapped is not enough.
int64_t choose_blocks_to_swap(const MemoryPlanInputs& inputs, int64_t batch, int64_t budget);

// The most blocks block swap may take: all but the first, which computes while the first swapped block
// arrives (train/block_swap.h).
int64_t max_blocks_to_swap(const models::FluxConfig& config);

// "27.3 GB" (decimal gigabytes, as GPUs are sold and the seed's table is written).
std::string gigabytes(int64_t bytes);

}  // namespace fluxtrain::train
