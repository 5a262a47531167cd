#include "optim/optimizer.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace fluxtrain::optim {

Optimizer::Optimizer(std::vector<at::Tensor> params, double lr)
    : params_(std::move(params)), multipliers_(params_.size(), 1.0), lr_(lr), slots_(params_.size()) {
  for (size_t i = 0; i < params_.size(); ++i) {
    TORCH_CHECK(params_[i].defined() && at::isFloatingType(params_[i].scalar_type()), "optimizer parameter ", i,
                " must be a defined floating-point tensor");
  }
}

void Optimizer::zero_grad() {
  for (auto& p : params_) p.mutable_grad() = at::Tensor();
}

void Optimizer::set_lr_multipliers(std::vector<double> multipliers) {
  if (multipliers.size() != params_.size())
    fail(name(), ": got ", multipliers.size(), " lr multipliers for ", params_.size(), " parameters");
  multipliers_ = std::move(multipliers);
}

int64_t Optimizer::state_bytes() const {
  int64_t total = 0;
  for (const auto& slots : slots_) {
    for (const auto& [name, t] : slots) total += static_cast<int64_t>(t.nbytes());
  }
  return total;
}

std::vector<std::pair<std::string, at::Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < slots_.size(); ++i) {
    for (const auto& [slot, t] : slots_[i]) out.emplace_back(cat(i, ".", slot), t);
  }
  return out;
}

nlohmann::json Optimizer::state_scalars() const {
  nlohmann::json out = {{"optimizer", name()}, {"num_params", params_.size()}, {"lr", lr_}, {"steps", steps_}};
  save_scalars(out);
  return out;
}

void Optimizer::load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                           const nlohmann::json& scalars) {
  try {
    if (scalars.at("optimizer").get<std::string>() != name())
      fail("optimizer state was saved by ", scalars.at("optimizer").get<std::string>(), ", this run uses ", name(),
           " (resume with the same optimizer_type)");
    if (scalars.at("num_params").get<size_t>() != params_.size())
      fail("optimizer state holds ", scalars.at("num_params").get<size_t>(), " parameters, this run has ",
           params_.size(), " (resume with the same network settings)");
    lr_ = scalars.at("lr").get<double>();
    steps_ = scalars.at("steps").get<int64_t>();
    load_scalars(scalars);
  } catch (const nlohmann::json::exception& e) {
    fail("optimizer state scalars: ", e.what(), " (incomplete or foreign state file?)");
  }
  for (auto& slots : slots_) slots.clear();
  for (const auto& [name, t] : tensors) {
    size_t dot = name.find('.');
    size_t index = 0;
    bool ok = dot != std::string::npos && dot > 0 && name.find_first_not_of("0123456789") == dot;
    if (ok) index = std::stoul(name.substr(0, dot));
    if (!ok || index >= params_.size())
      fail("optimizer state tensor \"", name, "\" does not name one of the ", params_.size(),
           " parameters (expected \"<index>.<slot>\")");
    slots_[index][name.substr(dot + 1)] = t.to(params_[index].device()).clone();
  }
}

void Optimizer::step() {
  at::NoGradGuard no_grad;
  bool any = false;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i];
    if (!p.grad().defined()) continue;
    any = true;
    update_param(i, p, p.grad());
  }
  if (any) ++steps_;
}

void Optimizer::update_param(size_t, at::Tensor&, at::Tensor) {
  fail("internal: ", name(), " implements neither step() nor update_param()");
}

}  // namespace fluxtrain::optim
