// Small parameter-holding layers shared by the encoders (AE, CLIP, T5). Like Linear, each allocates its
// parameters uninitialised (at::empty) in the requested dtype/device — torch::nn::Conv2d and friends
// initialise on construction, which costs time and a full-size fp32 detour for real models and cannot
// run on the meta device — and names them `weight` / `bias` as torch does, so module paths stay
// checkpoint keys. Norm statistics are computed in fp32 whatever the storage dtype (spec/flux.md §6).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace fluxtrain::models {

// 2-D convolution with bias, square kernel.
class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride, int64_t padding,
             const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  int64_t stride, padding;
  at::Tensor weight, bias;
};
TORCH_MODULE(Conv2d);

// GroupNorm with affine weight/bias; statistics and the affine step in fp32, result cast back.
class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t groups, int64_t channels, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  int64_t groups;
  double eps;
  at::Tensor weight, bias;
};
TORCH_MODULE(GroupNorm);

// LayerNorm over the last dimension with weight/bias; fp32 statistics, result cast back.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  double eps;
  at::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

// A lookup table `weight` [num, dim]; forward(ids) = weight[ids].
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num, int64_t dim, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& ids);
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

}  // namespace fluxtrain::models
