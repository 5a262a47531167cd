// The samples a training run renders (rank 0; src/sample): the prompts encoded when the run starts (the text
// encoders freed again; encoded again before each rendering while a text-encoder LoRA trains, with the
// encoders as trained), the AE kept, and each PNG's ComfyUI graph loading the file a user would load for
// that picture.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <string>

#include "app/shared_options.h"
#include "sample/sampler.h"
#include "sample/text_encoding.h"
#include "train/trainer.h"

namespace fluxtrain::app {

// The sampler of the run's SAMPLE_PROMPTS (`prompts`), writing into run_dir/samples.
std::unique_ptr<sample::Sampler> make_training_sampler(const std::string& prompts, const ModelFiles& files,
                                                       const sample::TextEncoderOptions& text, at::Device device,
                                                       at::ScalarType precision, const train::TrainerConfig& trainer,
                                                       const std::filesystem::path& run_dir);

// The trainer's hook that renders with `sampler` (which must outlive the training).
train::SampleHook training_sample_hook(sample::Sampler& sampler);

}  // namespace fluxtrain::app
