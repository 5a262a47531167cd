// The Linear layer every model uses. Parameters are named `weight` / `bias` like torch's, so module paths
// equal checkpoint keys. Two things torch::nn::Linear cannot do:
//  - fp8 storage: the weight may be kept as float8_e4m3fn ("fp8 base") and is upcast to the input's
//    dtype on every call (spec/flux.md §6); the bias never is fp8.
//  - an adapter seam: the training layer (LoRA) attaches a LinearAdapter whose output is added to the
//    base output, without the models layer knowing anything about LoRA.
// Construction allocates uninitialised parameters (at::empty) in the requested dtype/device, so
// building a 12B model for loading costs no initialisation and no fp32 detour; the meta device works.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/options.h"
#include "models/replay_log.h"

namespace fluxtrain::models {

class ProductStash;

class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // x: the layer input (compute dtype); base: the frozen layer's output. Returns the adapted output.
  virtual at::Tensor forward(const at::Tensor& x, const at::Tensor& base) = 0;
};

class LinearImpl : public torch::nn::Module {
 public:
  // `weight_dtype` overrides the weight's storage dtype (fp8 base); the bias always uses `options`.
  LinearImpl(int64_t in_features, int64_t out_features, bool bias, const at::TensorOptions& options,
             std::optional<at::ScalarType> weight_dtype = std::nullopt);
  at::Tensor forward(const at::Tensor& x);
  // forward(x) inside a checkpointed block: the frozen product goes through `stash` when one is given
  // (see ProductStash); `wide` says the output is wider than the block's hidden size (qkv, MLP in).
  at::Tensor forward_stashed(const at::Tensor& x, ProductStash* stash, bool wide);
  // The output of the frozen weights only (ignores the adapter).
  at::Tensor forward_base(const at::Tensor& x);
  // Weight in the given compute dtype (upcast from fp8 storage when needed).
  at::Tensor weight_as(at::ScalarType dtype) const;

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;
  at::Tensor bias;  // undefined when the layer has no bias
  std::shared_ptr<LinearAdapter> adapter;
  // With an fp8 weight: multiply in fp8 (see Fp8Matmul); the weight is frozen (no weight gradient).
  Fp8Matmul fp8_matmul = Fp8Matmul::off;
};
TORCH_MODULE(Linear);

// Gradient checkpointing (train/checkpointing.h) runs a block twice: without autograd, then again in
// backward to rebuild its activations. A product of frozen weights gives the same output both times, so
// the first run keeps it and the recomputation takes it back instead of multiplying again. The kept
// output enters autograd through a node whose backward is the frozen layer's input gradient, g W: the
// product autograd itself computes there, so gradients stay bit-identical. The adapter (LoRA) and
// everything between the products still run. Cost: the kept outputs, held from the block's forward to
// its backward. A layer whose weight or bias requires a gradient is not kept.
class ProductStash {
 public:
  explicit ProductStash(KeepProducts keep) : keep_(keep) {}
  // record: the block's first run (no autograd) appends each kept product; replay: the recomputation
  // takes them back in the same order.
  void start_record() { log_.start_record(); }
  void start_replay() { log_.start_replay(); }
  // linear.forward_base(x), kept or replayed as described above.
  at::Tensor base(LinearImpl& linear, const at::Tensor& x, bool wide);

 private:
  KeepProducts keep_;
  ReplayLog<at::Tensor> log_;  // undefined where a product was not kept
};

// How many recomputations took a product from a ProductStash since the process started (tests).
int64_t kept_product_replays();

// Sets `mode` on every Linear below `module` whose weight is float8_e4m3fn and whose widths suit the
// fp8 kernels (multiples of 16). Returns how many layers it set.
int64_t set_fp8_matmul(torch::nn::Module& module, Fp8Matmul mode);

// Whether `_scaled_mm` runs on this device with this scaling and output dtype: probed once with a
// small product and remembered (CUDA needs fp8 tensor cores, compute capability 8.9 or newer; the CPU
// does tensorwise only, as a slow reference). Where it does not, the first call warns: a safety net
// behind the start-up decision (app/device.h resolve_fp8_compute), which refuses such a mode by name.
bool fp8_matmul_supported(at::Device device, Fp8Matmul mode, at::ScalarType out_dtype);
// The same probe, quiet: "" where `_scaled_mm` runs, else why not (the error's first line).
std::string fp8_matmul_failure(at::Device device, Fp8Matmul mode, at::ScalarType out_dtype);

// y = x W^T + b with x quantised to e4m3 (x * 448 / amax per tensor or per row, inverse scale to the kernel) and W used as
// stored (e4m3, scale 1); the result in x's dtype. Differentiable in x (grad = g W, W upcast).
at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Fp8Matmul mode);

// at::linear(x, weight upcast to x's dtype, bias) for a frozen weight stored in another dtype, keeping
// only the stored weight for backward (which upcasts it again): the graph holds no upcast copies.
at::Tensor upcast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// A parameter-free helper: registers an uninitialised parameter of `shape` on `module`.
at::Tensor register_empty(torch::nn::Module& module, const std::string& name, at::IntArrayRef shape,
                          const at::TensorOptions& options);

}  // namespace fluxtrain::models
