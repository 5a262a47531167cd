// `fluxtrain demo`: the embedded default job (`make demo`). A tiny Flux-architecture model set that
// ships in assets/demo/ learns, through a LoRA, a concept it cannot draw: a "zorbix" (a magenta star,
// while the base only knows red, green, blue, yellow and orange circles, squares, triangles and rings).
// The demo drives the CLI as a user would (`fluxtrain sample`, `fluxtrain train` with environment
// variables, each printed before it runs), then measures the effect: the share of magenta pixels in the
// samples of the trigger prompt, before and after.
//
// `fluxtrain demo --build-assets DIR` remakes assets/demo/ from nothing (docs/demo.md): it trains the
// autoencoder on random shapes, then the transformer (`fluxtrain train --network-type none`) on a
// captioned shapes dataset. scripts/make_demo_assets.sh runs it.
#include <ATen/ATen.h>
#include <spawn.h>
#include <sys/wait.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include "app/commands.h"
#include "app/options.h"
#include "app/tool_options.h"
#include "core/assets.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "data/shapes.h"
#include "models/convert.h"
#include "models/tiny.h"
#include "train/ae_trainer.h"

extern char** environ;

namespace fluxtrain::app {

namespace {

namespace fs = std::filesystem;

constexpr const char* kTrigger = "zorbix";
constexpr const char* kConceptColor = "magenta";
constexpr double kColorTolerance = 90;  // RGB distance: the palette's other colours are >= 170 away
constexpr int kImageSize = 64;
const std::map<std::string, std::string> kDemoMetadata = {{"format", "pt"}, {"fluxtrain_demo", "1"}};

using EnvOverrides = std::vector<std::pair<std::string, std::string>>;

// The variables a user may have set for their own runs: the demo's children never see them, so the
// demo is the same on every machine. FLUXTRAIN_* (assets, engine, log level) are kept.
bool user_setting(const std::string& name) {
  for (const char* prefix : {"PARAMS_", "BASE_MODEL=", "DATASET_NAME=", "DATASET_CONFIG=", "SAMPLE_PROMPTS=",
                             "OUTPUT_PATH=", "MODEL_DIR=", "FLUXTRAIN_SAMPLE_"}) {
    if (name.starts_with(prefix)) return true;
  }
  return false;
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=,") ==
                        std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs this same executable with `args` and the environment plus `env`, as a user would from a shell
// (the command is printed first); fails if it does not exit 0.
void run_fluxtrain(const std::vector<std::string>& args, const EnvOverrides& env) {
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  std::string shown = "$";
  for (const auto& [k, v] : env) shown += " " + k + "=" + shell_quote(v);
  shown += " fluxtrain";
  for (const auto& a : args) shown += " " + shell_quote(a);
  std::cout << shown << std::endl;

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!user_setting(*e)) env_strings.emplace_back(*e);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_strings = {exe};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  std::fflush(nullptr);
  pid_t pid = 0;
  if (int rc = posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()); rc != 0) {
    fail("demo: could not start ", exe, ": ", std::strerror(rc));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail("demo: waiting for fluxtrain ", args.at(0), " failed: ", std::strerror(errno));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fail("demo: `fluxtrain ", args.at(0), "` failed (",
         WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status)) : std::string("killed by a signal"),
         "); its error is printed above");
  }
}

void step_banner(int n, int total, const std::string& what) {
  std::cout << "\n[demo] " << n << "/" << total << " " << what << std::endl;
}

std::vector<fs::path> pngs_in(const fs::path& folder) {
  std::vector<fs::path> files;
  if (!fs::is_directory(folder)) return files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() == ".png") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

struct Measured {
  double share = 0;    // mean share of concept-coloured pixels over the trigger prompt's samples
  double control = 0;  // mean share of red pixels in the control prompt's samples
  std::vector<fs::path> files;
};

