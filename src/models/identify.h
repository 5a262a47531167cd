// What a safetensors file holds, decided from its header alone (names, shapes, dtypes), so a 23 GB
// checkpoint is identified in milliseconds: Flux transformer (BFL or diffusers layout), Flux AE,
// CLIP-L, T5-XXL, LoRA (kohya or diffusers/PEFT layout), the parts of a merged checkpoint, or unknown.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/safetensors_format.h"

namespace fluxtrain::models {

struct Component {
  std::string kind;         // flux-transformer, flux-ae, clip-text, t5-encoder, lora-kohya, lora-peft, unknown
  std::string prefix;       // key prefix inside a merged checkpoint ("" for a plain file)
  std::string description;  // one line for people, e.g. "Flux.1 dev transformer (19 double + 38 single ...)"
  std::map<std::string, std::string> details;  // machine-readable facts (numbers as text)
  size_t tensor_count = 0;
};

// `read_scalar` fetches a one-element tensor's value (LoRA alphas); may be empty, then alphas are
// reported from metadata only.
std::vector<Component> identify(const safetensors::Header& header,
                                const std::function<double(const safetensors::TensorInfo&)>& read_scalar = {});

}  // namespace fluxtrain::models
