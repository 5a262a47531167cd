// The one progress reporter for long operations. On a terminal: a live bar with rate and ETA.
// Otherwise (logs, CI, pods): one plain line every few seconds, and a closing line.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace fluxtrain {

struct ProgressOptions {
  // "B" formats counts as bytes (downloads, file writes); anything else is a plain count.
  std::string unit = "it";
  // Seconds between plain lines when not on a terminal. 0 = default_line_interval_seconds().
  double line_interval_seconds = 0;
  // Test hooks: where output goes (default: the logger's terminal writer) and whether to draw a bar
  // (default: stderr is a TTY), and the clock (default: steady_clock).
  std::function<void(const std::string& text, bool is_status)> sink;
  int force_tty = -1;
  std::function<double()> clock_seconds;
};

class Progress {
 public:
  Progress(std::string label, int64_t total, ProgressOptions options = {});
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(int64_t n = 1);
  void set_done(int64_t done);
  // Free text shown after the rate, e.g. "loss 0.0412 lr 1.0e-04".
  void set_note(std::string note);
  // Prints the closing line (also done by the destructor).
  void finish();

  int64_t done() const;
  double elapsed_seconds() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The interval of reporters that set none (here and in core/train_progress.h): 10 s unless the app sets
// another at start-up (FLUXTRAIN_PROGRESS_SECONDS); a value <= 0 restores 10.
void set_default_line_interval_seconds(double seconds);
double default_line_interval_seconds();

// Formats a duration as "1:02:03" or "02:03".
std::string format_duration(double seconds);

}  // namespace fluxtrain
