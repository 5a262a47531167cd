// The optimizer of a run as the user chose it: kohya's type name and optimizer_args, and the settings the
// seed passes as variables of their own (PARAMS_D_COEF, PARAMS_WEIGHT_DECAY), typed. Plain data,
// torch-free: the train option table fills it, optim::make_optimizer builds from it.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace fluxtrain::optim {

// The optimizer types, as kohya names them (matched case-insensitively by make_optimizer; the option
// table offers exactly these).
const std::vector<std::string>& optimizer_types();

// The member initialisers are the train option table's defaults (a unit test holds them equal).
struct OptimizerSettings {
  std::string type = "Prodigy";
  std::string args;  // kohya's "key=value ..." (optim/args.h)
  double learning_rate = 1.0;
  // Set: overrides the optimizer's own default; a weight_decay / d_coef key in `args` as well is an Error.
  std::optional<double> weight_decay;
  std::optional<double> d_coef;             // Prodigy only
  std::optional<double> loraplus_lr_ratio;  // LoRA+: lr of the up matrices / lr of the down matrices
};

// kohya's ss_optimizer text: "Prodigy(decouple=True d_coef=2.0)", the typed settings appended as keys.
std::string describe(const OptimizerSettings& settings);

}  // namespace fluxtrain::optim
