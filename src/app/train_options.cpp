// The train option table: every option of `fluxtrain train` / `cache` / `config`, where its value goes
// (TrainSettings), its resume rule and its LoRA metadata key. Cross-option checks: train_option_checks.cpp.
#include "app/train_options.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>

#include "app/option_builder.h"
#include "app/train_option_parts.h"
#include "core/error.h"
#include "data/resolutions.h"
#include "optim/args.h"
#include "optim/schedule.h"

namespace fluxtrain::app {
namespace {

using O = optim::OptimizerSettings;
using Sched = optim::ScheduleOptions;
using Step = train::StepSettings;
using Obj = train::ObjectiveOptions;
using Ckpt = train::CheckpointSettings;

// ---- defaults that depend on other options (OptionSpec::default_rule)

const std::string& optimizer_of(const ResolvedValues& v) { return std::get<std::string>(v.at("optimizer_type").value); }

// The seed's optimizer settings are Prodigy's: another optimizer keeps its own defaults, and a key also
// given in optimizer_args is left to it.
RuleResult prodigy_only(const ResolvedValues& v, const std::string& key) {
  if (optimizer_of(v) != "Prodigy") return std::pair{OptionValue{}, "the seed's value is Prodigy's, not " + optimizer_of(v) + "'s"};
  const OptionValue& args = v.at("optimizer_args").value;
  if (!key.empty() && std::holds_alternative<std::string>(args)) {
    for (const auto& [k, value] : optim::split_optimizer_args(std::get<std::string>(args)))
      if (k == key) return std::pair{OptionValue{}, key + "= is in optimizer_args"};
  }
  return std::nullopt;
}

std::string check_resolution(const OptionValue& v) {
  std::string problem;
  data::parse_resolution_items(std::get<std::vector<std::string>>(v), 64, 8192, problem);
  return problem;
}

std::string check_batch_size(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s == "auto") return "";
  int64_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end != s.data() + s.size()) return "neither a whole number nor auto";
  if (n < 1 || n > 100000) return "out of range";
  return "";
}


std::string check_file_name(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s.find_first_of("/\\") != std::string::npos || s == "." || s == "..") return "not a plain file name";
  return "";
}

std::string check_extension(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s.size() < 2 || s[0] != '.' || s.find_first_of("/\\") != std::string::npos) return "not a file extension";
  return "";
}

