// Saving a trained LoRA the way the ecosystem reads it: kohya-format tensors (network.h) plus kohya's
// `ss_*` training metadata (what A1111/Forge's and Civitai's LoRA pages show), the SAI `modelspec.*`
// keys (architecture, title, resolution, date, trigger phrase) and `sshs_model_hash` (SHA-256 of the
// tensor data, as kohya computes it), written atomically.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/safetensors_format.h"
#include "lora/options.h"

namespace fluxtrain::lora {

class LoraNetwork;
class TextEncoderNetwork;

struct LoraFileInfo {
  std::string architecture = "flux-1-dev";  // modelspec architecture of the base: flux-1-dev | flux-1-schnell
  std::string title;                        // modelspec.title and ss_output_name
  int width = 1024;                         // training resolution (modelspec.resolution)
  int height = 1024;
  std::string trigger_phrase;              // modelspec.trigger_phrase when known (class tokens)
  safetensors::Metadata training;           // the trainer's ss_* keys (steps, epochs, optimizer, ...)
  SavePrecision precision = SavePrecision::fp32;  // dtype of every saved tensor (kohya casts them all)
  // modelspec.date, in seconds since 1970 (the app gives SOURCE_DATE_EPOCH, so that two runs with the same
  // seed can write byte-identical files); unset: the time of each save.
  std::optional<int64_t> created_at;
};

// modelspec.date: `seconds` since 1970 in UTC ("2025-01-31T12:00:00"), or now when unset.
std::string iso_date(std::optional<int64_t> seconds);


// Every metadata key of the file but the hash: the network's own ss_* keys (module, dim, alpha,
// network_args, dropouts), the given training keys, and modelspec.*.
safetensors::Metadata lora_metadata(const LoraNetwork& network, const LoraFileInfo& info);

// Writes network.kohya_state() (and the text encoders' modules, lora_te1_ / lora_te3_, when `text_encoders`
// is given) with lora_metadata() + sshs_model_hash, atomically.
void save_lora_file(const std::string& path, const LoraNetwork& network, const LoraFileInfo& info,
                    const TextEncoderNetwork* text_encoders = nullptr);

}  // namespace fluxtrain::lora
