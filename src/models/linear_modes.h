// How the frozen Linear layers multiply and what a checkpointed block keeps of them: plain enums,
// torch-free, so that the option tables can name them (their spellings are the option values).
#pragma once

#include <array>

#include "core/enum_names.h"

namespace fluxtrain::models {

// How a Linear layer with an fp8 weight multiplies (spec/flux.md §6). `off` upcasts the weight to the
// compute dtype (works everywhere). The others quantise the input to float8_e4m3fn too and run one fp8
// matmul (`_scaled_mm`, fp8 tensor cores on Ada/Hopper GPUs): `tensorwise` with one scale for the whole
// input, `rowwise` with one scale per token (more accurate; CUDA and bf16 only). Where the device cannot
// (probed once per device, mode and dtype), the layer falls back to `off` with a warning.
enum class Fp8Matmul { off, tensorwise, rowwise };
constexpr std::array<EnumName<Fp8Matmul>, 3> enum_names(Fp8Matmul) {
  return {{{"off", Fp8Matmul::off}, {"tensorwise", Fp8Matmul::tensorwise}, {"rowwise", Fp8Matmul::rowwise}}};
}

// Which frozen products a checkpointed block keeps from its first run for the recomputation
// (models/linear.h ProductStash).
enum class KeepProducts {
  none,     // recompute every product
  outputs,  // the products whose output is hidden-wide: attention projection, MLP out, single-block linear2
  all,      // also qkv, MLP in and linear1 (7 more hidden widths per token and block)
};
constexpr std::array<EnumName<KeepProducts>, 3> enum_names(KeepProducts) {
  return {{{"none", KeepProducts::none}, {"outputs", KeepProducts::outputs}, {"all", KeepProducts::all}}};
}

}  // namespace fluxtrain::models
