// The LoRA network on a Flux transformer: which Linear layers get adapters, with what rank, and the
// kohya-format state (spec/training.md "LoRA network and file format").
//
// Targets are every Linear inside the double and single blocks (10 per double block, 3 per single
// block: 304 for Flux.1). Module names and tensor keys are kohya's, the transformer's form of the
// grammar in lora/keys.h.
//
// split_qkv and the file format: a split module trains separate down/up pairs for q, k, v (and the MLP
// input of single blocks' linear1). Files hold them fused as kohya does — down concatenated [k*r, in],
// up block-diagonal [out, k*r] — so every loader sees one ordinary LoRA module. Loaders scale by
// alpha / down.shape[0] = alpha / (k*r); kohya keeps alpha unchanged and its split LoRAs come out k
// times too weak (sd-scripts issue #2204). We store alpha * k, so loaders apply exactly the trained
// strength, and loading divides it back.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lora/lora_module.h"
#include "lora/lycoris.h"
#include "lora/selection.h"

namespace fluxtrain::models {
class FluxTransformerImpl;
}

namespace fluxtrain::lora {

class LoraNetwork {
 public:
  // Creates the adapters (fp32, on the model's device) and attaches them to the model's Linear layers.
  // `seed` seeds the initialisation; the dropout generator is seeded with seed + 1.
  LoraNetwork(models::FluxTransformerImpl& model, const LoraOptions& options, uint64_t seed);
  // Detaches the adapters from the model.
  ~LoraNetwork();
  LoraNetwork(const LoraNetwork&) = delete;
  LoraNetwork& operator=(const LoraNetwork&) = delete;

  // The plain LoRA modules (network_type lora without dora_wd), else empty.
  const std::vector<std::shared_ptr<LoraModule>>& modules() const { return modules_; }
  // The LyCORIS modules (LoKr, LoHa, DoRA: options().lycoris()), else empty.
  const std::vector<std::shared_ptr<LycorisModule>>& lycoris_modules() const { return lycoris_; }
  // The trained tensors: for each LoRA module, for each of its parts, the down matrix then the up matrix;
  // for each LyCORIS module its LycorisModule::parameters().
  std::vector<at::Tensor> parameters() const;
  int64_t parameter_count() const;
  void set_training(bool training);
  void set_multiplier(double multiplier);
  const LoraOptions& options() const { return options_; }
  // The generator of the dropouts (shared by all modules): its state is part of a training state, and
  // gradient checkpointing replays it.
  at::Generator dropout_generator() const { return dropout_generator_; }

  // kohya-format tensors (fused split parts, alpha as described above; LyCORIS's names for its types),
  // CPU fp32, sorted by name.
  std::vector<std::pair<std::string, at::Tensor>> kohya_state() const;
  // Loads kohya-format tensors into this network. Every module of the network must be present with
  // the right shapes, and every tensor of the file must belong to a module (Error listing what differs).
  void load_kohya(const std::map<std::string, at::Tensor>& tensors, const std::string& file);

 private:
  LoraOptions options_;
  at::Generator dropout_generator_;
  std::vector<std::shared_ptr<LoraModule>> modules_;
  std::vector<std::shared_ptr<LycorisModule>> lycoris_;
  std::vector<std::shared_ptr<models::LinearImpl>> targets_;
  std::vector<std::string> target_paths_;  // the model paths of targets_ ("double_blocks.0.img_attn.qkv")
};

// Reads a kohya-format LoRA file into memory (for load_kohya).
std::map<std::string, at::Tensor> read_lora_file(const std::string& path);

}  // namespace fluxtrain::lora
