// The exponential moving average (EMA) of the trained tensors (issue 23): a shadow copy in fp32, on the CPU
// or the training device (ema_device), updated after every ema_update_interval optimizer steps as diffusers'
// EMAModel.step does it (train/options.h EmaOptions gives the decay rule), saved as its own LoRA file beside
// every LoRA file and, with its update count, in the training state (an exact resume continues it exactly).
//
// The average is over whatever the network trains (LoraNetwork::parameters(), in that order), so that every
// network type gets it; its files are written by putting the averaged values into the trained tensors for
// the time of the save (Ema::Applied), the same writer as the live LoRA's. Rank 0 keeps it (every rank has
// the same weights after a step).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "train/options.h"

namespace fluxtrain::train {

class Ema {
 public:
  // The average starts as a copy of `params` (as EMAModel's constructor); `device` is the training device.
  Ema(const EmaOptions& options, const std::vector<at::Tensor>& params, const at::Device& device);

  // The decay of the update that is the `update`-th (1-based) of the average: diffusers' get_decay.
  double decay_of(int64_t update) const;
  // After optimizer step `step` (1-based): one update when step is a multiple of update_interval.
  void after_step(int64_t step, const std::vector<at::Tensor>& params);
  int64_t updates() const { return updates_; }
  double last_decay() const { return last_decay_; }

  // For the training state: the averaged tensors (named by their index in params) and the counters.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  nlohmann::json state_info() const;
  // Restores what state_tensors/state_info saved; errors name `dir` and what differs.
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const nlohmann::json& info,
                  const std::string& dir);

  // While alive, `params` hold the averaged values; the live ones come back when it ends.
  class Applied {
   public:
    Applied(const Ema& ema, const std::vector<at::Tensor>& params);
    ~Applied();
    Applied(const Applied&) = delete;
    Applied& operator=(const Applied&) = delete;

   private:
    std::vector<at::Tensor> params_;
    std::vector<at::Tensor> live_;
  };

 private:
  EmaOptions options_;
  std::vector<at::Tensor> shadow_;
  int64_t updates_ = 0;
  double last_decay_ = 0;
};

// The EMA file beside a LoRA file: NAME.safetensors -> NAME-ema.safetensors.
std::string ema_file_name(const std::string& lora_path);

}  // namespace fluxtrain::train