// Sample files are NAME_STEP_INDEX_SEED.png in prompt order: the first `trigger_prompts` are the
// trigger prompt's, the last one is the control prompt's.
Measured measure(const fs::path& folder, size_t trigger_prompts) {
  Measured m;
  m.files = pngs_in(folder);
  if (m.files.size() != trigger_prompts + 1) {
    fail("demo: expected ", trigger_prompts + 1, " samples in ", folder.string(), ", found ", m.files.size());
  }
  for (size_t i = 0; i < m.files.size(); ++i) {
    const data::Image image = data::load_image(m.files[i]);
    if (i < trigger_prompts) {
      m.share += data::color_share(image, data::named_color(kConceptColor), kColorTolerance) / trigger_prompts;
    } else {
      m.control = data::color_share(image, data::named_color("red"), kColorTolerance);
    }
  }
  return m;
}

// The base's dataset knows five colours and four shapes; the concept's colour and shape are neither.
data::SceneChoices base_choices() {
  data::SceneChoices c;
  c.shapes = {"circle", "square", "triangle", "ring"};
  c.fills = {"red", "green", "blue", "yellow", "orange"};
  c.backgrounds = {"white", "black", "gray"};
  return c;
}

data::SceneChoices concept_choices() {
  data::SceneChoices c;
  c.shapes = {"star"};
  c.fills = {kConceptColor};
  c.backgrounds = {"white", "black", "gray"};
  return c;
}

std::vector<std::string> sample_args(const fs::path& model_dir, const fs::path& prompts, const fs::path& out,
                                     const std::string& name, const DemoSettings& o) {
  return {"sample", "--model-dir", model_dir.string(), "--prompts",   prompts.string(),
          "--out",  out.string(),  "--name",           name,          "--t5-max-length",
          "16",     "--device",    o.compute.device,   "--precision", std::string(name_of(o.compute.precision))};
}

