// `fluxtrain sample`: images from a base model plus any number of LoRAs (merged into the weights), from
// --prompt or a kohya prompt file, into --out — the "test your LoRA" step. The sampler is set up as for
// the trainer's sample hook (sample/sampler_setup.h).
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/device.h"
#include "app/tool_options.h"
#include "core/error.h"
#include "core/log.h"
#include "lora/convert.h"
#include "lora/text_encoder_network.h"
#include "models/convert.h"
#include "models/loader.h"
#include "sample/sampler_setup.h"

namespace fluxtrain::app {

namespace fs = std::filesystem;

namespace {

// The four files from the flags, or from --model-dir by their usual names (the same search as
// `train`'s MODEL_DIR: shared_options.h find_model_files); dev or schnell by what the folder holds.
ModelFiles resolve_files(ModelFileSettings models) {
  if (models.given.model.empty() && !models.dir.empty()) {
    auto holds = [&](BaseModel variant) {
      for (const auto& name : usual_model_names(ModelFileKind::model, variant)) {
        if (fs::is_regular_file(fs::path(models.dir) / name)) return true;
      }
      return false;
    };
    if (!holds(BaseModel::dev) && holds(BaseModel::schnell)) models.base_model = BaseModel::schnell;
  }
  ModelFiles files = find_model_files(models);
  for (const auto& [path, what] :
       {std::pair{files.model, "the Flux transformer"}, std::pair{files.ae, "the autoencoder"},
        std::pair{files.clip_l, "the CLIP-L text encoder"}, std::pair{files.t5xxl, "the T5-XXL text encoder"}}) {
    if (!fs::exists(path)) fail(what, " ", path, ": no such file");
  }
  return files;
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

int run_sample(const SampleSettings& o) {
  const ModelFiles files = resolve_files(o.models);
  std::vector<LoraSpec> loras;
  for (const auto& text : o.loras) loras.push_back(parse_lora(text));

  const bool dev = has_guidance_embedding(files.model);
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
  options.device = resolve_device(o.compute, o.engine);
  options.dtype = resolve_precision(o.compute.precision, options.device);

  sample::SamplerSetup setup;
  setup.ae_path = files.ae;
  setup.clip_path = files.clip_l;
  setup.t5_path = files.t5xxl;
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
  setup.sampler.text = {{"model", fs::path(files.model).filename().string()}, {"loras", lora_list}};
  for (const auto& l : loras) setup.text_encoder_loras.emplace_back(l.path, l.strength);
  sample::ComfyGraph graph;
  graph.unet = fs::path(files.model).filename().string();
  graph.clip_l = fs::path(files.clip_l).filename().string();
  graph.t5xxl = fs::path(files.t5xxl).filename().string();
  graph.vae = fs::path(files.ae).filename().string();
  graph.filename_prefix = o.name;
  for (const auto& l : loras)
    graph.loras.push_back({fs::path(l.path).filename().string(), l.strength, lora::has_text_encoder_modules(l.path)});
  setup.sampler.comfy = graph;

  // Text encoders first (encode, free), then the transformer: the peak is the larger of the two.
  log::info("encoding ", prompts.size(), " prompts with ", files.clip_l, " and ", files.t5xxl);
  std::unique_ptr<sample::Sampler> sampler = make_sampler(setup);

  log::info("loading ", files.model);
  models::LoadedFlux flux = models::load_flux(files.model, options);
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
  return add_table_command(app, command_info("sample"),
                           [](const ResolvedConfig& config) { return run_sample(config.bind<SampleSettings>()); });
}

}  // namespace fluxtrain::app
