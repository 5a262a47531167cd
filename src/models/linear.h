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

namespace fluxtrain::models {

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
  // The output of the frozen weights only (ignores the adapter).
  at::Tensor forward_base(const at::Tensor& x);
  // Weight in the given compute dtype (upcast from fp8 storage when needed).
  at::Tensor weight_as(at::ScalarType dtype) const;

  int64_t in_features;
  int64_t out_features;
  at::Tensor weight;
  at::Tensor bias;  // undefined when the layer has no bias
  std::shared_ptr<LinearAdapter> adapter;
};
TORCH_MODULE(Linear);

// A parameter-free helper: registers an uninitialised parameter of `shape` on `module`.
at::Tensor register_empty(torch::nn::Module& module, const std::string& name, at::IntArrayRef shape,
                          const at::TensorOptions& options);

}  // namespace fluxtrain::models
