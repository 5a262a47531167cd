// Prodigy (Mishchenko & Defazio 2023): Adam whose step size d is estimated on the fly. Reproduces
// prodigyopt 1.1.2's Prodigy for one parameter group, argument for argument (fsdp_in_use aside).
#pragma once

#include <limits>
#include <optional>
#include <utility>

#include "optim/optimizer.h"

namespace fluxtrain::optim {

struct ProdigyOptions {
  std::pair<double, double> betas{0.9, 0.999};
  std::optional<double> beta3;  // none: sqrt(beta2)
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decouple = true;
  bool use_bias_correction = false;
  bool safeguard_warmup = false;
  double d0 = 1e-6;
  double d_coef = 1.0;
  double growth_rate = std::numeric_limits<double>::infinity();
  int64_t slice_p = 1;
};

class ProdigyOptimizer : public Optimizer {
 public:
  ProdigyOptimizer(std::vector<at::Tensor> params, double lr, ProdigyOptions options);
  std::string name() const override { return "Prodigy"; }
  bool element_wise() const override { return false; }
  void step() override;
  // prodigyopt refuses parameter groups with different learning rates.
  void set_lr_multipliers(std::vector<double> multipliers) override;
  std::map<std::string, double> stats() const override;

 protected:
  void save_scalars(nlohmann::json& out) const override;
  void load_scalars(const nlohmann::json& in) override;

 private:
  ProdigyOptions options_;
  double d_, d_max_, d_numerator_ = 0.0, d_hat_ = 0.0, d_denom_ = 0.0;
  int64_t k_ = 0;
};

}  // namespace fluxtrain::optim
