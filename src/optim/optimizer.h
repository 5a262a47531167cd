// Optimizers for the LoRA weights: one small base class and the factory that builds one from kohya's
// names and `optimizer_args` string. Each optimizer reproduces a Python reference (named in its header),
// proven by tests/parity/test_optimizers.py.
//
// Parameters are plain tensors (fp32 in training, float64 in the parity tests); step() reads their
// .grad() and updates them in place. A parameter whose grad is undefined is skipped, as torch does.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "optim/options.h"

namespace fluxtrain::optim {

class Optimizer {
 public:
  Optimizer(std::vector<at::Tensor> params, double lr);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // kohya's name of the optimizer ("Prodigy", "AdamW8bit", ...).
  virtual std::string name() const = 0;
  // Element-wise optimizers: update_param() for every parameter that has a gradient, then the step
  // count moves on (if anything was updated). Optimizers that need all gradients at once (Prodigy's
  // d estimate) override step() itself.
  virtual void step();
  // Each parameter's update depends on its own gradient and state only (not Prodigy's d estimate, which
  // reads every gradient): its state can then be sharded across data-parallel ranks (ZeRO stage 1).
  virtual bool element_wise() const { return true; }
  // Drops every gradient (torch's zero_grad(set_to_none=True)).
  void zero_grad();

  // The learning rate of the next step (a scheduler sets it before each step).
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  // Per-parameter lr multipliers (LoRA+); all 1 by default.
  virtual void set_lr_multipliers(std::vector<double> multipliers);

  const std::vector<at::Tensor>& params() const { return params_; }
  // Numbers worth logging (Prodigy's d, Adafactor's effective lr, ...).
  virtual std::map<std::string, double> stats() const { return {}; }
  // Bytes held by the optimizer state.
  int64_t state_bytes() const;

  // The complete state, for exact resume: tensors named "<param index>.<slot>" (e.g. "3.exp_avg") and
  // scalars as JSON (doubles written by nlohmann round-trip exactly). load_state() into an optimizer
  // built with the same parameters and arguments continues bit for bit as if never interrupted.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  nlohmann::json state_scalars() const;
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const nlohmann::json& scalars);

 protected:
  // The slots of parameter i ("exp_avg", ...), created lazily on its first step.
  std::map<std::string, at::Tensor>& slots(size_t i) { return slots_[i]; }
  // One parameter's update; `grad` is defined (and may be modified: it is a handle the caller drops).
  virtual void update_param(size_t i, at::Tensor& p, at::Tensor grad);
  // Optimizer-specific scalars beyond lr and the step count.
  virtual void save_scalars(nlohmann::json& /*out*/) const {}
  virtual void load_scalars(const nlohmann::json& /*in*/) {}

  std::vector<at::Tensor> params_;
  std::vector<double> multipliers_;
  double lr_;
  int64_t steps_ = 0;  // step() calls that updated something

 private:
  std::vector<std::map<std::string, at::Tensor>> slots_;
};

// Builds an optimizer. `args` is kohya's optimizer_args string ("decouple=True betas=0.9,0.99 ...");
// a weight_decay key there overrides `weight_decay`. Unknown types, unknown keys and bad values are
// Errors that name them and list what is valid.
std::unique_ptr<Optimizer> make_optimizer(const std::string& type, const std::string& args,
                                          std::vector<at::Tensor> params, double lr, double weight_decay);
// The same from a run's typed settings (optim/options.h): weight_decay and d_coef, when set, override
// the optimizer's defaults. weight_decay_is_default: settings.weight_decay is a caller's fallback that a
// weight_decay key in args may override (the form above) rather than the user's own setting.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings, std::vector<at::Tensor> params,
                                          bool weight_decay_is_default = false);

}  // namespace fluxtrain::optim
