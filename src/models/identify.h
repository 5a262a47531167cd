// What a safetensors file holds, decided from its header alone (names, shapes, dtypes), so a 23 GB
// checkpoint is identified in milliseconds: Flux transformer (BFL or diffusers layout), Flux AE,
// CLIP-L, T5-XXL, the parts of a merged checkpoint, or unknown.
//
// The models layer knows only models. Files of other kinds (LoRAs: lora/identify.h) are recognised by
// recognisers that the layers above pass in; `fluxtrain inspect` passes them all.
#pragma once

#include <functional>
#include <map>
#include <optional>
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

// The tensors of one component: those under one merged-checkpoint prefix, with the prefix removed
// from their names.
struct ComponentTensors {
  const safetensors::Header* header = nullptr;  // the whole file's (metadata)
  std::string prefix;
  std::map<std::string, const safetensors::TensorInfo*> tensors;

  const safetensors::TensorInfo* get(const std::string& name) const;
  bool has(const std::string& name) const { return get(name) != nullptr; }
  // Size of `name` along `axis`, -1 when there is no such tensor or axis.
  int64_t dim(const std::string& name, size_t axis) const;
  // 1 + the highest N in names "<head>N." (0 if none).
  int count_indexed(const std::string& head) const;
  // "BF16" or "F32 x3, BF16 x5".
  std::string dtypes() const;
};

// Recognises one kind of component, or says nullopt.
using Recogniser = std::function<std::optional<Component>(const ComponentTensors&)>;

// One Component per merged-checkpoint prefix group. `recognisers` are tried first, in order, then the
// models' own; what nothing recognises is "unknown".
std::vector<Component> identify(const safetensors::Header& header, const std::vector<Recogniser>& recognisers = {});

}  // namespace fluxtrain::models
