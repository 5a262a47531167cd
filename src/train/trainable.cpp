#include "train/trainable.h"

#include <ATen/ATen.h>

#include <map>

#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "lora/keys.h"
#include "lora/start_weights.h"
#include "models/clip/clip_text.h"
#include "models/convert.h"
#include "models/t5/t5_encoder.h"

namespace fluxtrain::train {
namespace {

// Splits a LoRA file's tensors: the text encoders' (returned) and the rest (left in `tensors`).
std::map<std::string, at::Tensor> take_text_encoder_tensors(std::map<std::string, at::Tensor>& tensors) {
  std::map<std::string, at::Tensor> out;
  for (auto it = tensors.begin(); it != tensors.end();) {
    const auto parsed = lora::keys::parse(it->first);
    if (lora::keys::is_text_encoder(parsed ? parsed->module : it->first)) {
      out.insert(*it);
      it = tensors.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

}  // namespace

Trainable build(const TrainerConfig& config) {
  Trainable t;
  models::ModelOptions model_options = config.model;
  if (config.full_finetune) {
    if (model_options.fp8_base) fail("fp8_base cannot be combined with full fine-tuning (--network none): the trained weights must be fp32; turn fp8_base off");
    model_options.dtype = at::kFloat;
  }
  if (config.blocks_to_swap > 0) {
    if (config.full_finetune)
      fail("blocks_to_swap = ", config.blocks_to_swap, " swaps frozen weights only (LoRA training), but this run ",
           "fine-tunes the whole model (network_type none); set blocks_to_swap to 0");
    // The swapped blocks' weights go to host memory as the model is built (the device never holds them all).
    model_options.host_blocks = config.blocks_to_swap;
  }
  auto check_swap = [&](const models::FluxConfig& c) { check_blocks_to_swap(config.blocks_to_swap, c); };
  t.model = models::load_flux(config.model_path, model_options, check_swap).model;
  if (config.full_finetune) {
    for (const auto& p : t.model->named_parameters()) {
      p.value().requires_grad_(true);
      t.params.push_back(p.value());
      t.names.push_back(p.key());
    }
  } else {
    for (auto& p : t.model->parameters()) p.requires_grad_(false);
    if (config.blocks_to_swap > 0) {
      t.swap = std::make_unique<BlockSwap>(*t.model, config.blocks_to_swap);
      log::info("block swap: the last ", config.blocks_to_swap, " of ", t.swap->total_blocks(),
                " transformer blocks wait in host memory (", t.swap->swapped_bytes() / (1 << 20),
                " MiB of weights) and are copied to ", model_options.device.str(), " while they run");
    }
    size_t start_te_modules = 0;  // text-encoder modules of network_weights
    if (config.network_weights.empty()) {
      t.network = std::make_unique<lora::LoraNetwork>(*t.model, config.lora, config.seed);
    } else {
      // Any layout `sample` reads; dim_from_weights: the file's modules and ranks make the network.
      const lora::StartWeights start = lora::read_start_weights(config.network_weights, *t.model, config.lora.split_qkv);
      lora::LoraOptions options = config.lora;
      if (config.dim_from_weights) options.module_dims = start.module_dims;
      t.network = std::make_unique<lora::LoraNetwork>(*t.model, options, config.seed);
      t.network->load_kohya(start.tensors, config.network_weights);
      start_te_modules = start.text_encoder_modules;
      log::info("starting from the LoRA in ", config.network_weights, " (", start.layout, " layout, ",
                start.module_dims.size(), " modules", config.dim_from_weights ? ", the network built from it" : "",
                ")");
    }
    t.params = t.network->parameters();
    if (config.train_clip || config.train_t5) {
      // The encoders stay loaded and run in every step (frozen; their adapters train).
      t.encoders = std::make_unique<sample::TextEncoders>(config.clip_path, config.t5_path, config.encoder_options,
                                                          config.text_options);
      for (auto& p : t.encoders->clip().parameters()) p.requires_grad_(false);
      for (auto& p : t.encoders->t5().parameters()) p.requires_grad_(false);
      // Their own initialisation generator (seed + 3), so the transformer's LoRA starts as without them.
      t.te_network = std::make_unique<lora::TextEncoderNetwork>(
          config.train_clip ? &t.encoders->clip() : nullptr, config.train_t5 ? &t.encoders->t5() : nullptr,
          config.lora, config.seed + 3, t.network->dropout_generator());
      if (!config.network_weights.empty()) {
        // The file's text-encoder modules (kohya names), read only when they train.
        std::map<std::string, at::Tensor> start = lora::read_lora_file(config.network_weights);
        t.te_network->load_kohya(take_text_encoder_tensors(start), config.network_weights);
      }
      log::info("text-encoder LoRA: ", t.te_network->clip_modules(), " CLIP-L modules", config.train_t5 ? cat(", ", t.te_network->t5_modules(), " T5-XXL modules") : std::string(),
                config.text_encoder_lr ? cat(" at text_encoder_lr ", *config.text_encoder_lr) : std::string(" at learning_rate"));
      t.te_begin = t.params.size();
      for (const at::Tensor& p : t.te_network->parameters()) t.params.push_back(p);
    } else if (start_te_modules > 0) {
      log::warn(config.network_weights, ": its ", start_te_modules,
                " text-encoder modules are not used: this run trains the transformer only (set text_encoder_lr, or "
                "network_train_unet_only=false, to train them on)");
    }
    for (size_t i = 0; i < t.params.size(); ++i) t.names.push_back(std::to_string(i));
  }
  return t;
}

void write_final_model(const std::string& path, const TrainerConfig& config, Trainable& t) {
  if (t.network) {
    lora::LoraFileInfo info = config.file_info;
    info.precision = config.save_precision;
    lora::save_lora_file(path, *t.network, info, t.te_network.get());
  } else {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& p : t.model->named_parameters()) tensors.emplace_back(p.key(), p.value().detach());
    safetensors::write(path, tensors, {{"modelspec.architecture", config.file_info.architecture},
                                       {"modelspec.title", config.file_info.title}});
  }
}

}  // namespace fluxtrain::train
