// The options of `fluxtrain fetch-models` (the model files of a run, downloaded into MODEL_DIR) and the
// settings they fill. Torch-free.
#pragma once

#include <array>
#include <optional>
#include <string>

#include "app/knob_options.h"
#include "app/options.h"
#include "app/shared_options.h"
#include "core/enum_names.h"

namespace fluxtrain::app {

// Which Flux transformer to download.
enum class BaseVariant { bf16, fp8 };
constexpr std::array<EnumName<BaseVariant>, 2> enum_names(BaseVariant) {
  return {{{"bf16", BaseVariant::bf16}, {"fp8", BaseVariant::fp8}}};
}
// Which T5-XXL to download.
enum class T5Variant { fp16, fp8 };
constexpr std::array<EnumName<T5Variant>, 2> enum_names(T5Variant) {
  return {{{"fp16", T5Variant::fp16}, {"fp8", T5Variant::fp8}}};
}

// A file in a Hub model repository: "owner/name/path/in/repo", or "owner/name@revision/path/in/repo".
struct HubFileRef {
  std::string repo;
  std::string revision = "main";
  std::string path;
};
// nullopt with `why` for text that is not such a reference.
std::optional<HubFileRef> parse_hub_file_ref(const std::string& text, std::string& why);

struct FetchModelsSettings {
  ModelFileSettings models;  // the folder, the base model, and files given (not downloaded)
  BaseVariant base_variant = BaseVariant::bf16;
  T5Variant t5xxl_variant = T5Variant::fp16;
  // Sources that replace the usual ones, with the variable that names each (for messages).
  struct Source {
    std::optional<HubFileRef> ref;
    std::string origin;
  };
  Source model_source, ae_source, clip_l_source, t5xxl_source;
  bool verify = false;
  DownloadSettings downloads;  // the Hub's address, the token, retries
};

const OptionTable& fetch_models_options();

}  // namespace fluxtrain::app
