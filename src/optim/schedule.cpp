#include "optim/schedule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::optim {
namespace {

double parse_number(const std::string& text, const std::string& what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    fail("lr schedule piecewise_constant: ", what, " \"", text, "\" is not a number");
  return v;
}

}  // namespace

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names = {
      "constant",   "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
      "polynomial", "piecewise_constant"};
  return names;
}

int64_t resolve_warmup_steps(double warmup, int64_t num_training_steps) {
  if (warmup > 0 && warmup < 1) return static_cast<int64_t>(warmup * static_cast<double>(num_training_steps));
  if (!(warmup >= 0) || std::floor(warmup) != warmup)
    fail("lr_warmup_steps ", warmup, " is neither a step count (integer >= 0) nor a fraction of the steps (0 < x < 1)");
  return static_cast<int64_t>(warmup);
}

LrSchedule::LrSchedule(ScheduleOptions options, double base_lr)
    : options_(std::move(options)), base_lr_(base_lr), warmup_steps_(0) {
  const std::string name = lower(options_.name);
  const auto& names = schedule_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string hint = closest_match(name, names);
    fail("unknown lr_scheduler \"", options_.name, "\"",
         hint.empty() ? std::string() : cat(" (did you mean ", hint, "?)"), "; valid: ", join(names));
  }
  options_.name = name;
  warmup_steps_ = resolve_warmup_steps(options_.warmup, options_.num_training_steps);
  if (name == "polynomial" && !(base_lr_ > options_.lr_end))
    fail("lr_scheduler polynomial: lr_end (", options_.lr_end, ") must be smaller than the learning rate (", base_lr_,
         ")");
  if (name == "piecewise_constant") {
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
      size_t comma = options_.step_rules.find(',', start);
      parts.push_back(options_.step_rules.substr(start, comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      size_t colon = parts[i].find(':');
      if (colon == std::string::npos)
        fail("lr schedule piecewise_constant: rule \"", parts[i],
             "\" is not multiplier:step (e.g. \"1:10,0.1:20,0.01\")");
      double value = parse_number(parts[i].substr(0, colon), "multiplier");
      double steps = parse_number(parts[i].substr(colon + 1), "step");
      rules_.emplace_back(static_cast<int64_t>(steps), value);
    }
    last_rule_ = parse_number(parts.back(), "final multiplier");
    std::sort(rules_.begin(), rules_.end());
  }
}

double LrSchedule::multiplier(int64_t step) const {
  const std::string& name = options_.name;
  const double s = static_cast<double>(step);
  const int64_t warmup = warmup_steps_, total = options_.num_training_steps;
  if (name == "constant") return 1.0;
  if (name == "piecewise_constant") {
    for (const auto& [before, value] : rules_) {
      if (step < before) return value;
    }
    return last_rule_;
  }
  if (step < warmup) {
    // constant_with_warmup divides by max(1.0, warmup), the others by max(1, warmup): the same number.
    return s / static_cast<double>(std::max<int64_t>(1, warmup));
  }
  if (name == "constant_with_warmup") return 1.0;
  if (name == "linear") {
    const double progress =
        static_cast<double>(total - step) / static_cast<double>(std::max<int64_t>(1, total - warmup));
    return std::max(0.0, progress);
  }
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (name == "cosine") return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
  if (name == "cosine_with_restarts") {
    if (progress >= 1.0) return 0.0;
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * std::fmod(options_.num_cycles * progress, 1.0))));
  }
  // polynomial
  const double lr_init = base_lr_, lr_end = options_.lr_end;
  if (step > total || total == warmup) return lr_end / lr_init;
  const double pct_remaining = 1 - static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
  const double decay = (lr_init - lr_end) * std::pow(pct_remaining, options_.power) + lr_end;
  return decay / lr_init;
}

}  // namespace fluxtrain::optim
