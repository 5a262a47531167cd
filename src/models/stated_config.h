// What a checkpoint states about its configuration besides its tensors: the config.json that
// transformers' and diffusers' save_pretrained() write next to the weights (text_encoder/config.json,
// transformer/config.json). A few values are in no tensor's shape (CLIP's head count, Flux's RoPE axes);
// the detectors (XxxConfig::detect) take them from here when the checkpoint states them, and otherwise
// only where the released models leave no doubt. Torch-free.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fluxtrain::models {

class StatedConfig {
 public:
  StatedConfig() = default;  // states nothing
  // `<folder>/config.json` if there is one (an Error naming the file if it is not a JSON object), else
  // nothing. The caller checks that it describes the model at hand (class_name(), model_type()).
  static StatedConfig beside(const std::string& folder);
  // From JSON text; `source` names it in messages.
  static StatedConfig parse(const std::string& source, const std::string& text);

  bool empty() const { return json_ == nullptr; }
  const std::string& source() const { return source_; }
  // diffusers' "_class_name" ("FluxTransformer2DModel"), transformers' "model_type" ("clip_text_model");
  // "" when absent.
  std::string class_name() const;
  std::string model_type() const;
  // The object under `key` (transformers' CLIPConfig keeps the text tower's values under "text_config"),
  // with the same source; empty when absent.
  StatedConfig section(const std::string& key) const;
  // The value of `key`, nullopt when absent (or JSON null); an Error naming the source and key when it
  // has another type.
  std::optional<int64_t> integer(const std::string& key) const;
  std::optional<std::vector<int64_t>> integers(const std::string& key) const;
  // `key` as messages name it: "text_config.num_attention_heads" inside a section.
  std::string key_name(const std::string& key) const { return path_ + key; }

 private:
  std::string source_;
  std::string path_;  // "text_config." inside the file, for messages
  std::shared_ptr<const nlohmann::json> json_;
};

}  // namespace fluxtrain::models
