#include "app/train_samples.h"

#include <vector>

#include "sample/prompts.h"
#include "sample/sampler_setup.h"
#include "train/ema.h"

namespace fluxtrain::app {

namespace fs = std::filesystem;

std::unique_ptr<sample::Sampler> make_training_sampler(const std::string& prompts, const ModelFiles& files,
                                                       const sample::TextEncoderOptions& text, at::Device device,
                                                       at::ScalarType precision, const train::TrainerConfig& trainer,
                                                       const fs::path& run_dir) {
  sample::SamplerSetup setup;
  setup.ae_path = files.ae;
  setup.clip_path = files.clip_l;
  setup.t5_path = files.t5xxl;
  setup.options.device = device;
  setup.options.dtype = precision;
  setup.text = text;
  setup.prompts = sample::load_prompts(prompts);
  setup.sampler.out_dir = run_dir / "samples";
  setup.sampler.name = trainer.output_name;
  setup.sampler.run_seed = trainer.seed;
  setup.sampler.text = {{"model", fs::path(files.model).filename().string()}, {"lora", trainer.output_name}};
  // Each PNG's ComfyUI graph loads the file a user would load for that picture: the LoRA saved at that
  // step, else the final one; the base alone at step 0 and for a full fine-tune the trained model itself.
  sample::ComfyGraph graph;
  graph.unet = fs::path(files.model).filename().string();
  graph.weight_dtype = trainer.model.fp8_base ? "fp8_e4m3fn" : "default";
  graph.clip_l = fs::path(files.clip_l).filename().string();
  graph.t5xxl = fs::path(files.t5xxl).filename().string();
  graph.vae = fs::path(files.ae).filename().string();
  graph.filename_prefix = trainer.output_name;
  if (trainer.full_finetune) graph.unet = trainer.output_name + ".safetensors";
  setup.sampler.comfy = graph;
  // The step's file is there when it was saved at that step (the samples come after the save; the last
  // step saves the final file only). ema_samples: the EMA file beside it (NAME-ema.safetensors), whose
  // weights rendered the picture. A file with a trained text-encoder LoRA is loaded with LoraLoader (model
  // and CLIP).
  setup.sampler.comfy_loras = [name = trainer.output_name, dir = run_dir, full = trainer.full_finetune,
                               ema = trainer.ema.enabled() && trainer.ema.samples,
                               encoders = trainer.train_clip || trainer.train_t5](int64_t step) {
    std::vector<sample::ComfyLora> loras;
    if (full || step == 0) return loras;
    const std::string step_file = train::step_file_name(name, step);
    const std::string file = fs::exists(dir / step_file) ? step_file : name + ".safetensors";
    loras.push_back({ema ? train::ema_file_name(file) : file, 1.0, encoders});
    return loras;
  };
  return sample::make_sampler(setup);
}

train::SampleHook training_sample_hook(sample::Sampler& sampler) {
  // A trained text-encoder LoRA: each rendering first encodes the prompts with the encoders as trained.
  return [&sampler](int64_t step, models::FluxTransformerImpl& model, sample::TextEncoders* trained) {
    if (trained) sampler.encode_prompts(sample::text_encode_fn(*trained));
    return sampler.render(step, model);
  };
}

}  // namespace fluxtrain::app
