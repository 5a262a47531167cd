#include "models/linear.h"

namespace fluxtrain::models {

at::Tensor register_empty(torch::nn::Module& module, const std::string& name, at::IntArrayRef shape,
                          const at::TensorOptions& options) {
  return module.register_parameter(name, at::empty(shape, options));
}

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias, const at::TensorOptions& options,
                       std::optional<at::ScalarType> weight_dtype)
    : in_features(in), out_features(out) {
  weight = register_empty(*this, "weight", {out, in}, weight_dtype ? options.dtype(*weight_dtype) : options);
  if (with_bias) bias = register_empty(*this, "bias", {out}, options);
}

at::Tensor LinearImpl::weight_as(at::ScalarType dtype) const {
  return weight.scalar_type() == dtype ? weight : weight.to(dtype);
}

at::Tensor LinearImpl::forward_base(const at::Tensor& x) {
  at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  return at::linear(x, weight_as(x.scalar_type()), b);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  at::Tensor out = forward_base(x);
  return adapter ? adapter->forward(x, out) : out;
}

}  // namespace fluxtrain::models
