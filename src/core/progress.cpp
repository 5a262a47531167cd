#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <mutex>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain {

namespace {

constexpr double kDefaultLineInterval = 10.0;
std::atomic<double> default_line_interval{kDefaultLineInterval};

}  // namespace

void set_default_line_interval_seconds(double seconds) {
  default_line_interval = seconds > 0 ? seconds : kDefaultLineInterval;
}

double default_line_interval_seconds() {
  return default_line_interval;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  long long s = std::llround(seconds);
  char buffer[32];
  if (s >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%02lld:%02lld", s / 60, s % 60);
  }
  return buffer;
}

struct Progress::State : log::detail::StatusLine {
  std::string label;
  int64_t total = 0;
  ProgressOptions options;
  bool tty = false;
  double start = 0;
  double last_emit = -1e300;
  int64_t done = 0;
  std::string note;
  std::string last_text;
  bool finished = false;
  std::mutex mutex;

  double now() const {
    if (options.clock_seconds) return options.clock_seconds();
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
  }

  std::string amount(double value) const {
    if (options.unit == "B") return format_bytes(value);
    return std::to_string(static_cast<long long>(value));
  }

  std::string rate_text(double rate) const {
    char buffer[48];
    if (options.unit == "B") return format_bytes(rate) + "/s";
    if (rate >= 1 || rate == 0) {
      std::snprintf(buffer, sizeof buffer, "%.2f %s/s", rate, options.unit.c_str());
    } else {
      std::snprintf(buffer, sizeof buffer, "%.2f s/%s", 1.0 / rate, options.unit.c_str());
    }
    return buffer;
  }

  std::string render(bool closing) const {
    double elapsed = now() - start;
    double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
    double eta = (rate > 0 && total > 0) ? static_cast<double>(total - done) / rate : NAN;
    std::string text = label;
    char pct[16] = "";
    if (total > 0) {
      std::snprintf(pct, sizeof pct, "%5.1f%%", 100.0 * static_cast<double>(done) / total);
    }
    if (tty && !closing && total > 0) {
      const int width = 24;
      int filled = static_cast<int>(width * std::min<double>(1.0, static_cast<double>(done) / total));
      text += " " + std::string(pct) + " |" + std::string(filled, '#') + std::string(width - filled, ' ') + "|";
    }
    text += " " + amount(static_cast<double>(done));
    if (total > 0) text += "/" + amount(static_cast<double>(total));
    if (options.unit != "B") text += " " + options.unit;
    if ((!tty || closing) && total > 0) text += std::string(" (") + (pct[0] == ' ' ? pct + 1 : pct) + ")";
    text += " [" + format_duration(elapsed);
    if (!closing) text += "<" + format_duration(eta);
    text += ", " + rate_text(rate) + "]";
    if (!note.empty()) text += " " + note;
    return text;
  }

  void emit(bool closing) {
    last_text = render(closing);
    last_emit = now();
    if (options.sink) {
      options.sink(tty && !closing ? last_text : last_text + "\n", tty && !closing);
    } else if (tty && !closing) {
      log::detail::write_terminal(last_text, true);
    } else {
      log::detail::write_terminal(last_text + "\n", false);
    }
  }

  void redraw_locked() override {
    std::fputs(last_text.c_str(), stderr);
    std::fflush(stderr);
  }

  void maybe_emit() {
    double t = now();
    double interval = tty ? 0.1 : options.line_interval_seconds;
    if (t - last_emit >= interval) emit(false);
  }
};

Progress::Progress(std::string label, int64_t total, ProgressOptions options) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.label = std::move(label);
  s.total = total;
  s.options = std::move(options);
  if (s.options.line_interval_seconds <= 0) s.options.line_interval_seconds = default_line_interval_seconds();
  s.tty = s.options.force_tty >= 0 ? s.options.force_tty == 1 : isatty(STDERR_FILENO) == 1;
  if (log::level() > log::Level::info && !s.options.sink) s.tty = false;
  s.start = s.now();
  // Non-TTY: the first line comes after one interval, so short operations print only the closing line.
  if (!s.tty) s.last_emit = s.start;
  if (s.tty && !s.options.sink) log::detail::set_status_line(state_.get());
}

Progress::~Progress() {
  try {
    finish();
  } catch (...) {
  }
}

void Progress::advance(int64_t n) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->done += n;
  state_->maybe_emit();
}

void Progress::set_done(int64_t done) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->done = done;
  state_->maybe_emit();
}

void Progress::set_note(std::string note) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->note = std::move(note);
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->finished) return;
  state_->finished = true;
  if (state_->tty && !state_->options.sink) log::detail::set_status_line(nullptr);
  if (log::level() <= log::Level::info || state_->options.sink) state_->emit(true);
}

int64_t Progress::done() const {
  return state_->done;
}

double Progress::elapsed_seconds() const {
  return state_->now() - state_->start;
}

}  // namespace fluxtrain
