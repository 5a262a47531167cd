// Stopping on SIGTERM/SIGINT in every phase (docs/training.md "Stopping"). A Spot pod gets SIGTERM and,
// stop_grace_seconds later (5 s on RunPod), SIGKILL. The handlers installed by install() only record the
// signal; each long phase polls requested() at its poll points (between downloaded blocks, archive
// entries, cache batches, model tensors, denoising steps, training steps) and stops there:
//   - before training began, check(phase) throws Stopped, which unwinds (a partly written download stays as
//     its .part file, a cache entry or extracted folder is published whole or not at all) to the command's
//     top, which exits 0 with "stopped during <phase>; a restart carries on";
//   - while a Deferral is alive (the training loop), check() does not throw: the trainer finishes the step
//     and the save in progress, writes a state and returns.
// A second signal is recorded like the first (a pod's SIGTERM forwarded by the entrypoint and a terminal's
// SIGINT to the whole process group would otherwise cut the state being written); SIGKILL remains.
#pragma once

#include <limits>
#include <string>
#include <string_view>
#include <utility>

namespace fluxtrain::stop {

// Installs the SIGINT and SIGTERM handlers for the rest of the process (a second call updates the grace).
// grace_seconds: the time the program plans for between the signal and a SIGKILL.
void install(double grace_seconds);
double grace_seconds();

bool requested();
// The signal that asked for the stop (SIGTERM, SIGINT), 0 when none.
int signal_number();
// "SIGTERM", "SIGINT" (or "signal N").
std::string signal_name();
// Seconds since the stop was requested; 0 when none was.
double seconds_since_request();
// grace_seconds() - seconds_since_request(); +infinity when no stop was requested.
double grace_left();
// As if `signal` had arrived (tests; train::request_stop).
void request(int signal);

// Thrown by check() when a stop was requested before training began. On purpose not a std::exception:
// the `catch (const std::exception&)` sites that turn a failure into a warning must not swallow a stop.
class Stopped {
 public:
  explicit Stopped(std::string phase) : phase_(std::move(phase)) {}
  const std::string& phase() const { return phase_; }

 private:
  std::string phase_;
};

// A poll point of `phase` ("download", "extraction", "cache filling", "model loading", "sampling", ...):
// the test hook's pause (pause_point), then throws Stopped(phase) when a stop was requested and no
// Deferral is alive.
void check(std::string_view phase);

// While one is alive (the training loop), check() does not throw: the owner looks at requested() itself.
class Deferral {
 public:
  Deferral();
  ~Deferral();
  Deferral(const Deferral&) = delete;
  Deferral& operator=(const Deferral&) = delete;
};

// Test hook (FLUXTRAIN_TEST_PAUSE_IN=<phase>, tests/e2e/test_signals.py): the first time a poll point of
// that phase is reached, it logs "test hook: paused in <phase> until a stop signal" and waits there until a
// stop is requested (at most 10 minutes), so that a test can send its signal in a phase that is too fast on
// tiny models to hit otherwise. Not for production use; "" (the default) turns it off.
void set_test_pause(std::string phase);
void pause_point(std::string_view phase);

}  // namespace fluxtrain::stop
