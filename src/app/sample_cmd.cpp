// `fluxtrain sample`: images from a base model plus any number of LoRAs (merged into the weights), from
// --prompt or a kohya prompt file, into --out — the "test your LoRA" step. The sampler is set up as for
// the trainer's sample hook (sample/sampler_setup.h).
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/device.h"
#include "app/train_options.h"
#include "core/error.h"
#include "core/log.h"
#include "lora/convert.h"
#include "models/convert.h"
#include "models/loader.h"
#include "sample/sampler_setup.h"

namespace fluxtrain::app {

namespace fs = std::filesystem;

namespace {

struct SampleOptions {
  std::string model, ae, clip_l, t5xxl, model_dir;
  std::vector<std::string> loras;
  std::string prompt, prompts;
  int width = 1024, height = 1024;
  int steps = 0;  // 0: 20 for dev, 4 for schnell
  double guidance = 3.5, cfg = 1.0;
  std::string negative;
  uint64_t seed = 42;
  std::string out;
  std::string name = "sample";
  std::string device = "auto";
  std::string precision = "auto";
  int t5_max_length = 0;  // 0: 512 dev, 256 schnell
  bool t5_attn_mask = false;
};

// The four files from the flags, or from --model-dir by their usual names (the same search as
// `train`'s MODEL_DIR: train_options.h find_model_files); dev or schnell by what the folder holds.
void resolve_files(SampleOptions& o) {
  if (!o.model_dir.empty() && !fs::is_directory(o.model_dir)) fail("--model-dir ", o.model_dir, ": no such folder");
  std::string base = "flux-dev";
  if (o.model.empty() && !o.model_dir.empty()) {
    auto holds = [&](const std::string& variant) {
      for (const auto& name : usual_model_names("model", variant)) {
        if (fs::is_regular_file(fs::path(o.model_dir) / name)) return true;
      }
      return false;
    };
    if (!holds("flux-dev") && holds("flux-schnell")) base = "flux-schnell";
  }
  ModelFiles files = find_model_files({o.model, o.ae, o.clip_l, o.t5xxl}, o.model_dir, base, "--model-dir");
  o.model = files.model;
  o.ae = files.ae;
  o.clip_l = files.clip_l;
  o.t5xxl = files.t5xxl;
  for (const auto& [path, flag] : {std::pair{o.model, "--model"}, std::pair{o.ae, "--ae"},
                                   std::pair{o.clip_l, "--clip-l"}, std::pair{o.t5xxl, "--t5xxl"}}) {
    if (!fs::exists(path)) fail(flag, " ", path, ": no such file");
  }
}

struct LoraSpec {
  std::string path;
  double strength = 1.0;
};

// FILE or FILE:STRENGTH (the part after the last ':' is a strength only when it parses as a number).
LoraSpec parse_lora(const std::string& text) {
  LoraSpec spec{text, 1.0};
  const size_t colon = text.rfind(':');
  if (colon != std::string::npos && colon + 1 < text.size()) {
    const std::string tail = text.substr(colon + 1);
    try {
      size_t used = 0;
      double value = std::stod(tail, &used);
      if (used == tail.size()) spec = {text.substr(0, colon), value};
    } catch (const std::exception&) {
    }
  }
  if (!fs::exists(spec.path)) fail("--lora ", text, ": no such file ", spec.path, " (syntax: --lora FILE[:STRENGTH])");
  return spec;
}

// Whether the transformer file has a guidance embedding (dev) — from the header only.
bool has_guidance_embedding(const std::string& path) {
  models::Checkpoint checkpoint = models::Checkpoint::open(path, "transformer");
  for (const auto& name : checkpoint.names()) {
    if (name.ends_with("guidance_in.in_layer.weight") || name.ends_with("guidance_embedder.linear_1.weight"))
      return true;
  }
  return false;
}

void check_size(int value, const char* flag) {
  if (value < 16 || value % 16 != 0) {
    fail(flag, " ", value, ": expected a positive multiple of 16, e.g. ", std::max(16, value / 16 * 16));
  }
}

int run_sample(SampleOptions o) {
  resolve_files(o);
  if (o.prompt.empty() == o.prompts.empty()) fail("give either --prompt TEXT or --prompts FILE (exactly one)");
  if (o.out.empty()) fail("--out DIR is required");
  check_size(o.width, "--width");
  check_size(o.height, "--height");
  std::vector<LoraSpec> loras;
  for (const auto& text : o.loras) loras.push_back(parse_lora(text));

  const bool dev = has_guidance_embedding(o.model);
  sample::PromptDefaults defaults;
  defaults.width = o.width;
  defaults.height = o.height;
  defaults.steps = o.steps > 0 ? o.steps : (dev ? 20 : 4);
  defaults.guidance = o.guidance;
  defaults.cfg = o.cfg;
  defaults.negative = o.negative;
  defaults.seed = o.seed;
  std::vector<sample::SamplePrompt> prompts = o.prompt.empty()
                                                  ? sample::load_prompts(o.prompts, defaults, "--prompts")
                                                  : sample::parse_prompts_text(o.prompt, "--prompt", defaults);
  if (prompts.empty()) fail("--prompt: the text holds no prompt");

  models::ModelOptions options;
  options.device = resolve_device(o.device);
  options.dtype = resolve_precision(o.precision, options.device);

  sample::SamplerSetup setup;
  setup.ae_path = o.ae;
  setup.clip_path = o.clip_l;
  setup.t5_path = o.t5xxl;
  setup.options = options;
  setup.text.t5_max_length = o.t5_max_length > 0 ? o.t5_max_length : (dev ? 512 : 256);
  setup.text.t5_attn_mask = o.t5_attn_mask;
  setup.prompts = prompts;
  setup.sampler.out_dir = o.out;
  setup.sampler.name = o.name;
  setup.sampler.run_seed = o.seed;
  std::string lora_list;
  for (const auto& l : loras) {
    lora_list += cat(lora_list.empty() ? "" : ", ", fs::path(l.path).filename().string(), ":", l.strength);
  }
  setup.sampler.text = {{"model", fs::path(o.model).filename().string()}, {"loras", lora_list}};

  // Text encoders first (encode, free), then the transformer: the peak is the larger of the two.
  log::info("encoding ", prompts.size(), " prompts with ", o.clip_l, " and ", o.t5xxl);
  std::unique_ptr<sample::Sampler> sampler = sample::make_sampler(setup);

  log::info("loading ", o.model);
  models::LoadedFlux flux = models::load_flux(o.model, options);
  for (const auto& l : loras) {
    lora::LoraContents contents = lora::read_lora(l.path, *flux.model);
    lora::merge_lora(*flux.model, contents, l.strength);
    log::info("LoRA ", l.path, ": ", contents.deltas.size(), " modules (", contents.layout,
              " layout) merged at strength ", l.strength);
  }
  std::vector<fs::path> written = sampler->render(0, *flux.model);
  for (const auto& path : written) std::cout << path.string() << "\n";
  return 0;
}

}  // namespace

Command add_sample_command(CLI::App& app) {
  auto o = std::make_shared<SampleOptions>();
  CLI::App* sub = app.add_subcommand(
      "sample", "Generate images with a Flux model plus any number of LoRAs (kohya, diffusers/PEFT or ComfyUI layout)");
  sub->add_option("--model", o->model, "Flux transformer (flux1-dev.safetensors, a diffusers folder, ...)");
  sub->add_option("--ae", o->ae, "autoencoder (ae.safetensors)");
  sub->add_option("--clip-l", o->clip_l, "CLIP-L text encoder (clip_l.safetensors)");
  sub->add_option("--t5xxl", o->t5xxl, "T5-XXL text encoder (t5xxl_fp16.safetensors)");
  sub->add_option("--model-dir", o->model_dir,
                  "folder holding the usual file names (flux1-dev/flux1-schnell, ae, clip_l, t5xxl_fp16 .safetensors)");
  sub->add_option("--lora", o->loras, "LoRA file, optionally with a strength: FILE[:STRENGTH] (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--prompt", o->prompt, "the prompt (kohya options such as --w 768 --d 5 may follow inside it)");
  sub->add_option("--prompts", o->prompts, "prompt file in kohya's syntax (.txt lines, .toml or .json)");
  sub->add_option("--width", o->width, "image width (multiple of 16)")->capture_default_str();
  sub->add_option("--height", o->height, "image height (multiple of 16)")->capture_default_str();
  sub->add_option("--steps", o->steps, "sampling steps (default 20 for dev, 4 for schnell)");
  sub->add_option("--guidance", o->guidance, "Flux dev's embedded guidance")->capture_default_str();
  sub->add_option("--cfg", o->cfg, "true classifier-free guidance scale (1 = off; otherwise two forwards per step)")
      ->capture_default_str();
  sub->add_option("--negative", o->negative, "negative prompt (used when --cfg is not 1)");
  sub->add_option("--seed", o->seed, "seed of every prompt that sets none with --d")->capture_default_str();
  sub->add_option("--out", o->out, "folder for the PNGs (created if needed)");
  sub->add_option("--name", o->name, "file name prefix: NAME_000000_IDX_SEED.png")->capture_default_str();
  sub->add_option("--device", o->device, "auto, cpu or cuda[:N]")->capture_default_str();
  sub->add_option("--precision", o->precision, "auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
      ->capture_default_str();
  sub->add_option("--t5-max-length", o->t5_max_length, "T5 tokens (default 512 for dev, 256 for schnell)");
  sub->add_flag("--t5-attn-mask", o->t5_attn_mask, "mask T5 padding (kohya apply_t5_attn_mask)");
  return {sub, [o] { return run_sample(*o); }};
}

}  // namespace fluxtrain::app
