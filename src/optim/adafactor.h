// Adafactor (Shazeer & Stern 2018) with transformers.optimization.Adafactor's semantics: factored second
// moment (row and column means) for parameters of 2 or more dimensions, update clipping, optional first
// moment (beta1), relative step size (min(1e-2, 1/sqrt(step)), or 1e-6*step with warmup_init) and
// parameter-scaled step size (scale_parameter). With relative_step the learning rate is ignored, as
// kohya passes lr=None to transformers in that case; stats() reports the step size actually used.
#pragma once

#include <optional>
#include <utility>

#include "optim/optimizer.h"

namespace fluxtrain::optim {

struct AdafactorOptions {
  std::pair<double, double> eps{1e-30, 1e-3};
  double clip_threshold = 1.0;
  double decay_rate = -0.8;
  std::optional<double> beta1;
  double weight_decay = 0.0;
  bool scale_parameter = true;
  bool relative_step = true;
  bool warmup_init = false;
};

class AdafactorOptimizer : public Optimizer {
 public:
  AdafactorOptimizer(std::vector<at::Tensor> params, double lr, AdafactorOptions options);
  std::string name() const override { return "Adafactor"; }
  void update_param(size_t i, at::Tensor& p, at::Tensor grad) override;
  std::map<std::string, double> stats() const override { return {{"lr", last_lr_}}; }

 protected:
  void save_scalars(nlohmann::json& out) const override;
  void load_scalars(const nlohmann::json& in) override;

 private:
  AdafactorOptions options_;
  std::vector<int64_t> param_steps_;
  double last_lr_ = 0.0;
};

}  // namespace fluxtrain::optim
