// make_optimizer: kohya's optimizer_type names and optimizer_args keys (the reference's own argument
// names, read by sd-scripts with ast.literal_eval) mapped onto our optimizers.
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "core/strings.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/args.h"
#include "optim/lion.h"
#include "optim/prodigy.h"
#include "optim/sgd.h"

namespace fluxtrain::optim {
namespace {}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& type, const std::string& args,
                                          std::vector<at::Tensor> params, double lr, double weight_decay) {
  OptimizerSettings settings;
  settings.type = type;
  settings.args = args;
  settings.learning_rate = lr;
  settings.weight_decay = weight_decay;
  return make_optimizer(settings, std::move(params), /*weight_decay_is_default=*/true);
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSettings& settings, std::vector<at::Tensor> params,
                                          bool weight_decay_is_default) {
  const std::string& type = settings.type;
  const std::string& args = settings.args;
  const double lr = settings.learning_rate;
  const auto& types = optimizer_types();
  auto it = std::find_if(types.begin(), types.end(), [&](const std::string& t) { return lower(t) == lower(type); });
  if (it == types.end()) {
    std::vector<std::string> lowered;
    for (const auto& t : types) lowered.push_back(lower(t));
    std::string hint = closest_match(lower(type), lowered);
    if (!hint.empty()) hint = types[std::find(lowered.begin(), lowered.end(), hint) - lowered.begin()];
    fail("unknown optimizer_type \"", type, "\"", hint.empty() ? std::string() : cat(" (did you mean ", hint, "?)"),
         "; valid (case-insensitive): ", join(types));
  }
  const std::string& name = *it;
  ArgReader r(name, args);
  // A typed setting and the same key in optimizer_args would be two values for one thing; the option
  // table reports it with the user's spellings before a run starts, this guards every other caller.
  for (const auto& [key, value] : {std::pair{"weight_decay", settings.weight_decay}, std::pair{"d_coef", settings.d_coef}}) {
    if (value && r.has(key) && !(weight_decay_is_default && std::string(key) == "weight_decay"))
      fail(name, ": ", key, " is given both as a setting (", *value, ") and in optimizer_args; keep one");
  }
  if (settings.d_coef && name != "Prodigy") fail(name, ": d_coef applies to the Prodigy optimizer only");
  const double weight_decay = settings.weight_decay.value_or(0.0);
  std::unique_ptr<Optimizer> out;
  if (name == "Prodigy") {
    ProdigyOptions o;
    o.betas = r.pair("betas", o.betas);
    o.beta3 = r.optional_real("beta3", o.beta3);
    o.eps = r.real("eps", o.eps);
    o.weight_decay = r.real("weight_decay", weight_decay);
    o.decouple = r.flag("decouple", o.decouple);
    o.use_bias_correction = r.flag("use_bias_correction", o.use_bias_correction);
    o.safeguard_warmup = r.flag("safeguard_warmup", o.safeguard_warmup);
    o.d0 = r.real("d0", o.d0);
    o.d_coef = r.real("d_coef", settings.d_coef.value_or(o.d_coef));
    o.growth_rate = r.real("growth_rate", o.growth_rate);
    o.slice_p = r.integer("slice_p", o.slice_p);
    r.flag("fsdp_in_use", false);  // accepted for compatibility; one process holds whole tensors
    r.finish();
    out = std::make_unique<ProdigyOptimizer>(std::move(params), lr, o);
  } else if (name == "AdamW" || name == "AdamW8bit") {
    AdamWOptions o;
    o.state_8bit = name == "AdamW8bit";
    o.betas = r.pair("betas", o.betas);
    o.eps = r.real("eps", o.eps);
    o.weight_decay = r.real("weight_decay", weight_decay);
    if (o.state_8bit)
      o.min_8bit_size = r.integer("min_8bit_size", o.min_8bit_size);
    else
      o.amsgrad = r.flag("amsgrad", o.amsgrad);
    r.finish();
    out = std::make_unique<AdamWOptimizer>(std::move(params), lr, o);
  } else if (name == "Adafactor") {
    AdafactorOptions o;
    o.eps = r.pair("eps", o.eps);
    o.clip_threshold = r.real("clip_threshold", o.clip_threshold);
    o.decay_rate = r.real("decay_rate", o.decay_rate);
    o.beta1 = r.optional_real("beta1", o.beta1);
    o.weight_decay = r.real("weight_decay", weight_decay);
    o.scale_parameter = r.flag("scale_parameter", o.scale_parameter);
    o.relative_step = r.flag("relative_step", o.relative_step);
    o.warmup_init = r.flag("warmup_init", o.warmup_init);
    r.finish();
    out = std::make_unique<AdafactorOptimizer>(std::move(params), lr, o);
  } else if (name == "Lion") {
    LionOptions o;
    o.betas = r.pair("betas", o.betas);
    o.weight_decay = r.real("weight_decay", weight_decay);
    r.finish();
    out = std::make_unique<LionOptimizer>(std::move(params), lr, o);
  } else {
    SgdOptions o;
    o.momentum = r.real("momentum", o.momentum);
    o.dampening = r.real("dampening", o.dampening);
    o.weight_decay = r.real("weight_decay", weight_decay);
    o.nesterov = r.flag("nesterov", o.nesterov);
    r.finish();
    out = std::make_unique<SgdOptimizer>(std::move(params), lr, o);
  }
  return out;
}

}  // namespace fluxtrain::optim
