#include "optim/adamw.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/error.h"
#include "optim/quantize.h"

namespace fluxtrain::optim {

AdamWOptimizer::AdamWOptimizer(std::vector<at::Tensor> params, double lr, AdamWOptions options)
    : Optimizer(std::move(params), lr), options_(options), param_steps_(params_.size(), 0) {
  const auto [beta1, beta2] = options_.betas;
  if (!(lr >= 0)) fail(name(), ": the learning rate must be >= 0, got ", lr);
  if (!(options_.eps >= 0)) fail(name(), ": eps must be >= 0, got ", options_.eps);
  if (!(beta1 >= 0 && beta1 < 1)) fail(name(), ": betas[0] must be in [0, 1), got ", beta1);
  if (!(beta2 >= 0 && beta2 < 1)) fail(name(), ": betas[1] must be in [0, 1), got ", beta2);
  if (options_.state_8bit && options_.amsgrad) fail("AdamW8bit: amsgrad is not supported with 8-bit state");
  if (options_.state_8bit) {
    signed_codes_ = dynamic_code_book(true);
    unsigned_codes_ = dynamic_code_book(false);
  }
}

void AdamWOptimizer::update_param(size_t i, at::Tensor& p, at::Tensor grad) {
  const auto [beta1, beta2] = options_.betas;
  auto& state = slots(i);
  const bool quantized = options_.state_8bit && p.numel() >= options_.min_8bit_size;
  at::Tensor exp_avg, exp_avg_sq;
  if (state.empty()) {
    exp_avg = at::zeros_like(p);
    exp_avg_sq = at::zeros_like(p);
    if (options_.amsgrad) state["max_exp_avg_sq"] = at::zeros_like(p);
  } else if (quantized) {
    exp_avg = dequantize_blockwise({state["exp_avg.codes"], state["exp_avg.absmax"]}, signed_codes_, p);
    exp_avg_sq = dequantize_blockwise({state["exp_avg_sq.codes"], state["exp_avg_sq.absmax"]}, unsigned_codes_, p);
  } else {
    exp_avg = state["exp_avg"];
    exp_avg_sq = state["exp_avg_sq"];
  }
  const int64_t step = ++param_steps_[i];
  const double lr = lr_ * multipliers_[i];

  // torch.optim.AdamW (_single_tensor_adamw), operation for operation.
  p.mul_(1 - lr * options_.weight_decay);
  exp_avg.lerp_(grad, 1 - beta1);
  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  at::Tensor denom;
  if (options_.amsgrad) {
    at::Tensor& max_sq = state["max_exp_avg_sq"];
    at::maximum_out(max_sq, max_sq, exp_avg_sq);
    denom = (max_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
  } else {
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
  }
  p.addcdiv_(exp_avg, denom, -step_size);

  if (quantized) {
    Quantized m = quantize_blockwise(exp_avg, signed_codes_), v = quantize_blockwise(exp_avg_sq, unsigned_codes_);
    state["exp_avg.codes"] = m.codes;
    state["exp_avg.absmax"] = m.absmax;
    state["exp_avg_sq.codes"] = v.codes;
    state["exp_avg_sq.absmax"] = v.absmax;
  } else {
    state["exp_avg"] = exp_avg;
    state["exp_avg_sq"] = exp_avg_sq;
  }
}

void AdamWOptimizer::save_scalars(nlohmann::json& out) const {
  out["param_steps"] = param_steps_;
}

void AdamWOptimizer::load_scalars(const nlohmann::json& in) {
  auto steps = in.at("param_steps").get<std::vector<int64_t>>();
  if (steps.size() != params_.size()) fail(name(), " state: param_steps has ", steps.size(), " entries");
  param_steps_ = steps;
}

}  // namespace fluxtrain::optim
