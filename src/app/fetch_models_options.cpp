#include "app/fetch_models_options.h"

#include "app/option_builder.h"
#include "core/error.h"

namespace fluxtrain::app {

std::optional<HubFileRef> parse_hub_file_ref(const std::string& text, std::string& why) {
  size_t first = text.find('/');
  size_t second = first == std::string::npos ? std::string::npos : text.find('/', first + 1);
  if (second == std::string::npos || second + 1 >= text.size()) {
    why = "not owner/name/path/in/repo";
    return std::nullopt;
  }
  HubFileRef ref;
  ref.repo = text.substr(0, second);
  ref.path = text.substr(second + 1);
  if (size_t at = ref.repo.find('@'); at != std::string::npos) {
    ref.revision = ref.repo.substr(at + 1);
    ref.repo.resize(at);
    if (ref.revision.empty() || ref.repo.find('/') == std::string::npos) {
      why = "the revision after '@' is empty or the owner/name is cut";
      return std::nullopt;
    }
  }
  if (ref.repo.front() == '/' || ref.repo.find("..") != std::string::npos || ref.path.find("..") != std::string::npos ||
      ref.path.front() == '/' || ref.path.back() == '/') {
    why = "not a plain repository and file path";
    return std::nullopt;
  }
  return ref;
}

namespace {

using S = FetchModelsSettings;

Opt<S> source(const std::string& name, const std::string& env, const std::string& what, const std::string& fallback,
              S::Source S::*field) {
  return Opt<S>(name, kString, "download", "", cat("Hub file to download as ", what, "; unset: ", fallback, "."))
      .env(env)
      .allowed("owner/name/path/in/repo or owner/name@revision/path/in/repo")
      .check([](const OptionValue& value) {
        std::string why;
        return parse_hub_file_ref(std::get<std::string>(value), why) ? std::string() : why;
      })
      .set([field](S& s, const std::string& text, const ResolvedOption& given) {
        std::string why;
        (s.*field).ref = parse_hub_file_ref(text, why);
        (s.*field).origin = given.origin;
      });
}

// The sizes in the help are those of the Hub's files (2024), for planning the volume.
OptionTable make_table() {
  std::vector<OptionSpec> specs;
  for (const auto& o : model_file_options("models")) {
    OptionSpec spec = lift(&S::models, o);
    if (spec.name == "model_dir") {
      spec.help =
          "Folder the model files are downloaded into (created if needed), under the names train searches for; "
          "train then finds them with the same MODEL_DIR.";
      spec.path_check = PathCheck::none;
    } else if (spec.name != "base_model") {
      spec.help += " When set, that file is not downloaded.";
    }
    specs.push_back(spec);
  }
  // model_dir first, as the reference lists it.
  std::stable_partition(specs.begin(), specs.end(), [](const OptionSpec& s) { return s.name == "model_dir"; });
  std::vector<Opt<S>> own = {
      Opt<S>("base_variant", kChoice, "download", "bf16",
             "Which Flux transformer to download: bf16, the original (flux1-dev.safetensors, 23.8 GB), or fp8 e4m3fn "
             "(flux1-dev-fp8.safetensors, 11.9 GB, from Kijai/flux-fp8; train it with PARAMS_FP8_BASE=true).")
          .env("MODEL_BASE_VARIANT")
          .choices_of<BaseVariant>()
          .to(&S::base_variant),
      Opt<S>("t5xxl_variant", kChoice, "download", "fp16",
             "Which T5-XXL to download: fp16 (t5xxl_fp16.safetensors, 9.8 GB) or fp8 e4m3fn "
             "(t5xxl_fp8_e4m3fn.safetensors, 4.9 GB).")
          .env("MODEL_T5XXL_VARIANT")
          .choices_of<T5Variant>()
          .to(&S::t5xxl_variant),
      source("model_source", "MODEL_SOURCE_FLUX", "the Flux transformer",
             "black-forest-labs/FLUX.1-dev/flux1-dev.safetensors (FLUX.1-schnell for flux-schnell; "
             "Kijai/flux-fp8/flux1-dev-fp8.safetensors for the fp8 variant)",
             &S::model_source),
      source("ae_source", "MODEL_SOURCE_AE", "the autoencoder", "ae.safetensors of the base model's repository",
             &S::ae_source),
      source("clip_l_source", "MODEL_SOURCE_CLIP_L", "CLIP-L", "comfyanonymous/flux_text_encoders/clip_l.safetensors",
             &S::clip_l_source),
      source("t5xxl_source", "MODEL_SOURCE_T5XXL", "T5-XXL",
             "comfyanonymous/flux_text_encoders/t5xxl_fp16.safetensors (t5xxl_fp8_e4m3fn.safetensors for the fp8 "
             "variant)",
             &S::t5xxl_source),
      Opt<S>("verify", kBool, "download", "false",
             "Also check the files already present against the Hub's sha256 (reads them all: about a minute for the "
             "transformer); one that differs is downloaded again.")
          .env("MODEL_VERIFY")
          .to(&S::verify),
  };
  for (const auto& o : own) specs.push_back(o);
  for (const auto& o : download_options(kHubKnobs | kHttpKnobs)) specs.push_back(lift(&S::downloads, o));
  return OptionTable(
      "fetch-models", "MODEL_",
      {{"models", "Model folder and files given"}, {"download", "Model download"}, {"downloads", "Downloads"}},
      std::move(specs));
}

}  // namespace

const OptionTable& fetch_models_options() {
  static const OptionTable table = make_table();
  return table;
}

}  // namespace fluxtrain::app
