#include "core/train_progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"

namespace fluxtrain {

std::string format_step_rate(double steps_per_second) {
  if (!(steps_per_second > 0) || !std::isfinite(steps_per_second)) return "-- it/s";
  char buffer[32];
  if (steps_per_second >= 1) {
    std::snprintf(buffer, sizeof buffer, "%.2f it/s", steps_per_second);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.2f s/it", 1.0 / steps_per_second);
  }
  return buffer;
}

std::string format_train_status(const TrainStatus& s, int bar_width, bool closing) {
  std::string text = cat("step ", s.step, "/", s.total);
  double fraction = s.total > 0 ? std::clamp(static_cast<double>(s.step) / static_cast<double>(s.total), 0.0, 1.0) : 0;
  if (bar_width > 0 && !closing) {
    int filled = static_cast<int>(std::floor(fraction * bar_width));
    text += " [" + std::string(filled, '#') + std::string(bar_width - filled, '.') + "]";
  } else if (s.total > 0) {
    char pct[24];
    std::snprintf(pct, sizeof pct, " (%.1f%%)", 100.0 * fraction);
    text += pct;
  }
  text += " " + format_step_rate(s.steps_per_second);
  if (closing) {
    if (s.elapsed_seconds >= 0) text += " in " + format_duration(s.elapsed_seconds);
  } else {
    text += " ETA " + format_duration(s.eta_seconds);
  }
  char buffer[48];
  if (s.has_loss) {
    std::snprintf(buffer, sizeof buffer, " loss %.4f", s.loss);
    text += buffer;
  }
  if (s.lr >= 0 && std::isfinite(s.lr)) {
    std::snprintf(buffer, sizeof buffer, " lr %.2e", s.lr);
    text += buffer;
  }
  if (s.memory_bytes >= 0) text += " mem " + format_bytes(s.memory_bytes);
  if (!s.extra.empty()) text += " " + s.extra;
  return text;
}

struct TrainProgress::State : log::detail::StatusLine {
  TrainProgressOptions options;
  bool tty = false;
  bool started = false;
  bool finished = false;
  double start_time = 0;  // first update
  double last_time = 0;   // previous update
  double last_emit = -1e300;
  int64_t first_step = 0;
  int64_t last_step = 0;
  // Bias-corrected moving averages: value = sum / weight.
  double loss_sum = 0, loss_weight = 0;
  double step_seconds_sum = 0, step_seconds_weight = 0;
  double last_loss = 0;
  double lr = -1;
  double memory_bytes = -1;
  std::string extra;
  mutable std::mutex mutex;
  // The text on screen, for redraws from log lines of other threads (read under the logger's lock).
  std::mutex shown_mutex;
  std::string shown;

  double now() const {
    if (options.clock_seconds) return options.clock_seconds();
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
  }

  double smoothed_loss() const { return loss_weight > 0 ? loss_sum / loss_weight : std::nan(""); }
  double rate() const { return step_seconds_weight > 0 ? step_seconds_weight / step_seconds_sum : 0; }

  TrainStatus status() const {
    TrainStatus s;
    s.step = last_step;
    s.total = options.total_steps;
    s.steps_per_second = rate();
    if (s.steps_per_second > 0 && s.total > 0) {
      s.eta_seconds = static_cast<double>(std::max<int64_t>(0, s.total - s.step)) / s.steps_per_second;
    }
    // A non-finite loss shows as such rather than vanishing into the average.
    s.has_loss = started;
    s.loss = std::isfinite(last_loss) ? smoothed_loss() : last_loss;
    s.lr = lr;
    s.memory_bytes = memory_bytes;
    s.extra = extra;
    s.elapsed_seconds = started ? last_time - start_time : -1;
    return s;
  }

  void emit(bool closing) {
    TrainStatus s = status();
    if (closing && s.elapsed_seconds > 0 && last_step > first_step) {
      s.steps_per_second = static_cast<double>(last_step - first_step) / s.elapsed_seconds;
    }
    std::string text = format_train_status(s, tty ? options.bar_width : 0, closing);
    last_emit = now();
    bool status_line = tty && !closing;
    if (options.sink) {
      options.sink(status_line ? text : text + "\n", status_line);
      return;
    }
    if (status_line) {
      winsize size{};
      if (ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 1 && text.size() >= size.ws_col) {
        text.resize(size.ws_col - 1);  // a wrapped line cannot be redrawn in place
      }
      {
        std::lock_guard<std::mutex> lock(shown_mutex);
        shown = text;
      }
      log::detail::write_terminal(text, true);
    } else {
      log::detail::write_terminal(text + "\n", false);
    }
  }

  void redraw_locked() override {
    std::lock_guard<std::mutex> lock(shown_mutex);
    std::fputs(shown.c_str(), stderr);
  }
};

TrainProgress::TrainProgress(TrainProgressOptions options) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.options = std::move(options);
  if (s.options.line_interval_seconds <= 0) s.options.line_interval_seconds = default_line_interval_seconds();
  s.options.loss_smoothing = std::clamp(s.options.loss_smoothing, 0.0, 0.9999);
  s.options.rate_smoothing = std::clamp(s.options.rate_smoothing, 0.0, 0.9999);
  s.tty = s.options.force_tty >= 0 ? s.options.force_tty == 1 : isatty(STDERR_FILENO) == 1;
  if (log::level() > log::Level::info && !s.options.sink) s.tty = false;
  if (s.tty && !s.options.sink) log::detail::set_status_line(state_.get());
}

TrainProgress::~TrainProgress() {
  try {
    finish();
  } catch (...) {
  }
}

void TrainProgress::update(int64_t step, double loss, double lr, double memory_bytes, std::string extra) {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  double t = s.now();
  if (!s.started) {
    // The first update only sets the reference point: the time before it is warmup, not a step rate.
    s.started = true;
    s.start_time = t;
    s.first_step = step;
  } else if (step > s.last_step) {
    double steps = static_cast<double>(step - s.last_step);
    double keep = std::pow(s.options.rate_smoothing, steps);
    s.step_seconds_sum = keep * s.step_seconds_sum + (1 - keep) * (t - s.last_time) / steps;
    s.step_seconds_weight = keep * s.step_seconds_weight + (1 - keep);
  }
  if (std::isfinite(loss)) {
    double b = s.options.loss_smoothing;
    s.loss_sum = b * s.loss_sum + (1 - b) * loss;
    s.loss_weight = b * s.loss_weight + (1 - b);
  }
  s.last_loss = loss;
  s.last_time = t;
  s.last_step = step;
  s.lr = lr;
  s.memory_bytes = memory_bytes;
  s.extra = std::move(extra);
  if (log::level() > log::Level::info && !s.options.sink) return;
  double interval = s.tty ? s.options.redraw_interval_seconds : s.options.line_interval_seconds;
  // The first update prints at once (last_emit starts far in the past): a slow first step is visibly
  // running. Then one plain line per interval, or one redraw per 0.2 s on a terminal.
  if (t - s.last_emit >= interval) s.emit(false);
}

void TrainProgress::finish() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.finished) return;
  s.finished = true;
  if (s.tty && !s.options.sink) log::detail::set_status_line(nullptr);
  if (!s.started) return;
  if (log::level() <= log::Level::info || s.options.sink) s.emit(true);
}

double TrainProgress::smoothed_loss() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->smoothed_loss();
}

double TrainProgress::steps_per_second() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->rate();
}

TrainStatus TrainProgress::status() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->status();
}

}  // namespace fluxtrain
