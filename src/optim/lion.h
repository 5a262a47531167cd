// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as lucidrains/lion-pytorch
// (kohya's "Lion"): p *= 1 - lr*wd; p -= lr * sign(beta1*m + (1-beta1)*g); m = beta2*m + (1-beta2)*g.
#pragma once

#include <utility>

#include "optim/optimizer.h"

namespace fluxtrain::optim {

struct LionOptions {
  std::pair<double, double> betas{0.9, 0.99};
  double weight_decay = 0.0;
};

class LionOptimizer : public Optimizer {
 public:
  LionOptimizer(std::vector<at::Tensor> params, double lr, LionOptions options);
  std::string name() const override { return "Lion"; }
  void update_param(size_t i, at::Tensor& p, at::Tensor grad) override;

 private:
  LionOptions options_;
};

}  // namespace fluxtrain::optim
