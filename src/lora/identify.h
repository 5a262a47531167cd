// Recognising LoRA files from their header alone, for identification (models/identify.h), which
// knows only models: every layout of the key grammar (lora/keys.h), kohya (with its transformer,
// CLIP-L and T5 modules counted) or diffusers/PEFT. Torch-free.
#pragma once

#include <functional>
#include <optional>

#include "models/identify.h"

namespace fluxtrain::lora {

// Fetches a one-element tensor's value (the alphas).
using ReadScalar = std::function<double(const safetensors::TensorInfo&)>;

// kind lora-kohya (details: modules, rank, alpha, transformer/clip/t5 module counts, whether the
// modules are Flux's) or lora-peft (modules, rank); nullopt when no tensor is a LoRA down weight.
// Without `read_scalar`, alphas come from the ss_network_alpha metadata only.
std::optional<models::Component> identify_lora(const models::ComponentTensors& tensors,
                                               const ReadScalar& read_scalar = {});

// identify_lora as a recogniser for models::identify.
models::Recogniser lora_recogniser(ReadScalar read_scalar = {});

}  // namespace fluxtrain::lora
