// How a model's parameters are allocated: dtype, device (the meta device builds a model without memory,
// for key/shape listings), and fp8 storage of the large block weights ("fp8 base", spec/flux.md §6).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/core/TensorOptions.h>

#include "models/linear_modes.h"

namespace fluxtrain::models {

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;  // parameters and compute
  at::Device device = at::kCPU;
  bool fp8_base = false;  // 2-D Linear weights inside the repeated blocks kept as float8_e4m3fn
  Fp8Matmul fp8_matmul = Fp8Matmul::off;  // with fp8_base: how those layers multiply
  // Flux: the last N transformer blocks (double and single counted together) get their Linear weights in
  // host memory (pinned with a CUDA device) from the start, so the device never holds them all; block
  // swapping (train/block_swap.h) brings them to the device while they run. 0: none.
  int64_t host_blocks = 0;

  at::TensorOptions tensor() const { return at::TensorOptions().dtype(dtype).device(device); }
  // Storage dtype of a 2-D Linear weight inside a block.
  at::ScalarType block_weight_dtype() const { return fp8_base ? at::kFloat8_e4m3fn : dtype; }
};

}  // namespace fluxtrain::models
