// Scaled dot-product attention that gradient checkpointing can skip when it recomputes a block.
//
// A checkpointed block runs twice: once without autograd in the forward pass, and again in backward to
// rebuild the activations. Attention's backward needs its inputs (q, k, v), its output and the softmax
// log-sum-exp, and nothing else; the fused kernels return the last two anyway. So the first run keeps
// (output, log-sum-exp) in an AttentionStash, and the recomputation returns the kept output through an
// autograd node whose backward is the same fused kernel's backward: the recomputed block skips the
// quadratic part, and the gradients are the ones plain autograd gives, bit for bit (same kernel, same
// inputs). Cost: one [B, L, heads * D] output and one [B, heads, L] fp32 tensor per block, kept from the
// block's forward to its backward.
//
// Kernels: the CPU flash kernel (with or without a mask) and CUDA's flash kernel (no mask). Whatever
// else scaled_dot_product_attention would pick (efficient, cuDNN, math) is recomputed as before. On a
// GPU the stashed path is first checked against plain autograd on a small problem, once per device and
// dtype, and not used if they differ.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <vector>

#include "models/replay_log.h"

namespace fluxtrain::models {

struct StashedAttention;  // one call's kept output and kernel results (attention.cpp)

class AttentionStash {
 public:
  AttentionStash();
  ~AttentionStash();
  AttentionStash(const AttentionStash&) = delete;
  AttentionStash& operator=(const AttentionStash&) = delete;

  // record: the block's first run (no autograd) appends each attention call's results.
  // replay: the recomputation takes them back in the same order.
  void start_record();
  void start_replay();

  // Attention through the stash (see the file comment); q, k, v [B, heads, L, D]; mask undefined or
  // bool [B, 1, 1, L] (true = attend). Returns [B, heads, L, D].
  at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask);

 private:
  ReplayLog<c10::intrusive_ptr<StashedAttention>> log_;  // null where the call was not stashable
};

// softmax(q k^T / sqrt(D) + mask) v; through `stash` when it is given.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     AttentionStash* stash);

// The stashed path's gradients (dq, dk, dv) against autograd's through scaled_dot_product_attention on a
// small random problem on `device` (the CPU or CUDA flash kernel): the largest relative difference.
// Throws when the kernel cannot run there. (Tests, and the GPU benchmark script.)
double attention_stash_self_check(at::Device device, at::ScalarType dtype);

// How many recomputations took their attention from a stash since the process started (tests).
int64_t stashed_attention_replays();

}  // namespace fluxtrain::models
