// Lion and SGD: the two optimizers with one state tensor (or none).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "optim/lion.h"
#include "optim/sgd.h"

namespace fluxtrain::optim {

LionOptimizer::LionOptimizer(std::vector<at::Tensor> params, double lr, LionOptions options)
    : Optimizer(std::move(params), lr), options_(options) {
  const auto [beta1, beta2] = options_.betas;
  if (!(lr > 0)) fail("Lion: the learning rate must be > 0, got ", lr);
  if (!(beta1 >= 0 && beta1 <= 1 && beta2 >= 0 && beta2 <= 1))
    fail("Lion: betas must be in [0, 1], got ", beta1, ",", beta2);
}

void LionOptimizer::update_param(size_t i, at::Tensor& p, at::Tensor grad) {
  const auto [beta1, beta2] = options_.betas;
  auto& state = slots(i);
  if (state.empty()) state["exp_avg"] = at::zeros_like(p);
  at::Tensor& exp_avg = state["exp_avg"];
  const double lr = lr_ * multipliers_[i];
  p.mul_(1 - lr * options_.weight_decay);
  at::Tensor update = exp_avg.clone().mul_(beta1).add(grad, 1 - beta1).sign_();
  p.add_(update, -lr);
  exp_avg.mul_(beta2).add_(grad, 1 - beta2);
}

SgdOptimizer::SgdOptimizer(std::vector<at::Tensor> params, double lr, SgdOptions options)
    : Optimizer(std::move(params), lr), options_(options) {
  if (!(lr >= 0)) fail("SGD: the learning rate must be >= 0, got ", lr);
  if (!(options_.momentum >= 0)) fail("SGD: momentum must be >= 0, got ", options_.momentum);
  if (options_.nesterov && (options_.momentum <= 0 || options_.dampening != 0))
    fail("SGD: nesterov=True requires momentum > 0 and dampening=0");
}

void SgdOptimizer::update_param(size_t i, at::Tensor& p, at::Tensor grad) {
  if (options_.weight_decay != 0) grad = grad.add(p, options_.weight_decay);
  if (options_.momentum != 0) {
    auto& state = slots(i);
    auto it = state.find("momentum_buffer");
    if (it == state.end()) {
      it = state.emplace("momentum_buffer", grad.clone()).first;
    } else {
      it->second.mul_(options_.momentum).add_(grad, 1 - options_.dampening);
    }
    grad = options_.nesterov ? grad.add(it->second, options_.momentum) : it->second;
  }
  p.add_(grad, -lr_ * multipliers_[i]);
}

}  // namespace fluxtrain::optim
