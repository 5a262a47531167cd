#include "models/random_init.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cmath>

namespace fluxtrain::models {

void init_random(torch::nn::Module& module, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator g = at::detail::createCPUGenerator(seed);
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    at::Tensor p = item.value();
    const std::string& name = item.key();
    at::Tensor value;
    if (p.dim() >= 2) {
      double fan_in = static_cast<double>(p.numel() / p.size(0));
      value = at::randn(p.sizes(), g, at::kFloat) / std::sqrt(fan_in);
    } else if (name.ends_with("scale") || name.find("norm") != std::string::npos) {
      value = name.ends_with("bias") ? at::randn(p.sizes(), g, at::kFloat) * 0.05
                                     : 1.0 + at::randn(p.sizes(), g, at::kFloat) * 0.1;
    } else {
      value = at::randn(p.sizes(), g, at::kFloat) * 0.05;
    }
    p.copy_(value);
  }
}

}  // namespace fluxtrain::models