int run_demo(const DemoSettings& o) {
  const auto started = std::chrono::steady_clock::now();
  const fs::path model_dir = find_asset("demo/flux1-dev.safetensors").parent_path();
  const fs::path out = fs::absolute(o.out);
  std::cout << "[demo] fluxtrain teaches a tiny Flux model (" << model_dir.string()
            << ") a new concept through a LoRA: a \"" << kTrigger << "\", a " << kConceptColor
            << " star; the base model has never seen that word, that colour or that shape." << std::endl;
  // The demo's own folders only: a rerun starts from scratch.
  for (const char* sub : {"dataset", "before", "after", "lora"}) fs::remove_all(out / sub);
  fs::create_directories(out);

  step_banner(1, 5,
              std::string("the concept: ") + std::to_string(o.images) + " pictures captioned \"a " + kTrigger +
                  " on a ... background\"");
  data::ShapesDataset concept_data;
  concept_data.folder = out / "dataset" / (std::string("1_") + kTrigger);
  concept_data.count = static_cast<int>(o.images);
  concept_data.width = concept_data.height = kImageSize;
  concept_data.seed = o.seed + 1000;
  concept_data.choices = concept_choices();
  concept_data.caption_template = std::string("a ") + kTrigger + " on a {background} background";
  data::write_shapes_dataset(concept_data);
  std::cout << "[demo] wrote " << concept_data.count << " images and captions in " << concept_data.folder.string()
            << std::endl;
  // Regularisation pictures of what the base already knows (kohya's is_reg, "prior preservation"): without
  // them a LoRA trained on one caption bleeds into every prompt.
  data::ShapesDataset reg_data;
  reg_data.folder = out / "dataset" / "reg";
  reg_data.count = concept_data.count;
  reg_data.width = reg_data.height = kImageSize;
  reg_data.seed = o.seed + 2000;
  reg_data.choices = base_choices();
  data::write_shapes_dataset(reg_data);
  std::cout << "[demo] wrote " << reg_data.count << " regularisation images of shapes the base knows in "
            << reg_data.folder.string() << std::endl;
  const fs::path dataset_config = out / "dataset" / "dataset.toml";
  // Paths go through the TOML formatter, so quotes and backslashes in them are escaped.
  auto path_value = [](const fs::path& p) { return format_toml_value(OptionValue(p.string())); };
  write_file_atomic(dataset_config.string(), "[general]\nresolution = " + std::to_string(kImageSize) +
                                                 "\nbatch_size = 4\ncaption_extension = \".txt\"\n\n"
                                                 "[[datasets]]\n\n  [[datasets.subsets]]\n  image_dir = " +
                                                 path_value(concept_data.folder) +
                                                 "\n  num_repeats = 1\n\n  [[datasets.subsets]]\n  image_dir = " +
                                                 path_value(reg_data.folder) + "\n  is_reg = true\n");
  std::cout << "[demo] the dataset config: " << dataset_config.string() << std::endl;

  // Four samples of the trigger prompt and one control prompt the base knows.
  const size_t trigger_prompts = 4;
  const fs::path prompts = out / "prompts.txt";
  std::string prompt_text;
  const char* backgrounds[] = {"white", "black", "gray", "white"};
  for (size_t i = 0; i < trigger_prompts; ++i) {
    prompt_text += std::string("a ") + kTrigger + " on a " + backgrounds[i] +
                   " background --w 64 --h 64 --s 20 --g 1 --d " + std::to_string(i + 1) + "\n";
  }
  prompt_text += "a red circle on a white background --w 64 --h 64 --s 20 --g 1 --d 5\n";
  write_file_atomic(prompts.string(), prompt_text);

  step_banner(2, 5, "before: the base model draws the prompts");
  run_fluxtrain(sample_args(model_dir, prompts, out / "before", "before", o), {});

  step_banner(3, 5, "training a LoRA on the concept (the main job, configured by environment variables)");
  const fs::path lora_dir = out / "lora";
  run_fluxtrain({"train", "--device", o.compute.device, "--precision", std::string(name_of(o.compute.precision))},
                {{"MODEL_DIR", model_dir.string()},
                 {"DATASET_CONFIG", dataset_config.string()},
                 {"OUTPUT_PATH", lora_dir.string()},
                 {"SAMPLE_PROMPTS", prompts.string()},
                 {"PARAMS_OUTPUT_NAME", kTrigger},
                 {"PARAMS_NETWORK_DIM", "8"},
                 {"PARAMS_NETWORK_ALPHA", "8"},
                 {"PARAMS_MAX_TRAIN_STEPS", std::to_string(o.steps)},
                 {"PARAMS_SAVE_EVERY_N_STEPS", std::to_string(o.steps / 2)},
                 {"PARAMS_SAMPLE_EVERY_N_STEPS", std::to_string(o.steps / 2)},
                 {"PARAMS_T5XXL_MAX_TOKEN_LENGTH", "16"},
                 {"PARAMS_GRADIENT_CHECKPOINTING", "false"},
                 {"PARAMS_LOG_EVERY_SECONDS", "5"},
                 {"PARAMS_SEED", std::to_string(42 + o.seed)}});
  const fs::path lora = lora_dir / (std::string(kTrigger) + ".safetensors");
  if (!fs::exists(lora)) fail("demo: training finished but ", lora.string(), " is missing");

  step_banner(4, 5, "after: the same prompts and seeds with the LoRA");
  std::vector<std::string> after = sample_args(model_dir, prompts, out / "after", "after", o);
  after.insert(after.end(), {"--lora", lora.string()});
  run_fluxtrain(after, {});

  step_banner(5, 5, "the measured effect");
  const Measured before_m = measure(out / "before", trigger_prompts);
  const Measured after_m = measure(out / "after", trigger_prompts);
  char line[256];
  std::snprintf(line, sizeof(line), "[demo] %s pixels in \"a %s ...\" samples: before %5.1f %%, after %5.1f %%",
                kConceptColor, kTrigger, 100 * before_m.share, 100 * after_m.share);
  std::cout << line << std::endl;
  std::snprintf(line, sizeof(line),
                "[demo] red pixels in \"a red circle ...\" (what the base knew): before %5.1f %%, after %5.1f %%",
                100 * before_m.control, 100 * after_m.control);
  std::cout << line << std::endl;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  nlohmann::json report = {{"trigger", kTrigger},
                           {"concept_color", kConceptColor},
                           {"concept_share_before", before_m.share},
                           {"concept_share_after", after_m.share},
                           {"control_share_before", before_m.control},
                           {"control_share_after", after_m.control},
                           {"lora", lora.string()},
                           {"steps", o.steps},
                           {"seconds", seconds}};
  write_file_atomic((out / "demo-report.json").string(), report.dump(2) + "\n");

  std::cout << "\n[demo] outputs:\n";
  std::cout << "  concept dataset  " << concept_data.folder.string() << "\n";
  std::cout << "  LoRA             " << lora.string() << "\n";
  std::cout << "  run folder       " << lora_dir.string() << " (state/, samples/, logs/, metrics.jsonl, config.toml)\n";
  for (const auto& f : before_m.files) std::cout << "  before           " << f.string() << "\n";
  for (const auto& f : after_m.files) std::cout << "  after            " << f.string() << "\n";
  std::cout << "  report           " << (out / "demo-report.json").string() << "\n";
  std::snprintf(line, sizeof(line), "[demo] done in %.0f s: the %s share went from %.1f %% to %.1f %%", seconds,
                kConceptColor, 100 * before_m.share, 100 * after_m.share);
  std::cout << line << std::endl;
  return 0;
}

