#include "optim/prodigy.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/error.h"

namespace fluxtrain::optim {
namespace {

// Every slice_p-th entry of the flattened tensor (prodigyopt's p.flatten()[::slice_p]).
at::Tensor sliced(const at::Tensor& t, int64_t slice_p) {
  return t.flatten().slice(0, 0, std::nullopt, slice_p);
}

}  // namespace

ProdigyOptimizer::ProdigyOptimizer(std::vector<at::Tensor> params, double lr, ProdigyOptions options)
    : Optimizer(std::move(params), lr), options_(options), d_(options.d0), d_max_(options.d0) {
  const auto [beta1, beta2] = options_.betas;
  if (!(options_.d0 > 0)) fail("Prodigy: d0 must be > 0, got ", options_.d0);
  if (!(lr > 0)) fail("Prodigy: the learning rate must be > 0, got ", lr, " (Prodigy's lr scales d; 1.0 is usual)");
  if (!(options_.eps > 0)) fail("Prodigy: eps must be > 0, got ", options_.eps);
  if (!(beta1 >= 0 && beta1 < 1)) fail("Prodigy: betas[0] must be in [0, 1), got ", beta1);
  if (!(beta2 >= 0 && beta2 < 1)) fail("Prodigy: betas[1] must be in [0, 1), got ", beta2);
  if (options_.slice_p < 1) fail("Prodigy: slice_p must be >= 1, got ", options_.slice_p);
}

void ProdigyOptimizer::set_lr_multipliers(std::vector<double> multipliers) {
  for (double m : multipliers) {
    if (m != 1.0)
      fail("Prodigy: per-parameter learning rates (LoRA+ loraplus_lr_ratio) are not supported: prodigyopt ",
           "requires one lr for all parameters");
  }
  Optimizer::set_lr_multipliers(std::move(multipliers));
}

void ProdigyOptimizer::step() {
  at::NoGradGuard no_grad;
  const auto [beta1, beta2] = options_.betas;
  const double beta3 = options_.beta3 ? *options_.beta3 : std::sqrt(beta2);
  const double d0 = options_.d0, decay = options_.weight_decay;
  const int64_t slice_p = options_.slice_p;
  const double lr = lr_;
  const double bias_correction =
      options_.use_bias_correction ? std::sqrt(1 - std::pow(beta2, k_ + 1)) / (1 - std::pow(beta1, k_ + 1)) : 1.0;
  double d = d_;
  const double dlr = d * lr * bias_correction;
  double delta_numerator = 0.0, d_denom = 0.0;

  // Pass 1: moments, the s accumulator and the numerator/denominator of the d estimate.
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor grad = p.grad();
    if (!grad.defined()) continue;
    // Coupled weight decay goes into the gradient itself, in place, as prodigyopt does.
    if (decay != 0 && !options_.decouple) grad.add_(p, decay);
    auto& state = slots(i);
    if (state.empty()) {
      state["s"] = at::zeros_like(sliced(p, slice_p));
      // An all-zero parameter (a LoRA up matrix) keeps a 0-d zero as p0, to save memory.
      state["p0"] = p.any().item<bool>() ? sliced(p, slice_p).clone() : at::zeros({}, p.options());
      if (beta1 > 0) state["exp_avg"] = at::zeros_like(p);
      state["exp_avg_sq"] = at::zeros_like(p);
    }
    if (lr > 0.0) {
      at::Tensor sliced_grad = sliced(grad, slice_p);
      // prodigyopt's torch.dot, as a product and ATen's own sum: BLAS dot may split the sum over a number
      // of threads that depends on the machine's load (MKL dynamic threading), which made a resumed run
      // differ in the last bits; ATen's reduction order is fixed for a given thread count.
      at::Tensor diff = state["p0"] - sliced(p, slice_p);
      delta_numerator += (d / d0) * dlr * (sliced_grad.reshape(-1) * diff.reshape(-1)).sum().item<double>();
      if (beta1 > 0) state["exp_avg"].mul_(beta1).add_(grad, d * (1 - beta1));
      state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, d * d * (1 - beta2));
      at::Tensor& s = state["s"];
      s.mul_(beta3).add_(sliced_grad, options_.safeguard_warmup ? (d / d0) * d : (d / d0) * dlr);
      d_denom += s.abs().sum().item<double>();
    }
  }
  // No progress possible (no gradient, all-zero gradients, or lr 0): prodigyopt returns here without
  // touching d, the numerator or k.
  if (d_denom == 0) return;

  const double d_numerator = d_numerator_ * beta3 + delta_numerator;
  double d_max = d_max_;
  const double d_hat = options_.d_coef * d_numerator / d_denom;
  if (d == d0) d = std::max(d, d_hat);
  d_max = std::max(d_max, d_hat);
  d = std::min(d_max, d * options_.growth_rate);
  d_numerator_ = d_numerator;
  d_denom_ = d_denom;
  d_ = d;
  d_max_ = d_max;
  d_hat_ = d_hat;

  // Pass 2: the Adam step with the new d in the denominator's eps and the old d in dlr.
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    at::Tensor grad = p.grad();
    if (!grad.defined()) continue;
    auto& state = slots(i);
    at::Tensor denom = state["exp_avg_sq"].sqrt().add_(d * options_.eps);
    if (decay != 0 && options_.decouple) p.add_(p, -decay * dlr);
    if (beta1 > 0)
      p.addcdiv_(state["exp_avg"], denom, -dlr);
    else
      p.addcdiv_(grad, denom, -dlr * d);
  }
  ++k_;
  ++steps_;
}

std::map<std::string, double> ProdigyOptimizer::stats() const {
  return {{"d", d_}, {"d*lr", d_ * lr_}};
}

void ProdigyOptimizer::save_scalars(nlohmann::json& out) const {
  out["d"] = d_;
  out["d_max"] = d_max_;
  out["d_numerator"] = d_numerator_;
  out["d_hat"] = d_hat_;
  out["d_denom"] = d_denom_;
  out["k"] = k_;
}

void ProdigyOptimizer::load_scalars(const nlohmann::json& in) {
  d_ = in.at("d").get<double>();
  d_max_ = in.at("d_max").get<double>();
  d_numerator_ = in.at("d_numerator").get<double>();
  d_hat_ = in.at("d_hat").get<double>();
  d_denom_ = in.at("d_denom").get<double>();
  k_ = in.at("k").get<int64_t>();
}

}  // namespace fluxtrain::optim
