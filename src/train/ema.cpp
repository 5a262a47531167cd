#include "train/ema.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace fluxtrain::train {

Ema::Ema(const EmaOptions& options, const std::vector<at::Tensor>& params, const at::Device& device)
    : options_(options) {
  const at::Device where = options.device == EmaDevice::cpu ? at::Device(at::kCPU) : device;
  at::NoGradGuard no_grad;
  for (const auto& p : params) shadow_.push_back(p.detach().to(where, at::kFloat, false, /*copy=*/true));
}

double Ema::decay_of(int64_t update) const {
  // diffusers EMAModel.get_decay: the first update_after_step + 1 updates copy the weights.
  const int64_t s = std::max<int64_t>(0, update - options_.update_after_step - 1);
  if (s <= 0) return 0.0;
  const double step = static_cast<double>(s);
  double decay =
      options_.warmup ? 1 - std::pow(1 + step / options_.inv_gamma, -options_.power) : (1 + step) / (10 + step);
  decay = std::min(decay, options_.decay);
  return std::max(decay, options_.min_decay);
}

void Ema::after_step(int64_t step, const std::vector<at::Tensor>& params) {
  if (step % std::max<int64_t>(1, options_.update_interval) != 0) return;
  ++updates_;
  last_decay_ = decay_of(updates_);
  const double one_minus_decay = 1 - last_decay_;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < shadow_.size(); ++i) {
    // As EMAModel.step: shadow -= (1 - decay) * (shadow - param), in fp32 on the average's device.
    const at::Tensor p = params[i].detach().to(shadow_[i].device(), at::kFloat);
    shadow_[i].sub_((shadow_[i] - p).mul(one_minus_decay));
  }
}

std::vector<std::pair<std::string, at::Tensor>> Ema::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < shadow_.size(); ++i) out.emplace_back(std::to_string(i), shadow_[i].to(at::kCPU));
  return out;
}

nlohmann::json Ema::state_info() const {
  return {{"updates", updates_}, {"last_decay", last_decay_}};
}

void Ema::load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const nlohmann::json& info,
                     const std::string& dir) {
  if (tensors.size() != shadow_.size())
    fail(dir, ": the state's EMA holds ", tensors.size(), " tensors but this network trains ", shadow_.size(),
         "; it was saved by a different network configuration");
  // By name: a safetensors file lists its tensors sorted by name ("0", "1", "10", ...).
  const std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const auto it = by_name.find(std::to_string(i));
    if (it == by_name.end() || it->second.sizes() != shadow_[i].sizes() || it->second.scalar_type() != at::kFloat)
      fail(dir, ": EMA tensor '", i, "' is ",
           it == by_name.end() ? std::string("missing") : cat(it->second.sizes(), " ", it->second.scalar_type()),
           " where trained tensor ", i, " is ", shadow_[i].sizes(),
           " fp32; the state was saved by a different network "
           "configuration");
    shadow_[i].copy_(it->second);
  }
  updates_ = info.at("updates").get<int64_t>();
  last_decay_ = info.value("last_decay", 0.0);
}

Ema::Applied::Applied(const Ema& ema, const std::vector<at::Tensor>& params) : params_(params) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    live_.push_back(params_[i].detach().clone());
    params_[i].detach().copy_(ema.shadow_[i]);
  }
}

Ema::Applied::~Applied() {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) params_[i].detach().copy_(live_[i]);
}

std::string ema_file_name(const std::string& lora_path) {
  const std::string ext = ".safetensors";
  if (lora_path.size() >= ext.size() && lora_path.compare(lora_path.size() - ext.size(), ext.size(), ext) == 0)
    return lora_path.substr(0, lora_path.size() - ext.size()) + "-ema" + ext;
  return lora_path + "-ema";
}

}  // namespace fluxtrain::train
