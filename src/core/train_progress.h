// The training loop's status line. On a terminal, redrawn in place at most 5 times a second:
//   step 120/2000 [#.........] 1.85 it/s ETA 16:57 loss 0.1423 lr 1.00e-04 mem 21.3 GB
// Otherwise (logs, pods, CI), one plain line every N seconds, without the bar:
//   step 120/2000 (6.0%) 1.85 it/s ETA 16:57 loss 0.1423 lr 1.00e-04 mem 21.3 GB
// and a closing line at the end. Generic long operations (caching, downloads) use core/progress.h; the
// training line differs in what it shows (smoothed loss, lr, memory) and in how it measures the rate
// (smoothed over recent steps, not averaged from the start, since step times change after warmup).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace fluxtrain {

// What one status line shows. NaN / negative fields are left out (memory_bytes < 0, lr NaN), except the
// loss, which shows as "nan" so that a diverged run is visible.
struct TrainStatus {
  int64_t step = 0;
  int64_t total = 0;
  double steps_per_second = 0;  // 0: not measured yet ("-- it/s", "ETA --:--")
  double eta_seconds = -1;
  double loss = 0;
  bool has_loss = false;
  double lr = -1;
  double memory_bytes = -1;
  std::string extra;            // appended as is, e.g. "d*lr 3.1e-04"
  double elapsed_seconds = -1;  // for the closing line
};

// bar_width > 0: "[###.......]" after the step count (terminal); 0: "(6.0%)" instead (plain lines).
// closing: "in 1:02:03" instead of the ETA, and the rate is the average of the whole run.
std::string format_train_status(const TrainStatus& status, int bar_width, bool closing = false);

// "1.85 it/s" at one step a second or faster, "2.41 s/it" below; "-- it/s" when unknown.
std::string format_step_rate(double steps_per_second);

struct TrainProgressOptions {
  int64_t total_steps = 0;
  // Seconds between plain lines when not on a terminal. 0 = default_line_interval_seconds() (as
  // core/progress.h).
  double line_interval_seconds = 0;
  // Least time between redraws on a terminal (0.2 s: at most 5 a second).
  double redraw_interval_seconds = 0.2;
  // The shown loss is an exponential moving average, s = b * s + (1 - b) * loss, divided by 1 - b^n
  // (bias correction, so the first steps show their own mean rather than a value pulled towards 0).
  // b = 0.98 averages over about the last 50 steps: flow-matching losses jump by 2-5x from step to step
  // with the random timestep, so a shorter window hides the trend.
  double loss_smoothing = 0.98;
  // The rate is the same kind of average over step durations, b = 0.9 per step (about 10 steps). The
  // time before the first update (model warmup) is not counted.
  double rate_smoothing = 0.9;
  int bar_width = 20;
  // Test hooks, as in ProgressOptions: output (default: the logger's terminal writer), terminal or not
  // (default: stderr is a TTY), clock (default: steady_clock).
  std::function<void(const std::string& text, bool is_status)> sink;
  int force_tty = -1;
  std::function<double()> clock_seconds;
};

class TrainProgress {
 public:
  explicit TrainProgress(TrainProgressOptions options);
  ~TrainProgress();
  TrainProgress(const TrainProgress&) = delete;
  TrainProgress& operator=(const TrainProgress&) = delete;

  // After each optimizer step: the global step reached (a resumed run starts past 0; only the steps of
  // this session count for the rate), this step's loss, the learning rate, the accelerator memory in
  // bytes (< 0: not shown) and free text to append.
  void update(int64_t step, double loss, double lr, double memory_bytes = -1, std::string extra = {});
  // Prints the closing line (also done by the destructor); nothing if update() was never called.
  void finish();

  double smoothed_loss() const;
  double steps_per_second() const;
  TrainStatus status() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace fluxtrain
