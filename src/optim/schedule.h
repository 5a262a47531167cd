// Learning-rate schedules with diffusers.optimization.get_scheduler's formulas (which kohya uses): the lr
// of step s (0-based, what LambdaLR sees: the first step gets s = 0) is base_lr * multiplier(s).
//   constant              1
//   constant_with_warmup  s/warmup during warmup, then 1
//   linear                warmup, then (total - s)/(total - warmup), floored at 0
//   cosine                warmup, then a half cosine to 0 (get_scheduler never passes num_cycles here, so
//                         neither does kohya: num_cycles is ignored for "cosine", as there)
//   cosine_with_restarts  warmup, then num_cycles hard-restarted half cosines, 0 from total on
//   polynomial            warmup, then (base - lr_end)*(1 - progress)^power + lr_end, divided by base;
//                         lr_end = 1e-7 and base must exceed it
//   piecewise_constant    diffusers' step_rules "1:10,0.1:20,0.005": multiplier 1 before step 10, ...
// Warmup is kohya's lr_warmup_steps: an integer step count, or a fraction of the total when 0 < x < 1
// (int(x * total)).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::optim {

struct ScheduleOptions {
  std::string name = "cosine";
  double warmup = 0;  // steps, or a fraction of num_training_steps when 0 < warmup < 1
  int64_t num_training_steps = 0;
  double num_cycles = 1;
  double power = 1;
  double lr_end = 1e-7;
  std::string step_rules;  // piecewise_constant only
};

const std::vector<std::string>& schedule_names();

// kohya's lr_warmup_steps semantics; throws Error for negative or non-integer values >= 1.
int64_t resolve_warmup_steps(double warmup, int64_t num_training_steps);

class LrSchedule {
 public:
  // Throws Error naming the schedule for unknown names (with the valid list) and bad settings.
  LrSchedule(ScheduleOptions options, double base_lr);
  double multiplier(int64_t step) const;
  double lr(int64_t step) const { return base_lr_ * multiplier(step); }
  int64_t warmup_steps() const { return warmup_steps_; }
  const ScheduleOptions& options() const { return options_; }

 private:
  ScheduleOptions options_;
  double base_lr_;
  int64_t warmup_steps_;
  std::vector<std::pair<int64_t, double>> rules_;  // piecewise_constant: (before step, multiplier), sorted
  double last_rule_ = 1.0;
};

}  // namespace fluxtrain::optim
