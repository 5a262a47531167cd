#include "app/shared_options.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

std::string check_device(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s == "auto" || s == "cpu" || s == "cuda") return "";
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 &&
      std::all_of(s.begin() + 5, s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }))
    return "";
  return "not a device";
}

struct FileSlot {
  ModelFileKind kind;
  const char* name;  // the option
  const char* what;
  std::string ModelFiles::*field;
};
const FileSlot kSlots[] = {{ModelFileKind::model, "model", "the Flux transformer", &ModelFiles::model},
                           {ModelFileKind::ae, "ae", "the autoencoder", &ModelFiles::ae},
                           {ModelFileKind::clip_l, "clip_l", "the CLIP-L text encoder", &ModelFiles::clip_l},
                           {ModelFileKind::t5xxl, "t5xxl", "the T5-XXL text encoder", &ModelFiles::t5xxl}};

}  // namespace

Opt<ComputeSettings> device_option(const std::string& group) {
  return Opt<ComputeSettings>("device", kString, group, "auto",
                              "Where to compute: auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
      .env("PARAMS_DEVICE")
      .check(check_device)
      .allowed("auto, cpu, cuda or cuda:N")
      .safe_on_resume()
      .set([](ComputeSettings& s, const std::string& v, const std::string& described) {
        s.device = v;
        s.device_origin = described;
      });
}

Opt<ComputeSettings> precision_option(const std::string& group) {
  return Opt<ComputeSettings>("precision", kChoice, group, "auto",
                              "Compute precision: auto = bf16 on a GPU, fp32 on the CPU.")
      .env("PARAMS_PRECISION")
      .choices_of<Precision>()
      .choice_alias("float32", "fp32")
      .choice_alias("no", "fp32")
      .choice_alias("bfloat16", "bf16")
      .choice_alias("float16", "fp16")
      .to(&ComputeSettings::precision);
}

std::vector<Opt<ModelFileSettings>> model_file_options(const std::string& group) {
  using S = ModelFileSettings;
  std::vector<Opt<S>> out = {
      Opt<S>("base_model", kChoice, group, "flux-dev",
             "Which Flux.1 model is trained: dev (guidance-distilled) or schnell.")
          .env("BASE_MODEL")
          .choices_of<BaseModel>()
          .choice_alias("flux", "flux-dev")
          .to(&S::base_model),
      Opt<S>("model_dir", kPath, group, "",
             "Folder holding the model files under their usual names (flux1-dev.safetensors, flux_dev.safetensors or "
             "flux1-dev-fp8.safetensors; the same with flux1-schnell; ae.safetensors or the seed's flux_ae.safetensors, "
             "clip_l.safetensors, "
             "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors); --model, --ae, --clip-l and --t5xxl override "
             "single files; `fluxtrain fetch-models` downloads them.")
          .env("MODEL_DIR")
          .path(PathCheck::directory)
          .safe_on_resume()
          .set([](S& s, const std::string& v, const ResolvedOption& given) {
            s.dir = v;
            // The variable or flag alone: the messages that use it follow it with "=<folder>".
            s.dir_origin = given.source == Source::file ? cat("model_dir in ", given.origin) : given.origin;
          }),
      Opt<S>("model", kPath, group, "", "The Flux transformer (.safetensors: BFL single file, or a merged checkpoint).")
          .path(PathCheck::file)
          .safe_on_resume()
          .env("PARAMS_MODEL")
          .to(&S::given, &ModelFiles::model),
      Opt<S>("ae", kPath, group, "", "The Flux autoencoder (ae.safetensors).")
          .path(PathCheck::file)
          .safe_on_resume()
          .env("PARAMS_AE")
          .to(&S::given, &ModelFiles::ae),
      Opt<S>("clip_l", kPath, group, "", "The CLIP-L text encoder (clip_l.safetensors).")
          .path(PathCheck::file)
          .safe_on_resume()
          .env("PARAMS_CLIP_L")
          .to(&S::given, &ModelFiles::clip_l),
      Opt<S>("t5xxl", kPath, group, "", "The T5-XXL text encoder (t5xxl_fp16.safetensors or an fp8 variant).")
          .path(PathCheck::file)
          .safe_on_resume()
          .env("PARAMS_T5XXL")
          .to(&S::given, &ModelFiles::t5xxl),
  };
  return out;
}

std::vector<std::string> usual_model_names(ModelFileKind kind, BaseModel base_model) {
  switch (kind) {
    case ModelFileKind::model:
      if (base_model == BaseModel::schnell)
        return {"flux1-schnell.safetensors", "flux_schnell.safetensors", "flux1-schnell-fp8.safetensors"};
      return {"flux1-dev.safetensors", "flux_dev.safetensors", "flux1-dev-fp8.safetensors"};
    case ModelFileKind::ae: return {"ae.safetensors", "flux_ae.safetensors"};  // the seed's name
    case ModelFileKind::clip_l: return {"clip_l.safetensors"};
    case ModelFileKind::t5xxl: return {"t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors"};
  }
  return {};
}

ModelFiles find_model_files(const ModelFiles& given, const std::string& model_dir, BaseModel base_model,
                            const std::string& model_dir_origin) {
  ModelFiles out = given;
  // The flag and variable of each file, from the options themselves.
  OptionTable table("model files", {{"models", ""}}, [] {
    std::vector<OptionSpec> specs;
    for (const auto& o : model_file_options("models")) specs.push_back(o);
    return specs;
  }());
  const std::string base = std::string(name_of(base_model));
  std::vector<std::string> missing;
  for (const FileSlot& slot : kSlots) {
    std::string& path = out.*slot.field;
    if (!path.empty()) continue;
    const OptionSpec& spec = table.at(slot.name);
    const std::string set_it = cat(spec.flag_name(), " / ", spec.env_name());
    std::vector<std::string> names = usual_model_names(slot.kind, base_model);
    if (model_dir.empty()) {
      missing.push_back(cat(slot.what, ": not given (set ", set_it, ", or ", model_dir_origin, " to a folder holding ",
                            join_alternatives(names), ")"));
      continue;
    }
    for (const auto& name : names) {
      std::error_code ec;
      if (fs::is_regular_file(fs::path(model_dir) / name, ec)) {
        path = (fs::path(model_dir) / name).string();
        break;
      }
    }
    if (!path.empty()) continue;
    std::string text = cat(slot.what, ": none of ", join_alternatives(names), " in ", model_dir_origin, "=", model_dir);
    if (slot.kind == ModelFileKind::model) {
      const BaseModel other = base_model == BaseModel::schnell ? BaseModel::dev : BaseModel::schnell;
      for (const auto& name : usual_model_names(ModelFileKind::model, other)) {
        std::error_code ec;
        if (fs::is_regular_file(fs::path(model_dir) / name, ec))
          text += cat(" (it holds ", name, ": is ", table.at("base_model").env_name(), "=", name_of(other), " meant?)");
      }
    }
    missing.push_back(text + cat("; or name the file with ", set_it));
  }
  const std::string var = table.at("base_model").env_name();
  if (missing.size() == 1) fail("model file missing (", var, " ", base, "): ", missing[0]);
  if (!missing.empty()) {
    std::string text = cat(missing.size(), " model files missing (", var, " ", base, "):");
    for (const auto& m : missing) text += "\n  - " + m;
    fail(text);
  }
  return out;
}

ModelFiles find_model_files(const ModelFileSettings& settings) {
  return find_model_files(settings.given, settings.dir, settings.base_model, settings.dir_origin);
}

}  // namespace fluxtrain::app