// Pixels [B, 3, 32, 32] in [-1, 1]: random 32 x 32 crops of B random 64 x 64 scenes (any shape, any
// colour). The autoencoder is convolutional, so it learns the demo's pictures from crops at a quarter of
// the cost, as image autoencoders are usually trained.
at::Tensor random_scene_batch(uint64_t seed, int64_t step, int64_t batch) {
  constexpr int kCrop = 32;
  data::SceneChoices choices;
  choices.shapes = data::shape_names();
  choices.fills = {"random", "red", "green", "blue", "yellow", "orange", "magenta", "cyan", "white", "black"};
  choices.backgrounds = {"random", "white", "black", "gray"};
  choices.min_radius = 0.12;
  choices.max_radius = 0.45;
  at::Tensor out = at::empty({batch, kCrop, kCrop, 3}, at::kByte);
  for (int64_t i = 0; i < batch; ++i) {
    data::DataRng rng = data::DataRng::derive({seed, 0xae, static_cast<uint64_t>(step), static_cast<uint64_t>(i)});
    const data::Image image = data::render_scene(data::random_scene(rng, choices).scene, kImageSize, kImageSize);
    const int left = static_cast<int>(rng.below(kImageSize - kCrop + 1));
    const int top = static_cast<int>(rng.below(kImageSize - kCrop + 1));
    const data::Image crop = data::crop_image(image, left, top, kCrop, kCrop);
    std::memcpy(out[i].data_ptr(), crop.pixels.data(), crop.pixels.size());
  }
  return out.permute({0, 3, 1, 2}).to(at::kFloat).div(127.5).sub(1.0).contiguous();
}

