// What a running training tells the outside, and what the outside may ask of it (torch-free).
//
// The live page (MONITOR_PORT), the Hub upload and the webhooks (HF_UPLOAD_REPO, NOTIFY_WEBHOOK_URL), the
// per-checkpoint grid and plots: each is a listener of RunEvents, added by the app to TrainerConfig::hooks.
// A listener is called on the training thread of rank 0 and must return at once (it queues its work on its
// own thread); what it throws is logged as a warning and never stops the training.
//
// The page's buttons are RunRequests: "save now" and "sample now" are taken by the trainer after the step in
// progress (agreed by every rank with the stop agreement); "stop" is stop::request(SIGTERM), the signal's
// path (a state is saved and the run exits 0).
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/log.h"

namespace fluxtrain::train {

struct RunEvent {
  // "start"      data: total_steps, steps_per_epoch, first_step (> 0 after a resume)
  // "step"       data: the metrics line's values (loss, lr, grad_norm, step_seconds, ...), epoch
  // "model"      files: a LoRA (or model) file written at `step`, then its EMA file (ema_decay); data: final (bool)
  // "state"      files: the state folder written at `step` (complete: its COMPLETE marker is written)
  // "samples"    files: the sample PNGs rendered at `step`, in prompt order
  // "validation" data: loss (the validation loss at `step`)
  // "end"        data: interrupted (bool), steps
  std::string kind;
  int64_t step = 0;
  std::vector<std::filesystem::path> files;
  nlohmann::json data = nlohmann::json::object();
};

using RunListener = std::function<void(const RunEvent&)>;

// The page's "save now" / "sample now": set from any thread, taken once by the trainer.
class RunRequests {
 public:
  void ask_save() { save_.store(true); }
  void ask_sample() { sample_.store(true); }
  bool take_save() { return save_.exchange(false); }
  bool take_sample() { return sample_.exchange(false); }

 private:
  std::atomic<bool> save_{false};
  std::atomic<bool> sample_{false};
};

struct RunHooks {
  std::vector<RunListener> listeners;
  RunRequests* requests = nullptr;  // null: nobody asks
  // Calls every listener; a listener's exception is logged as a warning.
  void emit(const RunEvent& event) const {
    for (const auto& listener : listeners) {
      try {
        listener(event);
      } catch (const std::exception& e) {
        log::warn("the ", event.kind, " event of step ", event.step, " was not taken by a listener: ", e.what());
      }
    }
  }
};

}  // namespace fluxtrain::train
