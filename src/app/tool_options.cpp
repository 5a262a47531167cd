// The option tables of inspect, dataset, fetch, make-tiny, merge, sample and demo (tool_options.h).
#include "app/tool_options.h"

#include <cstdio>

#include "app/option_builder.h"
#include "core/error.h"

namespace fluxtrain::app {
namespace {

std::vector<OptionSpec> specs_of(const std::vector<OptionSpec>& specs) {
  return specs;
}

// `specs`, then the shared `parts` lifted into `member` of the settings.
template <typename Settings, typename Part>
std::vector<OptionSpec> specs_of(std::vector<OptionSpec> specs, const std::vector<Opt<Part>>& parts,
                                 Part Settings::*member) {
  for (const auto& part : parts) specs.push_back(lift(member, part));
  return specs;
}

// N or WxH (also W,H), 64 to 16384 (kohya's --resolution).
std::optional<data::Resolution> parse_resolution(const std::string& text) {
  int w = 0, h = 0;
  char sep = 0, extra = 0;
  const int n = std::sscanf(text.c_str(), "%d%c%d%c", &w, &sep, &h, &extra);
  if (n == 1) h = w;
  if (!((n == 1) || (n == 3 && (sep == 'x' || sep == ',' || sep == 'X'))) || w < 64 || h < 64 || w > 16384 || h > 16384)
    return std::nullopt;
  return data::Resolution{w, h};
}

}  // namespace

// ---- inspect -----------------------------------------------------------------------------------

const OptionTable& inspect_options() {
  using S = InspectSettings;
  static const OptionTable table(
      "inspect", "FLUXTRAIN_INSPECT_", {{"inspect", "Inspect"}},
      specs_of({
          Opt<S>("file", kPath, "inspect", "", "The .safetensors file.")
              .positional()
              .required()
              .path(PathCheck::file)
              .to(&S::file),
          Opt<S>("json", kBool, "inspect", "false", "Print JSON instead of text.").to(&S::json),
      }));
  return table;
}

// ---- dataset -----------------------------------------------------------------------------------

const OptionTable& dataset_command_options() {
  using S = DatasetCommandSettings;
  static const OptionTable table(
      "dataset", "FLUXTRAIN_DATASET_", {{"dataset", "Dataset"}},
      specs_of({
          Opt<S>("config", kPath, "dataset", "", "Dataset config (.toml or .json, kohya's schema).")
              .env("DATASET_CONFIG")
              .to(&S::config),
          Opt<S>("dir", kPath, "dataset", "", "A folder of images (+ .txt captions, or kohya N_name subfolders).")
              .to(&S::dir),
          Opt<S>("reg_dir", kPath, "dataset", "", "Regularisation images for --dir (kohya's reg_data_dir).")
              .to(&S::reg_dir),
          Opt<S>("seed", kInt, "dataset", "0", "Seed of the epoch plan.").min(0).to(&S::seed),
          Opt<S>("batch_size", kInt, "dataset", "",
                 "Batch size where the config sets none (kohya's --train_batch_size).")
              .min(1)
              .set([](S& s, const int64_t& v, const ResolvedOption& given) {
                s.fallbacks.batch_size = static_cast<int>(v);
                s.fallbacks.batch_size_origin = given.origin;
              }),
          Opt<S>("resolution", kString, "dataset", "",
                 "Resolution where the config sets none: N or WxH (kohya's --resolution).")
              .check([](const OptionValue& v) {
                return parse_resolution(std::get<std::string>(v)) ? "" : "not a resolution";
              })
              .allowed("N or WxH (e.g. 1024 or 1280x768), 64 to 16384")
              .set([](S& s, const std::string& v, const ResolvedOption& given) {
                s.fallbacks.resolutions = {*parse_resolution(v)};
                s.fallbacks.resolution_origin = given.origin;
              }),
          Opt<S>("default_caption", kString, "dataset", "",
                 "Caption of captionless images in subsets without class_tokens, where the config sets no "
                 "default_caption (train's default_caption).")
              .set([](S& s, const std::string& v, const ResolvedOption& given) {
                s.fallbacks.default_caption = v;
                s.fallbacks.default_caption_origin = given.origin;
              }),
          Opt<S>("masked_loss", kBool, "dataset", "false",
                 "Plan as train's masked_loss does: the alpha is the mask where the config sets no alpha_mask, and "
                 "subsets may name conditioning_data_dir (mask pictures).")
              .set([](S& s, const bool& v, const ResolvedOption& given) {
                s.fallbacks.masked_loss = v;
                s.fallbacks.masked_loss_origin = given.origin;
              }),
          Opt<S>("epoch", kInt, "dataset", "", "Also print the batches of this epoch (1-based).")
              .min(0)
              .to(&S::show_epoch),
          Opt<S>("json", kBool, "dataset", "false", "Print JSON instead of text.").to(&S::json),
          Opt<S>("lint", kBool, "dataset", "false",
                 "Also check the images and captions (unreadable, duplicates, upscaled, cropped, label-like or "
                 "too long captions) and write crop preview sheets per bucket (docs/data.md).")
              .to(&S::lint),
          Opt<S>("lint_out", kPath, "dataset", "fluxtrain-lint",
                 "--lint: folder of the crop preview sheets and crops.json (made if needed; earlier sheets in it "
                 "are replaced).")
              .to(&S::lint_out),
          Opt<S>("lint_strict", kBool, "dataset", "false", "--lint: exit 1 when anything is found (default: exit 0).")
              .to(&S::lint_strict),
          Opt<S>("lint_tile", kInt, "dataset", "384",
                 "--lint: longest side of a preview tile; larger scaled images are shrunk to it.")
              .min(32)
              .max(4096)
              .to(&S::lint_tile),
          Opt<S>("lint_near_duplicate_bits", kInt, "dataset", "6",
                 "--lint: near duplicates differ in at most this many of the 64 dHash bits (0: exact only).")
              .min(0)
              .max(32)
              .to(&S::lint_near_duplicate_bits),
          Opt<S>("lint_t5_max_length", kInt, "dataset", "512",
                 "--lint: T5 tokens read per caption (512 for Flux.1-dev, 256 for schnell).")
              .min(1)
              .max(4096)
              .to(&S::lint_t5_max_length),
      }));
  return table;
}

std::vector<std::string> check_dataset_command(const ResolvedConfig& config) {
  std::vector<std::string> errors;
  const OptionTable& t = config.table();
  if (config.is_set("config") == config.is_set("dir"))
    errors.push_back(cat("fluxtrain dataset needs exactly one of ", t.at("config").flag_name(),
                         " FILE (a kohya-style .toml/.json dataset config) or ", t.at("dir").flag_name(),
                         " FOLDER (a folder of images and captions)"));
  if (config.is_set("reg_dir") && !config.is_set("dir"))
    errors.push_back(cat(t.at("reg_dir").flag_name(), " goes with ", t.at("dir").flag_name(),
                         "; in a config file, mark a subset with is_reg = true"));
  throw_errors(errors);
  return {};
}

// ---- fetch -------------------------------------------------------------------------------------

const OptionTable& fetch_command_options() {
  using S = FetchCommandSettings;
  static const OptionTable table(
      "fetch", "FLUXTRAIN_FETCH_", {{"fetch", "Dataset download"}, {"downloads", "Downloads"}},
      specs_of(
          {
              Opt<S>("dataset", kString, "fetch", "",
                     "A local folder, an http(s) URL of an archive or file, owner/name (the zip at DATASET_HOST/owner/"
                     "name, as the seed's container, else the Hugging Face Hub), kaggle:owner/name or hf:owner/name.")
                  .positional()
                  .required()
                  .env("DATASET_NAME")
                  .url_secrets()
                  .to(&S::dataset),
              Opt<S>("cache_dir", kPath, "fetch", "",
                     "Folder of the dataset cache (default: DATASET_PATH, else $FLUXTRAIN_CACHE/datasets, else "
                     "/workspace/dataset where /workspace exists, else $XDG_CACHE_HOME/fluxtrain/datasets, else "
                     "~/.cache/fluxtrain/datasets).")
                  .env("FLUXTRAIN_DATASET_CACHE")
                  .to(&S::cache_dir),
              Opt<S>("revision", kString, "fetch", "",
                     "Hub: branch, tag or commit (default main); Kaggle: dataset version number (default latest).")
                  .env("DATASET_REVISION")
                  .to(&S::revision),
              Opt<S>("refresh", kBool, "fetch", "false",
                     "Check the source again even if the cache holds a complete copy (Hub: only changed files are "
                     "downloaded).")
                  .to(&S::refresh),
          },
          download_options(kAllDownloadKnobs & ~kDatasetCacheKnob), &S::downloads));
  return table;
}

// ---- make-tiny ---------------------------------------------------------------------------------

const OptionTable& make_tiny_options() {
  using S = TinySettings;
  static const OptionTable table(
      "make-tiny", "FLUXTRAIN_TINY_", {{"tiny", "Tiny model set"}},
      specs_of({
          Opt<S>("out", kPath, "tiny", "", "Folder to write into (created if needed).").required().to(&S::out),
          Opt<S>("schnell", kBool, "tiny", "false", "schnell layout (no guidance embedding) instead of dev.")
              .to(&S::schnell),
          Opt<S>("seed", kInt, "tiny", "0", "Random seed.").min(0).to(&S::seed),
          Opt<S>("preset", kChoice, "tiny", "test",
                 "test (tiny, strong random modulation for parity tests) or demo (the demo's sizes, initialised for "
                 "training from scratch).")
              .choices_of<models::TinyPreset>()
              .to(&S::preset),
      }));
  return table;
}

// ---- merge -------------------------------------------------------------------------------------

const OptionTable& merge_options() {
  using S = MergeSettings;
  static const OptionTable table(
      "merge", "FLUXTRAIN_MERGE_", {{"merge", "Merge"}, {"engine", "Reproducible files"}},
      specs_of(
          {
              Opt<S>(
                  "lora", kList, "merge", "",
                  "LoRA file, optionally with a weight (merge) or strength (bake): FILE or FILE:W; repeat for several.")
                  .repeatable()
                  .required()
                  .to(&S::loras),
              Opt<S>("base", kPath, "merge", "",
                     "Bake the LoRAs into this base checkpoint (BFL single file, bf16/fp16/fp32/fp8).")
                  .to(&S::base),
              Opt<S>("out", kPath, "merge", "", "Output .safetensors file (replaced atomically if it exists).")
                  .required()
                  .to(&S::out),
              Opt<S>(
                  "rank", kInt, "merge", "",
                  "LoRA merge: SVD to this rank (best rank-R approximation); without it the merge is exact, with the "
                  "summed ranks.")
                  .to(&S::rank),
              Opt<S>("dtype", kString, "merge", "",
                     "Weight dtype of the output: LoRA merge fp32 (default), bf16, fp16; bake: keep each tensor's "
                     "(default), bf16, fp16, fp32 or fp8.")
                  .to(&S::dtype),
              Opt<S>("title", kString, "merge", "", "LoRA merge: modelspec.title / ss_output_name of the result.")
                  .to(&S::title),
          },
          engine_options(kSourceDateKnob), &S::engine));
  return table;
}

std::vector<std::string> check_merge(const ResolvedConfig& config) {
  const OptionTable& t = config.table();
  std::vector<std::string> errors;
  if (auto rank = config.find_int("rank"); rank && *rank <= 0)
    errors.push_back(
        cat(t.at("rank").flag_name(), " must be a positive rank, got ", *rank, " (leave it out for an exact merge)"));
  if (config.is_set("base")) {
    const std::string base = config.get_string("base");
    if (config.is_set("rank"))
      errors.push_back(cat(t.at("rank").flag_name(), " applies to LoRA merges; baking into ", t.at("base").flag_name(),
                           " ", base, " has no rank"));
    if (config.is_set("title"))
      errors.push_back(
          cat(t.at("title").flag_name(), " applies to LoRA merges; a baked checkpoint keeps the base's metadata"));
  }
  throw_errors(errors);
  return {};
}

// ---- sample ------------------------------------------------------------------------------------

const OptionTable& sample_options() {
  using S = SampleSettings;
  static const OptionTable table = [] {
    std::vector<OptionSpec> specs;
    for (const auto& o : model_file_options("models")) {
      if (o.spec().name == "base_model") continue;  // dev or schnell by what the files hold
      OptionSpec spec = lift(&S::models, o);
      if (spec.name == "model") {
        spec.help = "Flux transformer (flux1-dev.safetensors, a diffusers folder, ...).";
        spec.path_check = PathCheck::exists;
      }
      specs.push_back(spec);
    }
    std::vector<Opt<S>> own = {
        Opt<S>("lora", kList, "sample", "", "LoRA file, optionally with a strength: FILE[:STRENGTH] (repeatable).")
            .repeatable()
            .to(&S::loras),
        Opt<S>("prompt", kString, "sample", "",
               "The prompt (kohya options such as --w 768 --d 5 may follow inside it).")
            .to(&S::prompt),
        Opt<S>("prompts", kPath, "sample", "", "Prompt file in kohya's syntax (.txt lines, .toml or .json).")
            .to(&S::prompts),
        Opt<S>("width", kInt, "sample", "1024", "Image width (multiple of 16).").to(&S::width),
        Opt<S>("height", kInt, "sample", "1024", "Image height (multiple of 16).").to(&S::height),
        Opt<S>("steps", kInt, "sample", "", "Sampling steps (default 20 for dev, 4 for schnell).").min(1).to(&S::steps),
        Opt<S>("guidance", kReal, "sample", "3.5", "Flux dev's embedded guidance.").min(0).to(&S::guidance),
        Opt<S>("cfg", kReal, "sample", "1.0",
               "True classifier-free guidance scale (1 = off; otherwise two forwards per step).")
            .to(&S::cfg),
        Opt<S>("negative", kString, "sample", "", "Negative prompt (used when --cfg is not 1).").to(&S::negative),
        Opt<S>("seed", kInt, "sample", "42", "Seed of every prompt that sets none with --d.").min(0).to(&S::seed),
        Opt<S>("out", kPath, "sample", "", "Folder for the PNGs (created if needed).").required().to(&S::out),
        Opt<S>("name", kString, "sample", "sample", "File name prefix: NAME_000000_IDX_SEED.png.").to(&S::name),
    };
    for (const auto& o : own) specs.push_back(o);
    specs.push_back(lift(&S::compute, device_option("sample")));
    specs.push_back(lift(&S::compute, precision_option("sample")));
    specs.push_back(Opt<S>("t5_max_length", kInt, "sample", "", "T5 tokens (default 512 for dev, 256 for schnell).")
                        .min(1)
                        .max(512)
                        .to(&S::t5_max_length));
    specs.push_back(Opt<S>("t5_attn_mask", kBool, "sample", "false", "Mask T5 padding (kohya apply_t5_attn_mask).")
                        .to(&S::t5_attn_mask));
    for (const auto& o : engine_options(kCpuCacheKnob)) specs.push_back(lift(&S::engine, o));
    return OptionTable("sample", "FLUXTRAIN_SAMPLE_",
                       {{"models", "Model files"}, {"sample", "Sampling"}, {"engine", "Memory of the CPU"}},
                       std::move(specs));
  }();
  return table;
}

std::vector<std::string> check_sample(const ResolvedConfig& config) {
  const OptionTable& t = config.table();
  std::vector<std::string> errors;
  if (config.is_set("prompt") == config.is_set("prompts"))
    errors.push_back(cat("give either ", t.at("prompt").flag_name(), " TEXT or ", t.at("prompts").flag_name(),
                         " FILE (exactly one)"));
  for (const char* name : {"width", "height"}) {
    const int64_t value = config.get_int(name);
    if (value < 16 || value % 16 != 0)
      errors.push_back(cat(t.at(name).flag_name(), " ", value, ": expected a positive multiple of 16, e.g. ",
                           std::max<int64_t>(16, value / 16 * 16)));
  }
  throw_errors(errors);
  return {};
}

// ---- demo --------------------------------------------------------------------------------------

const OptionTable& demo_options() {
  using S = DemoSettings;
  static const OptionTable table = [] {
    std::vector<Opt<S>> own = {
        Opt<S>("out", kPath, "demo", "demo-output", "Folder for every output.").to(&S::out),
        Opt<S>("steps", kInt, "demo", "400", "LoRA training steps.").min(2).max(100000).to(&S::steps),
        Opt<S>("images", kInt, "demo", "24", "Pictures of the concept.").min(1).max(10000).to(&S::images),
        Opt<S>("seed", kInt, "demo", "0", "Seed of the concept pictures and the training.").min(0).to(&S::seed),
        Opt<S>("build_assets", kPath, "assets", "",
               "Remake the demo's model set into this folder from nothing (long; see docs/demo.md).")
            .to(&S::build_assets),
        Opt<S>("work", kPath, "assets", "", "--build-assets: folder for the intermediate runs (default DIR/work).")
            .to(&S::work),
        Opt<S>("ae_steps", kInt, "assets", "4000", "--build-assets: autoencoder steps.").min(1).to(&S::ae_steps),
        Opt<S>("base_steps", kInt, "assets", "3000", "--build-assets: transformer steps.").min(1).to(&S::base_steps),
        Opt<S>("base_images", kInt, "assets", "600", "--build-assets: pictures of the base dataset.")
            .min(1)
            .to(&S::base_images),
    };
    std::vector<OptionSpec> specs(own.begin(), own.end());
    specs.push_back(lift(&S::compute, device_option("demo")));
    specs.push_back(lift(&S::compute, precision_option("demo")));
    return OptionTable("demo", "FLUXTRAIN_DEMO_", {{"demo", "Demo"}, {"assets", "Remaking the demo's model set"}},
                       std::move(specs));
  }();
  return table;
}

}  // namespace fluxtrain::app