int build_assets(const DemoSettings& o) {
  const fs::path dest = fs::absolute(o.build_assets);
  const fs::path work = fs::absolute(o.work.empty() ? (dest / "work").string() : o.work);
  const fs::path init = work / "init", models = work / "models";
  fs::create_directories(models);

  step_banner(1, 4, "a randomly initialised model set of the demo's sizes");
  for (const auto& path : models::write_tiny_model_set(init.string(), false, o.seed, models::TinyPreset::demo)) {
    std::cout << "[demo] wrote " << path << std::endl;
  }

  step_banner(2, 4, "the autoencoder, trained on random shapes of random colours");
  {
    models::LoadedAe loaded = models::load_ae((init / "ae.safetensors").string(), {});
    train::AeTrainingOptions options;
    options.steps = o.ae_steps;
    options.seed = o.seed;
    options.log_every = 250;
    options.warmup_steps = 100;
    options.learning_rate = 1.5e-3;
    const train::AeTrainingResult r = train::train_autoencoder(
        *loaded.model, [&](int64_t step) { return random_scene_batch(o.seed, step, 8); }, options);
    std::cout << "[demo] autoencoder: L1 " << r.first_loss << " -> " << r.last_loss << ", scaled latents mean "
              << r.latent_mean << ", std " << r.latent_std << std::endl;
    models::save_module_weights(*loaded.model, (models / "ae.safetensors").string(), at::kFloat, kDemoMetadata);
  }
  for (const char* name : {"clip_l.safetensors", "t5xxl_fp16.safetensors"}) {
    fs::copy_file(init / name, models / name, fs::copy_options::overwrite_existing);
  }

  step_banner(3, 4, "the transformer, trained from scratch on captioned shapes (full fine-tuning)");
  data::ShapesDataset base;
  base.folder = work / "base-data";
  base.count = static_cast<int>(o.base_images);
  base.width = base.height = kImageSize;
  base.seed = o.seed;
  base.choices = base_choices();
  data::write_shapes_dataset(base);
  const fs::path run = work / "base-run";
  run_fluxtrain({"train", "--device", o.compute.device, "--network-type", "none", "--model",
                 (init / "flux1-dev.safetensors").string(), "--ae", (models / "ae.safetensors").string(), "--clip-l",
                 (models / "clip_l.safetensors").string(), "--t5xxl", (models / "t5xxl_fp16.safetensors").string()},
                {{"DATASET_NAME", base.folder.string()},
                 {"OUTPUT_PATH", run.string()},
                 {"PARAMS_OUTPUT_NAME", "flux1-dev"},
                 {"PARAMS_RESOLUTION", std::to_string(kImageSize)},
                 {"PARAMS_TRAIN_BATCH_SIZE", "8"},
                 {"PARAMS_OPTIMIZER_TYPE", "AdamW"},
                 {"PARAMS_LEARNING_RATE", "1e-3"},
                 {"PARAMS_LR_SCHEDULER", "cosine"},
                 {"PARAMS_LR_WARMUP_STEPS", std::to_string(std::min<int64_t>(100, o.base_steps / 10))},
                 {"PARAMS_MAX_TRAIN_STEPS", std::to_string(o.base_steps)},
                 {"PARAMS_SAVE_EVERY_N_STEPS", "500"},
                 {"PARAMS_T5XXL_MAX_TOKEN_LENGTH", "16"},
                 {"PARAMS_GRADIENT_CHECKPOINTING", "false"},
                 {"PARAMS_LOG_EVERY_SECONDS", "30"},
                 {"PARAMS_SEED", std::to_string(o.seed)}});

  step_banner(4, 4, "the files of assets/demo");
  fs::create_directories(dest);
  {
    models::LoadedFlux flux = models::load_flux((run / "flux1-dev.safetensors").string(), {});
    models::save_module_weights(*flux.model, (dest / "flux1-dev.safetensors").string(), at::kBFloat16, kDemoMetadata);
  }
  for (const char* name : {"ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"}) {
    fs::copy_file(models / name, dest / name, fs::copy_options::overwrite_existing);
  }
  uintmax_t total = 0;
  for (const char* name : {"flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"}) {
    total += fs::file_size(dest / name);
    std::cout << "[demo] " << (dest / name).string() << " ("
              << format_bytes(static_cast<double>(fs::file_size(dest / name))) << ")" << std::endl;
  }
  std::cout << "[demo] done: " << format_bytes(static_cast<double>(total)) << " in " << dest.string()
            << " (the work folder " << work.string() << " can be deleted)" << std::endl;
  return 0;
}

}  // namespace

Command add_demo_command(CLI::App& app) {
  return add_table_command(app, command_info("demo"), [](const ResolvedConfig& config) {
    const auto o = config.bind<DemoSettings>();
    return o.build_assets.empty() ? run_demo(o) : build_assets(o);
  });
}

}  // namespace fluxtrain::app
