// Options that several commands share, declared once: where to compute (--device, --precision) and
// which model files to use (BASE_MODEL, MODEL_DIR, --model, --ae, --clip-l, --t5xxl). Each is written for
// a small settings part (ComputeSettings, ModelFileSettings) that a command's settings struct holds and
// lifts into its table (option_builder.h lift()). Torch-free.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "app/option_builder.h"
#include "core/enum_names.h"

namespace fluxtrain::app {

// --precision: auto = bf16 on a GPU, fp32 on the CPU.
enum class Precision { automatic, fp32, bf16, fp16 };
constexpr std::array<EnumName<Precision>, 4> enum_names(Precision) {
  return {{{"auto", Precision::automatic},
           {"fp32", Precision::fp32},
           {"bf16", Precision::bf16},
           {"fp16", Precision::fp16}}};
}

// fp8_compute: how the fp8 weights of an fp8 base multiply (app/device.h resolve_fp8_compute decides
// `auto` and checks the others against the device; models/linear_modes.h Fp8Matmul is the result).
enum class Fp8Compute { off, tensorwise, rowwise, automatic };
constexpr std::array<EnumName<Fp8Compute>, 4> enum_names(Fp8Compute) {
  return {{{"off", Fp8Compute::off},
           {"tensorwise", Fp8Compute::tensorwise},
           {"rowwise", Fp8Compute::rowwise},
           {"auto", Fp8Compute::automatic}}};
}

// BASE_MODEL: which Flux.1 model.
enum class BaseModel { dev, schnell };
constexpr std::array<EnumName<BaseModel>, 2> enum_names(BaseModel) {
  return {{{"flux-dev", BaseModel::dev}, {"flux-schnell", BaseModel::schnell}}};
}

struct ComputeSettings {
  std::string device = "auto";  // auto, cpu, cuda or cuda:N (app/device.h resolves it)
  std::string device_origin = "--device";
  Precision precision = Precision::automatic;
};

// The four model files of a run.
struct ModelFiles {
  std::string model;   // the Flux transformer
  std::string ae;      // the autoencoder
  std::string clip_l;  // the CLIP-L text encoder
  std::string t5xxl;   // the T5-XXL text encoder
};

struct ModelFileSettings {
  BaseModel base_model = BaseModel::dev;
  std::string dir;                       // MODEL_DIR
  std::string dir_origin = "MODEL_DIR";  // how the user named it, for messages
  ModelFiles given;                      // files named one by one (win over the folder)
};

// --device and --precision, in `group`.
Opt<ComputeSettings> device_option(const std::string& group);
Opt<ComputeSettings> precision_option(const std::string& group);

// base_model, model_dir, model, ae, clip_l, t5xxl, in `group`.
std::vector<Opt<ModelFileSettings>> model_file_options(const std::string& group);

// The names a model folder is searched for, in order of preference, per file ("model", "ae", "clip_l",
// "t5xxl"): flux1-dev.safetensors, the seed's flux_dev.safetensors or the fp8 flux1-dev-fp8.safetensors
// (flux1-schnell... for schnell), ae.safetensors, clip_l.safetensors, t5xxl_fp16.safetensors or
// t5xxl_fp8_e4m3fn.safetensors.
enum class ModelFileKind { model, ae, clip_l, t5xxl };
std::vector<std::string> usual_model_names(ModelFileKind kind, BaseModel base_model);

// Fills each file not given in `given` from `model_dir` (may be "") by its usual names. Throws Error
// naming every file that is still missing, where it looked and the flags / variables that set it;
// `model_dir_origin` names where model_dir came from (e.g. "MODEL_DIR").
ModelFiles find_model_files(const ModelFiles& given, const std::string& model_dir, BaseModel base_model,
                            const std::string& model_dir_origin = "MODEL_DIR");
ModelFiles find_model_files(const ModelFileSettings& settings);

}  // namespace fluxtrain::app
