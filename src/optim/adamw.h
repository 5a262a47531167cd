// AdamW with torch.optim.AdamW's semantics (decoupled weight decay p *= 1 - lr*wd, bias-corrected
// moments, optional amsgrad), and "AdamW8bit": the same update with both moments held in blockwise
// 8-bit form between steps, as bitsandbytes' AdamW8bit (see quantize.h). As in bitsandbytes, tensors
// with fewer than min_8bit_size elements keep 32-bit moments.
#pragma once

#include <utility>

#include "optim/optimizer.h"

namespace fluxtrain::optim {

struct AdamWOptions {
  std::pair<double, double> betas{0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.01;
  bool amsgrad = false;
  bool state_8bit = false;
  int64_t min_8bit_size = 4096;
};

class AdamWOptimizer : public Optimizer {
 public:
  AdamWOptimizer(std::vector<at::Tensor> params, double lr, AdamWOptions options);
  std::string name() const override { return options_.state_8bit ? "AdamW8bit" : "AdamW"; }
  void update_param(size_t i, at::Tensor& p, at::Tensor grad) override;

 protected:
  void save_scalars(nlohmann::json& out) const override;
  void load_scalars(const nlohmann::json& in) override;

 private:
  AdamWOptions options_;
  std::vector<int64_t> param_steps_;
  at::Tensor signed_codes_, unsigned_codes_;
};

}  // namespace fluxtrain::optim
