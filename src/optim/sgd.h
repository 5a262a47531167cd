// SGD with torch.optim.SGD's semantics: coupled weight decay (g += wd*p), momentum buffer started as a
// copy of the first gradient, dampening, Nesterov.
#pragma once

#include "optim/optimizer.h"

namespace fluxtrain::optim {

struct SgdOptions {
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SgdOptimizer : public Optimizer {
 public:
  SgdOptimizer(std::vector<at::Tensor> params, double lr, SgdOptions options);
  std::string name() const override { return "SGD"; }
  void update_param(size_t i, at::Tensor& p, at::Tensor grad) override;

 private:
  SgdOptions options_;
};

}  // namespace fluxtrain::optim
