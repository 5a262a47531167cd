#include "models/layers.h"

#include <ATen/ATen.h>

#include "models/linear.h"

namespace fluxtrain::models {

namespace {

at::Tensor as_type(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

}  // namespace

Conv2dImpl::Conv2dImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride_, int64_t padding_,
                       const at::TensorOptions& options)
    : stride(stride_), padding(padding_) {
  weight = register_empty(*this, "weight", {out, in, kernel, kernel}, options);
  bias = register_empty(*this, "bias", {out}, options);
}

at::Tensor Conv2dImpl::forward(const at::Tensor& x) {
  return at::conv2d(x, as_type(weight, x.scalar_type()), as_type(bias, x.scalar_type()), stride, padding);
}

GroupNormImpl::GroupNormImpl(int64_t groups_, int64_t channels, double eps_, const at::TensorOptions& options)
    : groups(groups_), eps(eps_) {
  weight = register_empty(*this, "weight", {channels}, options);
  bias = register_empty(*this, "bias", {channels}, options);
}

at::Tensor GroupNormImpl::forward(const at::Tensor& x) {
  at::Tensor out =
      at::group_norm(as_type(x, at::kFloat), groups, as_type(weight, at::kFloat), as_type(bias, at::kFloat), eps);
  return as_type(out, x.scalar_type());
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps_, const at::TensorOptions& options) : eps(eps_) {
  weight = register_empty(*this, "weight", {dim}, options);
  bias = register_empty(*this, "bias", {dim}, options);
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  at::Tensor out =
      at::layer_norm(as_type(x, at::kFloat), {x.size(-1)}, as_type(weight, at::kFloat), as_type(bias, at::kFloat), eps);
  return as_type(out, x.scalar_type());
}

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim, const at::TensorOptions& options) {
  weight = register_empty(*this, "weight", {num, dim}, options);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) {
  return at::embedding(weight, ids);
}

}  // namespace fluxtrain::models
