// What a training run trains (train/trainer.cpp): the transformer, its LoRA network (or all its weights), the
// text encoders and their LoRA when they train, and the flat list of trained tensors; built from the config,
// starting from network_weights when given; and the final model file it writes.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "lora/network.h"
#include "lora/text_encoder_network.h"
#include "models/flux/flux.h"
#include "sample/text_encoding.h"
#include "train/block_swap.h"
#include "train/trainer.h"

namespace fluxtrain::train {

// The trained tensors: a LoRA's parameters by module, or every transformer weight.
struct Trainable {
  models::FluxTransformer model{nullptr};
  std::unique_ptr<BlockSwap> swap;  // blocks_to_swap > 0: registered as the model's block hooks
  std::unique_ptr<lora::LoraNetwork> network;
  // A trained text-encoder LoRA: the encoders (run in every step) and their adapters, whose parameters
  // follow the transformer network's in `params` from index te_begin on.
  std::unique_ptr<sample::TextEncoders> encoders;
  std::unique_ptr<lora::TextEncoderNetwork> te_network;
  size_t te_begin = 0;
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  void set_training(bool training) {
    if (network) network->set_training(training);
    if (te_network) te_network->set_training(training);
  }
};

// Loads the model and makes what trains (Errors name the option and the fix).
Trainable build(const TrainerConfig& config);

// The run's model file at `path`: the LoRA (and the text encoders') in kohya format, or the whole transformer.
void write_final_model(const std::string& path, const TrainerConfig& config, Trainable& t);

}  // namespace fluxtrain::train
