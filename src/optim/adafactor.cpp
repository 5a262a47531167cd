#include "optim/adafactor.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/error.h"

namespace fluxtrain::optim {
namespace {

at::Tensor rms(const at::Tensor& t) {
  return t.norm(2) / std::sqrt(static_cast<double>(t.numel()));
}

}  // namespace

AdafactorOptimizer::AdafactorOptimizer(std::vector<at::Tensor> params, double lr, AdafactorOptions options)
    : Optimizer(std::move(params), lr), options_(options), param_steps_(params_.size(), 0) {
  if (options_.warmup_init && !options_.relative_step) fail("Adafactor: warmup_init=True requires relative_step=True");
}

void AdafactorOptimizer::update_param(size_t i, at::Tensor& p, at::Tensor grad) {
  // Half-precision parameters are updated in fp32 and copied back, as transformers does.
  const bool low_precision = grad.scalar_type() == at::kHalf || grad.scalar_type() == at::kBFloat16;
  if (low_precision) grad = grad.to(at::kFloat);
  at::Tensor p32 = (p.scalar_type() == at::kHalf || p.scalar_type() == at::kBFloat16) ? p.to(at::kFloat) : p;
  const bool factored = grad.dim() >= 2;
  auto& state = slots(i);
  if (state.empty()) {
    if (options_.beta1) state["exp_avg"] = at::zeros_like(grad);
    if (factored) {
      auto shape = grad.sizes().vec();
      auto row = std::vector<int64_t>(shape.begin(), shape.end() - 1);
      auto col = std::vector<int64_t>(shape.begin(), shape.end() - 2);
      col.push_back(shape.back());
      state["exp_avg_sq_row"] = at::zeros(row, grad.options());
      state["exp_avg_sq_col"] = at::zeros(col, grad.options());
    } else {
      state["exp_avg_sq"] = at::zeros_like(grad);
    }
  }
  const int64_t step = ++param_steps_[i];
  const double step_d = static_cast<double>(step);

  // Step size (Adafactor._get_lr); the RMS is of the parameter before this update.
  double rel_step = lr_ * multipliers_[i];
  if (options_.relative_step) {
    const double min_step = options_.warmup_init ? 1e-6 * step_d : 1e-2;
    rel_step = std::min(min_step, 1.0 / std::sqrt(step_d));
  }
  double param_scale = 1.0;
  if (options_.scale_parameter) param_scale = std::max(options_.eps.second, rms(p32).item<double>());
  const double lr = param_scale * rel_step;
  last_lr_ = lr;

  const double beta2t = 1.0 - std::pow(step_d, options_.decay_rate);
  at::Tensor update = grad.pow(2) + options_.eps.first;
  if (factored) {
    at::Tensor& row = state["exp_avg_sq_row"];
    at::Tensor& col = state["exp_avg_sq_col"];
    row.mul_(beta2t).add_(update.mean(-1), 1.0 - beta2t);
    col.mul_(beta2t).add_(update.mean(-2), 1.0 - beta2t);
    at::Tensor r_factor = (row / row.mean(-1, true)).rsqrt_().unsqueeze(-1);
    at::Tensor c_factor = col.unsqueeze(-2).rsqrt();
    update = at::mul(r_factor, c_factor);
    update.mul_(grad);
  } else {
    at::Tensor& v = state["exp_avg_sq"];
    v.mul_(beta2t).add_(update, 1.0 - beta2t);
    update = v.rsqrt().mul_(grad);
  }
  update.div_((rms(update) / options_.clip_threshold).clamp_(1.0));
  update.mul_(lr);
  if (options_.beta1) {
    at::Tensor& m = state["exp_avg"];
    m.mul_(*options_.beta1).add_(update, 1 - *options_.beta1);
    update = m;
  }
  if (options_.weight_decay != 0) p32.add_(p32, -options_.weight_decay * lr);
  p32.add_(-update);
  if (!p32.is_same(p)) p.copy_(p32);
}

void AdafactorOptimizer::save_scalars(nlohmann::json& out) const {
  out["param_steps"] = param_steps_;
  out["last_lr"] = last_lr_;
}

void AdafactorOptimizer::load_scalars(const nlohmann::json& in) {
  auto steps = in.at("param_steps").get<std::vector<int64_t>>();
  if (steps.size() != params_.size()) fail("Adafactor state: param_steps has ", steps.size(), " entries");
  param_steps_ = steps;
  last_lr_ = in.at("last_lr").get<double>();
}

}  // namespace fluxtrain::optim