std::string check_optimizer_args(const OptionValue& v) {
  try {
    optim::split_optimizer_args(std::get<std::string>(v));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string check_warmup(const OptionValue& v) {
  double x = std::get<double>(v);
  if (x > 0 && x < 1) return "";
  if (std::floor(x) == x) return "";
  return "neither a whole number of steps nor a fraction below 1";
}

std::vector<OptionSpec> train_specs() {
  const std::string p0 = "0", p1 = "1";
  std::vector<OptionSpec> specs;
  // --- model files
  for (const auto& o : model_file_options("models")) specs.push_back(lift(&S::models, o));
  specs.push_back(Opt<S>("t5xxl_max_token_length", kInt, "models", "",
                         "T5 tokens per caption; unset: 512 for dev, 256 for schnell (as kohya).")
                      .min(1)
                      .max(512)
                      .to(&S::t5_max_length));
  specs.push_back(Opt<S>("apply_t5_attn_mask", kBool, "models", "false",
                         "Mask the padding T5 tokens in every attention (kohya apply_t5_attn_mask).")
                      .metadata("ss_apply_t5_attn_mask")
                      .set([](S& s, const bool& v) {
                        s.t5_attn_mask = v;
                        s.training.step.apply_t5_mask = v;
                      }));

  std::vector<Opt<S>> rest = {
      // --- dataset
      Opt<S>("dataset_name", kString, "dataset", "",
             "Where the images come from: owner/name (the zip at DATASET_HOST/owner/name, Kaggle's download API, as "
             "the seed's container; else the Hugging Face Hub), kaggle:owner/name, hf:owner/name, a URL of an archive, "
             "or a local folder.")
          .env("DATASET_NAME")
          .url_secrets()
          .safe_on_resume()
          .to(&S::dataset_name),
      Opt<S>("dataset_split", kString, "dataset", "train",
             "The split of a Hub-format dataset (Parquet files, or an imagefolder with metadata.jsonl/.csv) to train "
             "on: train, validation, test or a split's own name (docs/data.md).")
          .safe_on_resume()
          .to(&S::hub_formats, &data::HubFormatOptions::split),
      Opt<S>("dataset_config_name", kString, "dataset", "",
             "The config (subset) of a Hub-format dataset with several, e.g. the folder of "
             "<config>/train-00000-of-00001.parquet; unset: its only one.")
          .safe_on_resume()
          .to(&S::hub_formats, &data::HubFormatOptions::config_name),
      Opt<S>("caption_column", kString, "dataset", "",
             "The column of a Hub-format dataset that holds the captions; unset: the first text column named text, "
             "caption, prompt, description, alt_text or title, else its only text column.")
          .safe_on_resume()
          .to(&S::hub_formats, &data::HubFormatOptions::caption_column),
      Opt<S>("dataset_config", kPath, "dataset", "",
             "kohya's dataset config (.toml or .json: [general], [[datasets]], [[datasets.subsets]]).")
          .env("DATASET_CONFIG")
          .path(PathCheck::file)
          .to(&S::dataset_config),
      Opt<S>("resolution", kList, "dataset", "",
             "Training resolution, one size or width,height, for a dataset without a config (and where a config "
             "sets none); several sizes (\"512,768,1024\" or \"512x512,1280x768\") train the same images at each "
             "(multi-resolution). Unset: 1024.")
          .check(check_resolution)
          .allowed("sides in [64, 8192]: \"1024\", \"1280,768\" (width,height), \"512,768,1024\" or "
                   "\"512x512,1280x768\" (several sizes)")
          .set([](S& s, const std::vector<std::string>& r, const std::string& described) {
            std::string problem;
            s.dataset_fallbacks.resolutions = data::parse_resolution_items(r, 64, 8192, problem);
            s.dataset_fallbacks.resolution_origin = described;
          }),
      Opt<S>("train_batch_size", kString, "dataset", "",
             "Images per batch, for every dataset whose config sets none; `auto`: the largest batch the device's "
             "memory holds (the memory planner, `fluxtrain plan`); unset: 1.")
          .alias("PARAMS_BATCH_SIZE")
          .per_rank()
          .check(check_batch_size)
          .allowed("an integer >= 1, or auto")
          .set([](S& s, const std::string& v, const std::string& described) {
            s.dataset_fallbacks.batch_size = v == "auto" ? data::kAutoBatchSize : std::stoi(v);
            s.dataset_fallbacks.batch_size_origin = described;
          }),
      Opt<S>("caption_extension", kString, "dataset", "",
             "Extension of the caption files, for every subset whose dataset config file sets none; unset: .txt "
             "for a folder without a config, kohya's .caption for a config.")
          .check(check_extension)
          .allowed("an extension starting with '.' (\".txt\", \".caption\")")
          .set([](S& s, const std::string& v, const std::string& described) {
            s.dataset_fallbacks.caption_extension = v;
            s.dataset_fallbacks.caption_extension_origin = described;
          }),
      Opt<S>("default_caption", kString, "dataset", "",
             "Caption of the images that have none (no caption file, an empty one, or a label file such as YOLO "
             "numbers) in subsets without class_tokens; a dataset config's default_caption wins; unset: the empty "
             "caption (ai-toolkit's default_caption).")
          .set([](S& s, const std::string& v, const std::string& described) {
            s.dataset_fallbacks.default_caption = v;
            s.dataset_fallbacks.default_caption_origin = described;
          }),
      Opt<S>("num_repeats", kInt, "dataset", "",
             "Repeats of each image per epoch, for every subset whose dataset config file sets none (a kohya "
             "N_name folder's count wins); unset: 1.")
          .min(1)
          .set([](S& s, const int64_t& v, const std::string& described) {
            s.dataset_fallbacks.num_repeats = static_cast<int>(v);
            s.dataset_fallbacks.num_repeats_origin = described;
          }),
      Opt<S>("alpha_mask", kBool, "dataset", "",
             "The images' alpha is their loss mask, for every subset whose dataset config sets no alpha_mask (kohya's "
             "--alpha_mask); unset: true with masked_loss, else false.")
          .set([](S& s, const bool& v, const std::string& described) {
            s.dataset_fallbacks.alpha_mask = v;
            s.dataset_fallbacks.alpha_mask_origin = described;
          }),
      Opt<S>("masked_loss", kBool, "dataset", "false",
             "Weight the loss by a mask: the images' alpha (alpha_mask, the default here) or kohya's mask pictures "
             "(a subset's conditioning_data_dir, red channel); masked-out pixels teach nothing.")
          .metadata("ss_masked_loss")
          .set([](S& s, const bool& v, const std::string& described) {
            s.dataset_fallbacks.masked_loss = v;
            s.dataset_fallbacks.masked_loss_origin = described;
          }),

      // --- output, saving, resume
      Opt<S>("output_path", kPath, "output", "output",
             "Folder of the run: LoRA files, training states, samples, metrics, log and the resolved config.toml.")
          .env("OUTPUT_PATH")
          .safe_on_resume()
          .to(&S::output_path),
      Opt<S>("output_name", kString, "output", "flux-lora",
             "Base name of the LoRA files: NAME.safetensors, NAME-step00000500.safetensors, NAME-000002.safetensors.")
          .alias("OUTPUT_NAME")  // the seed's train-flux.sh reads OUTPUT_NAME
          .check(check_file_name)
          .allowed("a file name without folders")
          .to(&S::training, &T::output_name),
      Opt<S>("save_every_n_steps", kInt, "output", "100",
             "Save the LoRA (and a state) every N steps; 0 = only at the end.")
          .seed_default("train-flux.sh: PARAMS_SAVE_EVERY_N_STEPS=100 (--save_every_n_steps)", "0")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::save_every_n_steps),
      Opt<S>("save_every_n_epochs", kInt, "output", p0,
             "Save the LoRA (and a state) every N epochs; 0 = only at the end.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::save_every_n_epochs),
      Opt<S>("keep_last_n", kInt, "output", p0,
             "Keep only the newest N intermediate LoRA files (the final one is always kept); 0 = keep all.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::keep_last_n),
      Opt<S>("save_state", kBool, "output", "true",
             "Save a training state (LoRA, optimizer, schedule, random generators, data position) with each save, "
             "for exact resume.")
          .safe_on_resume()
          .to(&S::training, &T::save_state),
      Opt<S>("save_state_every_minutes", kReal, "output", "10",
             "Also save a training state (the resume point, no LoRA file) when this many minutes have passed since "
             "the last one, whatever the LoRA cadence, so a pod killed without warning (kill -9, out of memory, a "
             "lost host) loses at most that much training; fractions allowed; 0 = off.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::save_state_every_minutes),
      Opt<S>("stop_grace_seconds", kReal, "output", "5",
             "The seconds between SIGTERM and SIGKILL the program plans for (RunPod gives a Spot pod 5): a stop "
             "signal ends any phase at its next poll point and exits 0; in training the step in progress and a "
             "save in progress finish and a state is written. A warning says when a step plus a state takes "
             "longer (then the timer states bound what a SIGKILL loses).")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::stop_grace_seconds),
      Opt<S>("keep_last_n_states", kInt, "output", "2", "Keep only the newest N complete training states.")
          .min(1)
          .safe_on_resume()
          .to(&S::training, &T::keep_last_n_states),
      Opt<S>("save_precision", kChoice, "output", "bf16", "Data type of the saved LoRA weights.")
          .seed_default("train-flux.sh: --save_precision bf16", "(none: fp32)")
          .choices_of<lora::SavePrecision>()
          .choice_alias("float", "fp32")
          .choice_alias("float32", "fp32")
          .choice_alias("bfloat16", "bf16")
          .choice_alias("float16", "fp16")
          .to(&S::training, &T::save_precision),
      Opt<S>("resume_from", kPath, "output", "", "A training state folder to continue from, exactly where it stopped.")
          .path(PathCheck::exists)
          .safe_on_resume()
          .to(&S::resume_from),
      Opt<S>("auto_resume", kBool, "output", "true",
             "When resume_from is unset, continue from the newest complete state in output_path (a restarted pod "
             "resumes).")
          .safe_on_resume()
          .to(&S::auto_resume),
      Opt<S>("network_weights", kPath, "output", "",
             "A LoRA file to start from instead of a fresh LoRA (the optimizer starts fresh): kohya, diffusers/PEFT "
             "or ComfyUI layout; its modules must fit the network (network_dim, split_qkv, blocks), or set "
             "dim_from_weights.")
          .path(PathCheck::file)
          .to(&S::training, &T::network_weights),
      Opt<S>("dim_from_weights", kBool, "output", "false",
             "Build the network from network_weights (kohya's dim_from_weights): its modules, each module's rank "
             "and alpha, instead of network_dim / network_alpha / the block selections.")
          .to(&S::training, &T::dim_from_weights),

  };
  for (const auto& o : rest) specs.push_back(o);
  for (auto& o : network_specs()) specs.push_back(std::move(o));

  std::vector<Opt<S>> after_network = {
      // --- optimizer
      Opt<S>("optimizer_type", kChoice, "optimizer", "Prodigy", "The optimizer, by kohya's name.")
          .seed_default("train-flux.sh: --optimizer_type prodigy", "AdamW")
          .env("PARAMS_OPTIMIZER_TYPE")
          .choices(optim::optimizer_types())
          .choice_alias("prodigyopt.Prodigy", "Prodigy")
          .choice_alias("bitsandbytes.optim.AdamW8bit", "AdamW8bit")
          .choice_alias("adamw_8bit", "AdamW8bit")
          .to(&S::training, &T::optimizer, &O::type),
      Opt<S>("optimizer_args", kString, "optimizer",
             "decouple=True betas=0.9,0.999 use_bias_correction=False safeguard_warmup=False",
             "kohya's optimizer arguments, \"key=value key=value\" (e.g. \"decouple=True use_bias_correction=True "
             "safeguard_warmup=True\"); a TOML file may give a list of strings. Given, they replace the default "
             "as a whole.")
          .seed_default("train-flux.sh: Prodigy's --optimizer_args", "(none)")
          .default_rule("unset for another optimizer_type",
                        [](const ResolvedValues& v) { return prodigy_only(v, ""); })
          .check(check_optimizer_args)
          .join_arrays(" ")
          .allowed("key=value pairs separated by spaces")
          .to(&S::training, &T::optimizer, &O::args),
      Opt<S>("learning_rate", kReal, "optimizer", "1.0",
             "Learning rate (Prodigy: a multiplier of its own estimate, 1 as recommended).")
          .min(0, true)
          .metadata("ss_learning_rate")
          .metadata("ss_unet_lr")
          .to(&S::training, &T::optimizer, &O::learning_rate),
      Opt<S>("d_coef", kReal, "optimizer", "2",
             "Prodigy's d_coef (scales its step size estimate); unset: Prodigy's 1.0. Prodigy only.")
          .seed_default("train-flux.sh: PARAMS_D_COEF=2 (d_coef= in --optimizer_args)", "(none: Prodigy's 1.0)")
          .default_rule("unset for another optimizer_type or when optimizer_args has d_coef=",
                        [](const ResolvedValues& v) { return prodigy_only(v, "d_coef"); })
          .min(0, true)
          .to(&S::training, &T::optimizer, &O::d_coef),
      Opt<S>("weight_decay", kReal, "optimizer", "0.1",
             "Weight decay; unset: the optimizer's own default (AdamW 0.01, others 0).")
          .seed_default("train-flux.sh: PARAMS_WEIGHT_DECAY=0.1 (weight_decay= in --optimizer_args)",
                        "(none: the optimizer's own)")
          .default_rule("unset for another optimizer_type or when optimizer_args has weight_decay=",
                        [](const ResolvedValues& v) { return prodigy_only(v, "weight_decay"); })
          .min(0)
          .to(&S::training, &T::optimizer, &O::weight_decay),
      Opt<S>("max_grad_norm", kReal, "optimizer", "1.0", "Clip the gradient norm to this; 0 = no clipping.")
          .min(0)
          .metadata("ss_max_grad_norm")
          .to(&S::training, &T::step, &Step::max_grad_norm),
      Opt<S>("max_nonfinite_steps", kInt, "optimizer", "10",
             "A step whose loss or gradient norm is NaN or infinite is skipped (no optimizer step; counted in the "
             "metrics and the progress line); this many in a row stop the run with an error, its states "
             "(never one with non-finite weights) kept; 0 = never stop.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::max_nonfinite_steps),
      Opt<S>("loraplus_lr_ratio", kReal, "optimizer", "",
             "LoRA+: learning-rate ratio of the up matrices to the down matrices; unset: 1.")
          .min(0, true)
          .to(&S::training, &T::optimizer, &O::loraplus_lr_ratio),

      // --- schedule
      Opt<S>("lr_scheduler", kChoice, "scheduler", "cosine", "Learning-rate schedule (diffusers' formulas, as kohya).")
          .env("PARAMS_LEARNING_SCHEDULER")
          .alias("PARAMS_LR_SCHEDULER")
          .choices(optim::schedule_names())
          .metadata("ss_lr_scheduler")
          .to(&S::training, &T::schedule, &Sched::name),
      Opt<S>("lr_warmup_steps", kReal, "scheduler", p0,
             "Warmup: a number of steps, or a fraction of all steps when below 1.")
          .min(0)
          .check(check_warmup)
          .allowed("a whole number of steps >= 0, or a fraction in [0, 1)")
          .metadata("ss_lr_warmup_steps")
          .to(&S::training, &T::schedule, &Sched::warmup),
      Opt<S>("lr_scheduler_num_cycles", kInt, "scheduler", p1, "Hard restarts of cosine_with_restarts.")
          .env("PARAMS_NUM_CYCLES")
          .seed_default("train-flux.sh: PARAMS_NUM_CYCLES = PARAMS_MAX_EPOCHS / 3", "1")
          .default_rule("max_train_epochs / 3 (rounded down, at least 1) when max_train_epochs is set",
                        [](const ResolvedValues& v) -> RuleResult {
                          const OptionValue& epochs = v.at("max_train_epochs").value;
                          if (!std::holds_alternative<int64_t>(epochs)) return std::nullopt;
                          return std::pair{OptionValue{std::max<int64_t>(1, std::get<int64_t>(epochs) / 3)},
                                           std::string("max_train_epochs / 3")};
                        })
          .alias("PARAMS_LR_SCHEDULER_NUM_CYCLES")
          .min(1)
          .to(&S::training, &T::schedule, &Sched::num_cycles),
      Opt<S>("lr_scheduler_power", kReal, "scheduler", "1.0", "Power of the polynomial schedule.")
          .min(0, true)
          .to(&S::training, &T::schedule, &Sched::power),
      Opt<S>("lr_step_rules", kString, "scheduler", "",
             "Rules of piecewise_constant: \"multiplier:step,...,final\" (e.g. \"1:500,0.5:1000,0.1\").")
          .to(&S::training, &T::schedule, &Sched::step_rules),

      // --- training length and batches
      Opt<S>("max_train_epochs", kInt, "training", "5",
             "Train this many epochs; unset when max_train_steps is given (both given: an error).")
          .seed_default("train-flux.sh: PARAMS_MAX_EPOCHS=5 (--max_train_epochs)", "(none)")
          .default_rule("unset when max_train_steps is given",
                        [](const ResolvedValues& v) -> RuleResult {
                          if (std::holds_alternative<std::monostate>(v.at("max_train_steps").value)) return std::nullopt;
                          return std::pair{OptionValue{}, std::string("max_train_steps is given")};
                        })
          .env("PARAMS_MAX_EPOCHS")
          .alias("PARAMS_MAX_TRAIN_EPOCHS")
          .min(1)
          .safe_on_resume()
          .to(&S::training, &T::max_epochs),
      Opt<S>("max_train_steps", kInt, "training", "",
             "Train this many optimizer steps instead of max_train_epochs (kohya's default: 1600).")
          .min(1)
          .safe_on_resume()
          .to(&S::training, &T::max_steps),
      Opt<S>("gradient_accumulation_steps", kInt, "training", p1,
             "Batches whose gradients are summed per optimizer step.")
          .min(1)
          .metadata("ss_gradient_accumulation_steps")
          .to(&S::training, &T::gradient_accumulation),
      Opt<S>("seed", kInt, "training", "42",
             "Seed of every random draw (data order, noise, timesteps, dropout, LoRA init).")
          .seed_default("train-flux.sh: --seed 42", "(none: random)")
          .min(0)
          .metadata("ss_seed")
          .to(&S::training, &T::seed),

      // --- objective
      Opt<S>("timestep_sampling", kChoice, "objective", "sigmoid", "How sigma is drawn per sample.")
          .seed_default("train-flux.sh: --timestep_sampling sigmoid", "sigma")
          .choices_of<train::TimestepSampling>()
          .metadata("ss_timestep_sampling")
          .to(&S::training, &T::step, &Step::objective, &Obj::sampling),
      Opt<S>("sigmoid_scale", kReal, "objective", "1.0",
             "Scale of the normal draw before the sigmoid (sigmoid, shift, flux_shift).")
          .min(0, true)
          .metadata("ss_sigmoid_scale")
          .to(&S::training, &T::step, &Step::objective, &Obj::sigmoid_scale),
      Opt<S>("discrete_flow_shift", kReal, "objective", "3.1582",
             "The shift s of timestep_sampling shift and sigma (3.1582 is Flux's at 1024x1024).")
          .seed_default("train-flux.sh: --discrete_flow_shift 3.1582", "3.0")
          .min(0, true)
          .metadata("ss_discrete_flow_shift")
          .to(&S::training, &T::step, &Step::objective, &Obj::discrete_flow_shift),
      Opt<S>("weighting_scheme", kChoice, "objective", "none",
             "SD3's weighting scheme: logit_normal and mode shape timestep_sampling sigma's draw; sigma_sqrt and cosmap "
             "weight each sample's loss (with every model_prediction_type).")
          .choices_of<train::WeightingScheme>()
          .choice_alias("uniform", "none")
          .to(&S::training, &T::step, &Step::objective, &Obj::weighting),
      Opt<S>("logit_mean", kReal, "objective", "0.0", "Mean of weighting_scheme logit_normal's normal draw.")
          .to(&S::training, &T::step, &Step::objective, &Obj::logit_mean),
      Opt<S>("logit_std", kReal, "objective", "1.0", "Deviation of weighting_scheme logit_normal's normal draw.")
          .min(0, true)
          .to(&S::training, &T::step, &Step::objective, &Obj::logit_std),
      Opt<S>("mode_scale", kReal, "objective", "1.29", "Scale of weighting_scheme mode.")
          .to(&S::training, &T::step, &Step::objective, &Obj::mode_scale),
      Opt<S>("model_prediction_type", kChoice, "objective", "raw",
             "How the model output is compared with the velocity target: raw as it is, additive plus the noisy "
             "input, sigma_scaled the noisy input minus sigma times it (kohya's definitions). raw is what Flux "
             "predicts; kohya's Flux default sigma_scaled compares an x0 estimate with the velocity target.")
          .choices_of<train::PredictionType>()
          .metadata("ss_model_prediction_type")
          .to(&S::training, &T::step, &Step::objective, &Obj::prediction),
      Opt<S>("guidance_scale", kReal, "objective", "1.0", "The guidance value the dev model gets while training.")
          .seed_default("train-flux.sh: --guidance_scale 1.0", "3.5")
          .min(0)
          .metadata("ss_guidance_scale")
          .to(&S::training, &T::step, &Step::objective, &Obj::guidance_scale),
      Opt<S>("loss_type", kChoice, "objective", "l2", "The loss.")
          .seed_default("train-flux.sh: --loss_type l2", "l2")
          .choices_of<train::LossType>()
          .metadata("ss_loss_type")
          .to(&S::training, &T::step, &Step::objective, &Obj::loss),
      Opt<S>("huber_c", kReal, "objective", "0.1", "The huber / smooth_l1 threshold.")
          .min(0, true)
          .to(&S::training, &T::step, &Step::objective, &Obj::huber_c),
      Opt<S>("noise_offset", kReal, "objective", "0.1",
             "Offset noise: adds offset * N(0,1) per sample and channel (really applied; kohya's Flux trainer "
             "ignores it, so the seed's runs had none).")
          .seed_default("train-flux.sh: PARAMS_NOISE_OFFSET=0.1 (--noise_offset)", "0")
          .min(0)
          .max(1)
          .metadata("ss_noise_offset")
          .to(&S::training, &T::step, &Step::objective, &Obj::noise_offset),

      // --- memory
      Opt<S>("gradient_checkpointing", kBool, "memory", "true",
             "Recompute each block in the backward pass instead of keeping its activations (needed for the 12B model "
             "on most GPUs).")
          .memory_only()
          .metadata("ss_gradient_checkpointing")
          .to(&S::training, &T::step, &Step::checkpointing, &Ckpt::enabled),
      Opt<S>("gradient_checkpointing_interval", kInt, "memory", "1",
             "With gradient_checkpointing: checkpoint every Nth block only (1: all but the last); the others keep "
             "their activations, which is faster and needs more memory.")
          .min(1)
          .memory_only()
          .to(&S::training, &T::step, &Step::checkpointing, &Ckpt::interval),
      Opt<S>("checkpoint_keep_attention", kBool, "memory", "true",
             "With gradient_checkpointing: keep each checkpointed block's attention output (one hidden-size "
             "activation per token and block) so the recomputation skips attention; false saves that memory.")
          .memory_only()
          .to(&S::training, &T::step, &Step::checkpointing, &Ckpt::keep_attention),
      Opt<S>("checkpoint_keep_products", kChoice, "memory", "outputs",
             "With gradient_checkpointing: which frozen matrix products each checkpointed block keeps so the "
             "recomputation need not multiply again. outputs: attention projection, MLP out and linear2 (1 to 2 "
             "hidden-size activations per token and block, 5 of every 12 recomputed multiplications saved); all: "
             "also qkv, MLP in and linear1 (7 more, the recomputation then multiplies only LoRA weights); none: "
             "recompute them all (least memory); auto: per block, `all` while the memory planner's budget allows, "
             "then outputs, then none (printed at start).")
          .choices({"none", "outputs", "all", "auto"})
          .memory_only()
          .set([](S& s, const std::string& v) {
            s.keep_products_auto = v == "auto";
            if (!s.keep_products_auto) s.training.step.checkpointing.keep_products = parse_enum<models::KeepProducts>(v, "checkpoint_keep_products");
          }),
      Opt<S>("offload_checkpoints", kBool, "memory", "false",
             "Keep the checkpointed block inputs in pinned host memory (needs gradient_checkpointing).")
          .memory_only()
          .to(&S::training, &T::step, &Step::checkpointing, &Ckpt::offload_inputs),
      Opt<S>("blocks_to_swap", kString, "memory", "0",
             "Keep the weights of the last N transformer blocks (19 double + 38 single counted together, as kohya "
             "counts them) in pinned host memory and copy each to the GPU only while it runs, the next one ahead "
             "on a side stream (like kohya's blocks_to_swap): saves those blocks' weight memory but two, costs a "
             "host-to-GPU copy of them in the forward and again in the backward pass of every step. At most all "
             "blocks but the first; the trained LoRA is the same bit for bit. LoRA training only. auto: the "
             "fewest blocks the memory planner needs when nothing else fits (0 otherwise; printed at start).")
          .check(count_or_auto(0, "a block count"))
          .allowed("a block count >= 0, or auto")
          .memory_only()
          .set([](S& s, const std::string& v) {
            s.blocks_to_swap_auto = v == "auto";
            s.training.blocks_to_swap = s.blocks_to_swap_auto ? 0 : std::stoll(v);
          }),
      Opt<S>("fp8_base", kBool, "memory", "true",
             "Store the frozen transformer's block weights in fp8 (e4m3fn), about half the memory of bf16.")
          .seed_default("train-flux.sh: --fp8_base", "false")
          .default_rule("false with network_type none (full fine-tuning trains the weights in fp32)",
                        [](const ResolvedValues& v) -> RuleResult {
                          if (std::get<std::string>(v.at("network_type").value) != "none") return std::nullopt;
                          return std::pair{OptionValue{false}, std::string("network_type is none")};
                        })
          .metadata("ss_fp8_base")
          .to(&S::training, &T::fp8_base),
      Opt<S>("fp8_compute", kChoice, "memory", "auto",
             "With fp8_base: how the fp8 weights multiply. off: upcast to the compute dtype on every call (works "
             "everywhere); tensorwise / rowwise: quantise the input to fp8 too (one scale per tensor / per token) "
             "and multiply on the GPU's fp8 tensor cores (an NVIDIA GPU of compute capability 8.9+: L4, L40, RTX "
             "4090, H100, H200; rowwise needs bf16). auto: rowwise where the device can, else tensorwise, else off "
             "(the CPU: off). An explicit mode the device cannot run is an error; the effect on the losses is in "
             "docs/performance.md.")
          .choices_of<Fp8Compute>()
          .safe_on_resume()
          .set([](S& s, const std::string& v, const std::string& described) {
            s.fp8_compute = parse_enum<Fp8Compute>(v, described);
            s.fp8_compute_origin = described;
          }),
      Opt<S>("vram", kReal, "memory", "",
             "GB of device memory the memory planner plans for (batch_size auto, checkpoint_keep_products auto, "
             "blocks_to_swap auto, `fluxtrain plan`); unset: the device's free memory at start (on the CPU: "
             "FLUXTRAIN_CPU_MEMORY_LIMIT_MB, else the available memory).")
          .min(0, true)
          .memory_only()
          .to(&S::vram_gb),
      Opt<S>("memory_margin", kReal, "memory", "0.05",
             "Share of the planned device memory left free by the automatic choices (the allocator's "
             "fragmentation, kernels' workspaces).")
          .min(0)
          .max(0.9)
          .memory_only()
          .to(&S::memory_margin),
      Opt<S>("cache_dir", kPath, "memory", "",
             "Folder of the latent and text-embedding caches (shareable across runs); unset: OUTPUT_PATH/cache.")
          .safe_on_resume()
          .to(&S::cache_dir),
      Opt<S>("cache_text_encoder_outputs", kBool, "memory", "true",
             "Encode every caption once into the text cache before training (kohya's option); a trained text "
             "encoder (network_train_unet_only false) must run in every step, so it is off then, and asking "
             "for both is an error.")
          .default_rule("false when a text encoder trains (network_train_unet_only false)",
                        [](const ResolvedValues& v) -> RuleResult {
                          if (std::get<bool>(v.at("network_train_unet_only").value)) return std::nullopt;
                          return std::pair{OptionValue{false}, std::string("the text encoders train")};
                        })
          .metadata("ss_cache_text_encoder_outputs")
          .to(&S::cache_text_encoder_outputs),

      // --- sampling
      Opt<S>("sample_prompts", kPath, "sampling", "",
             "Prompt file: one prompt per line in kohya's syntax (--w --h --d --s --g --n), or .toml/.json.")
          .env("SAMPLE_PROMPTS")
          .path(PathCheck::file)
          .safe_on_resume()
          .to(&S::sample_prompts),
      Opt<S>("sample_every_n_steps", kInt, "sampling", "200",
             "Generate the sample prompts every N steps (when there are prompts); 0 = never.")
          .seed_default("train-flux.sh: PARAMS_SAMPLE_EVERY_N_STEPS=200 (--sample_every_n_steps)", "0")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::sample_every_n_steps),
      Opt<S>("sample_every_n_epochs", kInt, "sampling", p0, "Generate the sample prompts every N epochs; 0 = never.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::sample_every_n_epochs),
      Opt<S>("sample_at_first", kBool, "sampling", "false", "Generate the samples once before training.")
          .safe_on_resume()
          .to(&S::training, &T::sample_at_first),

      // --- validation
      Opt<S>("validation_split", kReal, "validation", "",
             "Fraction of each subset's images held out of training for the validation loss, for every subset "
             "whose dataset config sets none (kohya's --validation_split; a subset's validation_split = 1.0 makes "
             "it a whole validation set); unset: 0, no validation.")
          .min(0)
          .max(1, true)
          .set([](S& s, const double& v, const std::string& described) {
            s.dataset_fallbacks.validation_split = v;
            s.dataset_fallbacks.validation_split_origin = described;
          }),
      Opt<S>("validate_every_n_steps", kInt, "validation", p0,
             "Compute the validation loss every N steps (besides every validate_every_n_epochs and with every "
             "saved LoRA); 0 = not by steps.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::validate_every_n_steps),
      Opt<S>("validate_every_n_epochs", kInt, "validation", p1,
             "Compute the validation loss every N epochs (kohya's default: every epoch); 0 = not by epochs.")
          .min(0)
          .safe_on_resume()
          .to(&S::training, &T::validate_every_n_epochs),

      // --- runtime
      Opt<S>("config", kPath, "runtime", "",
             "A TOML file of options (keys = option names, optionally in [group] tables).")
          .path(PathCheck::file)
          .config_file()
          .safe_on_resume(),
  };
  for (const auto& o : after_network) specs.push_back(o);
  specs.push_back(lift(&S::compute, device_option("runtime")));
  specs.push_back(lift(&S::compute, precision_option("runtime")));
  specs.push_back(Opt<S>("log_every_seconds", kReal, "runtime", "10",
                         "Seconds between progress lines when the output is not a terminal.")
                      .min(0, true)
                      .safe_on_resume()
                      .to(&S::training, &T::log_every_seconds));
  specs.push_back(Opt<S>("prefetch_batches", kInt, "runtime", "4",
                         "Batches a background thread reads from the caches (into pinned memory on CUDA) while a step "
                         "trains; 0 = read each batch in the training loop when it is needed.")
                      .min(0)
                      .max(64)
                      .memory_only()
                      .to(&S::training, &T::prefetch_batches));
  for (auto& o : distributed_specs()) specs.push_back(std::move(o));

  for (const auto& o : engine_options(kCpuCacheKnob | kSourceDateKnob)) specs.push_back(lift(&S::engine, o));
  for (const auto& o : download_options(kAllDownloadKnobs)) specs.push_back(lift(&S::downloads, o));
  for (const auto& o : monitor_options()) specs.push_back(lift(&S::monitor, o));
  for (const auto& o : publish_options()) specs.push_back(lift(&S::publish, o));
  apply_network_args(specs);
  return specs;
}

std::vector<OptionTable::Group> train_groups() {
  return {
      {"models", "Model files"},
      {"dataset", "Dataset"},
      {"output", "Output, saving and resume"},
      {"network", "LoRA network"},
      {"optimizer", "Optimizer"},
      {"scheduler", "Learning-rate schedule"},
      {"training", "Training length and batches"},
      {"ema", "EMA of the trained weights"},
      {"objective", "Objective (rectified flow)"},
      {"memory", "Memory"},
      {"sampling", "Samples during training"},
      {"validation", "Validation loss on held-out images"},
      {"runtime", "Device, precision and logging"},
      {"distributed", "Data parallelism (several GPUs, several machines)"},
      {"engine", "Memory of the CPU and reproducible files"},
      {"downloads", "Downloads"},
      {"monitor", "The live page"},
      {"publish", "Results off the pod: Hub upload and webhook"},
  };
}

}  // namespace

// A whole number >= min, or "auto": "" when fine, else `what` ("a block count") in the complaint.
std::function<std::string(const OptionValue&)> count_or_auto(int64_t min, std::string what) {
  return [min, what](const OptionValue& v) -> std::string {
    const std::string& s = std::get<std::string>(v);
    if (s == "auto") return "";
    int64_t n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || end != s.data() + s.size() || n < min) return cat("neither ", what, " >= ", min, " nor auto");
    return "";
  };
}

const OptionTable& train_options() {
  static const OptionTable table("train", "PARAMS_", train_groups(), train_specs());
  return table;
}

const OptionTable& plan_options() {
  using P = TrainSettings::PlanRequest;
  static const OptionTable table = [] {
    std::vector<OptionSpec> specs = train_specs();
    std::vector<Opt<S>> own = {
        Opt<S>("batches", kList, "plan", "1,2,4,8,12,16,24,32,40,48,56,60,64",
               "The batch sizes of the table's rows.")
            .set([](S& s, const std::vector<std::string>& items) {
              s.plan.batches.clear();
              for (const auto& item : items) s.plan.batches.push_back(std::stoll(item));
            })
            .check([](const OptionValue& v) -> std::string {
              for (const auto& item : std::get<std::vector<std::string>>(v)) {
                int64_t n = 0;
                auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
                if (ec != std::errc() || end != item.data() + item.size() || n < 1) return cat("'", item, "' is not a batch size");
              }
              return "";
            })
            .allowed("batch sizes >= 1, comma-separated"),
        Opt<S>("seconds_per_step", kReal, "plan", "",
               "Seconds per optimizer step at the planned batch (from an earlier run's log), for the ETA and cost; "
               "--calibrate measures it.")
            .flag("--step-seconds")
            .min(0, true)
            .to(&S::plan, &P::step_seconds),
        Opt<S>("price_per_hour", kReal, "plan", "", "The pod's price per hour, for the run's cost.")
            .min(0)
            .to(&S::plan, &P::price_per_hour),
        Opt<S>("json", kPath, "plan", "", "Also write the plan as JSON to this file.").to(&S::plan, &P::json),
        Opt<S>("calibrate", kBool, "plan", "false",
               "Load the model and run real training steps on random inputs of the largest bucket at the planned "
               "batch (with a text-encoder LoRA also the encoders, encoding a caption in every step): the measured "
               "step time (ETA, cost) and peak memory beside the prediction.")
            .to(&S::plan, &P::calibrate),
        Opt<S>("calibrate_steps", kInt, "plan", "2", "Steps of --calibrate (the first warms up; the others are timed).")
            .min(1)
            .max(100)
            .to(&S::plan, &P::calibrate_steps),
    };
    for (const auto& o : own) specs.push_back(o);
    std::vector<OptionTable::Group> groups = train_groups();
    groups.push_back({"plan", "The plan"});
    return OptionTable("plan", "PARAMS_", std::move(groups), specs);
  }();
  return table;
}

const char* const kTrainCommandHelp =
    "Train a Flux LoRA (the main job): options from flags, PARAMS_* / the seed's variables or --config";
const char* const kCacheCommandHelp =
    "Fetch and plan the dataset and fill the latent and text caches (the first half of train)";

}  // namespace fluxtrain::app
