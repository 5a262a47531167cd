#include "app/train_options.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "optim/args.h"
#include "optim/schedule.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

// A fluent way to write one table entry.
struct Opt {
  OptionSpec s;
  Opt(std::string name, OptionType type, std::string group, std::string default_text, std::string help) {
    s.name = std::move(name);
    s.type = type;
    s.group = std::move(group);
    s.default_text = std::move(default_text);
    s.help = std::move(help);
  }
  Opt& env(std::string var) { return s.env = std::move(var), *this; }
  Opt& alias(std::string var) { return s.env_aliases.push_back(std::move(var)), *this; }
  Opt& choices(std::vector<std::string> c) { return s.choices = std::move(c), *this; }
  Opt& choice_alias(std::string from, std::string to) {
    return s.choice_aliases.emplace_back(std::move(from), std::move(to)), *this;
  }
  Opt& min(double v, bool exclusive = false) { return s.min = v, s.min_exclusive = exclusive, *this; }
  Opt& max(double v, bool exclusive = false) { return s.max = v, s.max_exclusive = exclusive, *this; }
  Opt& path(PathCheck c) { return s.path_check = c, *this; }
  Opt& check(std::function<std::string(const OptionValue&)> f) { return s.check = std::move(f), *this; }
  Opt& allowed(std::string text) { return s.allowed = std::move(text), *this; }
  Opt& join_arrays(std::string sep) { return s.toml_array_join = std::move(sep), *this; }
  Opt& not_in_file() { return s.from_file = false, *this; }
  Opt& config_file() { return s.config_file = true, s.from_file = false, *this; }
  operator OptionSpec() const { return s; }
};

constexpr OptionType kBool = OptionType::boolean, kInt = OptionType::integer, kReal = OptionType::real,
                     kString = OptionType::string, kPath = OptionType::path, kChoice = OptionType::choice,
                     kList = OptionType::list;

std::string check_device(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s == "auto" || s == "cpu" || s == "cuda") return "";
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 &&
      std::all_of(s.begin() + 5, s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }))
    return "";
  return "not a device";
}

// "all", "none", or comma-separated indices and ranges "0,2,5-9" (the model's block count is checked
// when the network is built).
std::string check_block_selection(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s == "all" || s == "none") return "";
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    size_t dash = item.find('-');
    std::string lo_text = item.substr(0, dash), hi_text = dash == std::string::npos ? lo_text : item.substr(dash + 1);
    int64_t lo = 0, hi = 0;
    auto parse = [](const std::string& t, int64_t& out) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
      return !t.empty() && ec == std::errc() && end == t.data() + t.size() && out >= 0;
    };
    if (!parse(lo_text, lo) || !parse(hi_text, hi)) return cat("'", item, "' is not a block index or range");
    if (hi < lo) return cat("the range '", item, "' is backwards");
    if (comma == std::string::npos) return "";
    start = comma + 1;
  }
}

std::string check_resolution(const OptionValue& v) {
  const auto& items = std::get<std::vector<std::string>>(v);
  if (items.size() > 2) return "more than two sizes";
  for (const auto& item : items) {
    int64_t n = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), n);
    if (ec != std::errc() || end != item.data() + item.size()) return cat("'", item, "' is not an integer");
    if (n < 64 || n > 8192) return cat(n, " is out of range");
  }
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

OptionTable make_train_options() {
  std::vector<OptionTable::Group> groups = {
      {"models", "Model files"},
      {"dataset", "Dataset"},
      {"output", "Output, saving and resume"},
      {"network", "LoRA network"},
      {"optimizer", "Optimizer"},
      {"scheduler", "Learning-rate schedule"},
      {"training", "Training length and batches"},
      {"objective", "Objective (rectified flow)"},
      {"memory", "Memory"},
      {"sampling", "Samples during training"},
      {"runtime", "Device, precision and logging"},
  };
  const std::string p0 = "0", p1 = "1";
  std::vector<OptionSpec> specs = {
      // --- model files
      Opt("base_model", kChoice, "models", "flux-dev",
          "Which Flux.1 model is trained: dev (guidance-distilled) or schnell.")
          .env("BASE_MODEL")
          .choices({"flux-dev", "flux-schnell"})
          .choice_alias("flux", "flux-dev"),
      Opt("model_dir", kPath, "models", "",
          "Folder holding the model files under their usual names (flux1-dev.safetensors, flux_dev.safetensors or "
          "flux1-dev-fp8.safetensors; the same with flux1-schnell; ae.safetensors, clip_l.safetensors, "
          "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors); --model, --ae, --clip-l and --t5xxl override "
          "single files; `fluxtrain fetch-models` downloads them.")
          .env("MODEL_DIR")
          .path(PathCheck::directory),
      Opt("model", kPath, "models", "", "The Flux transformer (.safetensors: BFL single file, or a merged checkpoint).")
          .path(PathCheck::file),
      Opt("ae", kPath, "models", "", "The Flux autoencoder (ae.safetensors).").path(PathCheck::file),
      Opt("clip_l", kPath, "models", "", "The CLIP-L text encoder (clip_l.safetensors).").path(PathCheck::file),
      Opt("t5xxl", kPath, "models", "", "The T5-XXL text encoder (t5xxl_fp16.safetensors or an fp8 variant).")
          .path(PathCheck::file),
      Opt("t5xxl_max_token_length", kInt, "models", "",
          "T5 tokens per caption; unset: 512 for dev, 256 for schnell (as kohya).")
          .min(1)
          .max(512),
      Opt("apply_t5_attn_mask", kBool, "models", "false",
          "Mask the padding T5 tokens in every attention (kohya apply_t5_attn_mask)."),

      // --- dataset
      Opt("dataset_name", kString, "dataset", "",
          "Where the images come from: a Hugging Face dataset id, a Kaggle dataset, a URL of an archive, or a local "
          "folder.")
          .env("DATASET_NAME"),
      Opt("dataset_config", kPath, "dataset", "",
          "kohya's dataset config (.toml or .json: [general], [[datasets]], [[datasets.subsets]]).")
          .env("DATASET_CONFIG")
          .path(PathCheck::file),
      Opt("resolution", kList, "dataset", "",
          "Training resolution, one size or width,height, for a dataset without a config (and overriding it); unset: "
          "1024.")
          .check(check_resolution)
          .allowed("one or two integers in [64, 8192] (\"1024\" or \"1280,768\")"),
      Opt("train_batch_size", kInt, "dataset", "",
          "Images per batch; overrides the dataset config; unset: its batch_size, else 1.")
          .min(1),
      Opt("caption_extension", kString, "dataset", "",
          "Extension of the caption files for a dataset without a config (and overriding it); unset: .txt.")
          .check(check_extension)
          .allowed("an extension starting with '.' (\".txt\", \".caption\")"),
      Opt("num_repeats", kInt, "dataset", "",
          "Repeats of each image per epoch for a dataset without a config; unset: 1.")
          .min(1),

      // --- output, saving, resume
      Opt("output_path", kPath, "output", "output",
          "Folder of the run: LoRA files, training states, samples, metrics, log and the resolved config.toml.")
          .env("OUTPUT_PATH"),
      Opt("output_name", kString, "output", "flux-lora",
          "Base name of the LoRA files: NAME.safetensors, NAME-step00000500.safetensors, NAME-000002.safetensors.")
          .check(check_file_name)
          .allowed("a file name without folders"),
      Opt("save_every_n_steps", kInt, "output", p0, "Save the LoRA (and a state) every N steps; 0 = only at the end.")
          .min(0),
      Opt("save_every_n_epochs", kInt, "output", p0, "Save the LoRA (and a state) every N epochs; 0 = only at the end.")
          .min(0),
      Opt("keep_last_n", kInt, "output", p0,
          "Keep only the newest N intermediate LoRA files (the final one is always kept); 0 = keep all.")
          .min(0),
      Opt("save_state", kBool, "output", "true",
          "Save a training state (LoRA, optimizer, schedule, random generators, data position) with each save, for "
          "exact resume."),
      Opt("keep_last_n_states", kInt, "output", "2", "Keep only the newest N complete training states.").min(1),
      Opt("save_precision", kChoice, "output", "bf16", "Data type of the saved LoRA weights.")
          .choices({"fp32", "bf16", "fp16"})
          .choice_alias("float", "fp32")
          .choice_alias("float32", "fp32")
          .choice_alias("bfloat16", "bf16")
          .choice_alias("float16", "fp16"),
      Opt("resume_from", kPath, "output", "", "A training state folder to continue from, exactly where it stopped.")
          .path(PathCheck::exists),
      Opt("auto_resume", kBool, "output", "true",
          "When resume_from is unset, continue from the newest complete state in output_path (a restarted pod "
          "resumes)."),
      Opt("network_weights", kPath, "output", "",
          "A LoRA file (kohya format) to start from instead of a fresh LoRA (the optimizer starts fresh).")
          .path(PathCheck::file),

      // --- network
      Opt("network_type", kChoice, "network", "lora",
          "What trains: a LoRA, or `none` for full fine-tuning of every transformer weight (fp32 master "
          "weights; the result is a base checkpoint).")
          .choices({"lora", "none"}),
      Opt("network_dim", kInt, "network", "16", "LoRA rank.").min(1).max(4096),
      Opt("network_alpha", kReal, "network", "16", "LoRA alpha: the update is scaled by alpha / rank.").min(0, true),
      Opt("train_blocks", kChoice, "network", "all", "Which transformer blocks get adapters.")
          .choices({"all", "single", "double"}),
      Opt("train_double_block_indices", kString, "network", "all",
          "Double blocks with adapters: all, none or \"0,2,5-9\".")
          .check(check_block_selection)
          .allowed("all, none, or indices and ranges (\"0,2,5-9\")"),
      Opt("train_single_block_indices", kString, "network", "all",
          "Single blocks with adapters: all, none or \"0,2,5-9\".")
          .check(check_block_selection)
          .allowed("all, none, or indices and ranges (\"0,2,5-9\")"),
      Opt("split_qkv", kBool, "network", "false",
          "Separate adapters for q, k and v (and the single blocks' MLP input); saved fused at the trained strength."),
      Opt("network_dropout", kReal, "network", p0, "Dropout of the LoRA's hidden units (kohya network_dropout).")
          .min(0)
          .max(1, true),
      Opt("rank_dropout", kReal, "network", p0, "Dropout of whole ranks per sample (kohya rank_dropout).")
          .min(0)
          .max(1, true),
      Opt("module_dropout", kReal, "network", p0,
          "Probability of skipping a whole LoRA module per step (kohya module_dropout).")
          .min(0)
          .max(1, true),
      Opt("img_attn_dim", kInt, "network", "",
          "Rank of the double blocks' image attention adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("img_mlp_dim", kInt, "network", "",
          "Rank of the double blocks' image MLP adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("img_mod_dim", kInt, "network", "",
          "Rank of the double blocks' image modulation adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("txt_attn_dim", kInt, "network", "",
          "Rank of the double blocks' text attention adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("txt_mlp_dim", kInt, "network", "",
          "Rank of the double blocks' text MLP adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("txt_mod_dim", kInt, "network", "",
          "Rank of the double blocks' text modulation adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("single_dim", kInt, "network", "",
          "Rank of the single blocks' linear1/linear2 adapters; unset: network_dim; 0: none.")
          .min(0),
      Opt("single_mod_dim", kInt, "network", "",
          "Rank of the single blocks' modulation adapters; unset: network_dim; 0: none.")
          .min(0),

      // --- optimizer
      Opt("optimizer_type", kChoice, "optimizer", "Prodigy", "The optimizer, by kohya's name.")
          .env("PARAMS_OPTIMIZER_TYPE")
          .choices({"Prodigy", "AdamW", "AdamW8bit", "Adafactor", "Lion", "SGD"})
          .choice_alias("prodigyopt.Prodigy", "Prodigy")
          .choice_alias("bitsandbytes.optim.AdamW8bit", "AdamW8bit")
          .choice_alias("adamw_8bit", "AdamW8bit"),
      Opt("optimizer_args", kString, "optimizer", "",
          "kohya's optimizer arguments, \"key=value key=value\" (e.g. \"decouple=True use_bias_correction=True "
          "safeguard_warmup=True\"); a TOML file may give a list of strings.")
          .check(check_optimizer_args)
          .join_arrays(" ")
          .allowed("key=value pairs separated by spaces"),
      Opt("learning_rate", kReal, "optimizer", "1.0",
          "Learning rate (Prodigy: a multiplier of its own estimate, 1 as recommended).")
          .min(0, true),
      Opt("d_coef", kReal, "optimizer", "",
          "Prodigy's d_coef (scales its step size estimate); unset: Prodigy's 1.0. Prodigy only.")
          .min(0, true),
      Opt("weight_decay", kReal, "optimizer", "",
          "Weight decay; unset: the optimizer's own default (AdamW 0.01, others 0).")
          .min(0),
      Opt("max_grad_norm", kReal, "optimizer", "1.0", "Clip the gradient norm to this; 0 = no clipping.").min(0),
      Opt("loraplus_lr_ratio", kReal, "optimizer", "",
          "LoRA+: learning-rate ratio of the up matrices to the down matrices; unset: 1.")
          .min(0, true),

      // --- schedule
      Opt("lr_scheduler", kChoice, "scheduler", "cosine", "Learning-rate schedule (diffusers' formulas, as kohya).")
          .env("PARAMS_LEARNING_SCHEDULER")
          .alias("PARAMS_LR_SCHEDULER")
          .choices(optim::schedule_names()),
      Opt("lr_warmup_steps", kReal, "scheduler", p0,
          "Warmup: a number of steps, or a fraction of all steps when below 1.")
          .min(0)
          .check(check_warmup)
          .allowed("a whole number of steps >= 0, or a fraction in [0, 1)"),
      Opt("lr_scheduler_num_cycles", kInt, "scheduler", p1, "Hard restarts of cosine_with_restarts.")
          .env("PARAMS_NUM_CYCLES")
          .alias("PARAMS_LR_SCHEDULER_NUM_CYCLES")
          .min(1),
      Opt("lr_scheduler_power", kReal, "scheduler", "1.0", "Power of the polynomial schedule.").min(0, true),
      Opt("lr_step_rules", kString, "scheduler", "",
          "Rules of piecewise_constant: \"multiplier:step,...,final\" (e.g. \"1:500,0.5:1000,0.1\")."),

      // --- training length and batches
      Opt("max_train_epochs", kInt, "training", "", "Train this many epochs (wins over max_train_steps, as kohya).")
          .env("PARAMS_MAX_EPOCHS")
          .alias("PARAMS_MAX_TRAIN_EPOCHS")
          .min(1),
      Opt("max_train_steps", kInt, "training", "1600",
          "Train this many optimizer steps, unless max_train_epochs is set.")
          .min(1),
      Opt("gradient_accumulation_steps", kInt, "training", p1, "Batches whose gradients are summed per optimizer step.")
          .min(1),
      Opt("seed", kInt, "training", "42",
          "Seed of every random draw (data order, noise, timesteps, dropout, LoRA init).")
          .min(0),

      // --- objective
      Opt("timestep_sampling", kChoice, "objective", "sigmoid", "How sigma is drawn per sample.")
          .choices({"uniform", "sigmoid", "shift", "flux_shift"}),
      Opt("sigmoid_scale", kReal, "objective", "1.0",
          "Scale of the normal draw before the sigmoid (sigmoid, shift, flux_shift).")
          .min(0, true),
      Opt("discrete_flow_shift", kReal, "objective", "3.0",
          "The shift s of timestep_sampling shift (3.1582 is Flux's at 1024x1024).")
          .min(0, true),
      Opt("guidance_scale", kReal, "objective", "1.0", "The guidance value the dev model gets while training.").min(0),
      Opt("loss_type", kChoice, "objective", "l2", "The loss.").choices({"l2", "l1", "huber", "smooth_l1"}),
      Opt("huber_c", kReal, "objective", "0.1", "The huber / smooth_l1 threshold.").min(0, true),
      Opt("noise_offset", kReal, "objective", p0,
          "Offset noise: adds offset * N(0,1) per sample and channel (really applied).")
          .min(0)
          .max(1),

      // --- memory
      Opt("gradient_checkpointing", kBool, "memory", "true",
          "Recompute each block in the backward pass instead of keeping its activations (needed for the 12B model on "
          "most GPUs)."),
      Opt("gradient_checkpointing_interval", kInt, "memory", "1",
          "With gradient_checkpointing: checkpoint every Nth block only (1: all but the last); the others keep "
          "their activations, which is faster and needs more memory.")
          .min(1),
      Opt("checkpoint_keep_attention", kBool, "memory", "true",
          "With gradient_checkpointing: keep each checkpointed block's attention output (one hidden-size "
          "activation per token and block) so the recomputation skips attention; false saves that memory."),
      Opt("checkpoint_keep_products", kChoice, "memory", "outputs",
          "With gradient_checkpointing: which frozen matrix products each checkpointed block keeps so the "
          "recomputation need not multiply again. outputs: attention projection, MLP out and linear2 (1 to 2 "
          "hidden-size activations per token and block, 5 of every 12 recomputed multiplications saved); all: also "
          "qkv, MLP in and linear1 (7 more, the recomputation then multiplies only LoRA weights); none: recompute "
          "them all (least memory).")
          .choices({"none", "outputs", "all"}),
      Opt("offload_checkpoints", kBool, "memory", "false",
          "Keep the checkpointed block inputs in pinned host memory (needs gradient_checkpointing)."),
      Opt("fp8_base", kBool, "memory", "false",
          "Store the frozen transformer's block weights in fp8 (e4m3fn), about half the memory of bf16."),
      Opt("cache_dir", kPath, "memory", "",
          "Folder of the latent and text-embedding caches (shareable across runs); unset: OUTPUT_PATH/cache."),

      // --- sampling
      Opt("sample_prompts", kPath, "sampling", "",
          "Prompt file: one prompt per line in kohya's syntax (--w --h --d --s --g --n), or .toml/.json.")
          .env("SAMPLE_PROMPTS")
          .path(PathCheck::file),
      Opt("sample_every_n_steps", kInt, "sampling", p0, "Generate the sample prompts every N steps; 0 = never.").min(0),
      Opt("sample_every_n_epochs", kInt, "sampling", p0, "Generate the sample prompts every N epochs; 0 = never.")
          .min(0),
      Opt("sample_at_first", kBool, "sampling", "false", "Generate the samples once before training."),

      // --- runtime
      Opt("config", kPath, "runtime", "", "A TOML file of options (keys = option names, optionally in [group] tables).")
          .path(PathCheck::file)
          .config_file(),
      device_option("runtime"),
      precision_option("runtime"),
      Opt("log_every_seconds", kReal, "runtime", "10",
          "Seconds between progress lines when the output is not a terminal.")
          .min(0, true),
      Opt("prefetch_batches", kInt, "runtime", "4",
          "Batches a background thread reads from the caches (into pinned memory on CUDA) while a step trains; "
          "0 = read each batch in the training loop when it is needed.")
          .min(0)
          .max(64),
  };
  return OptionTable("train", std::move(groups), std::move(specs));
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return out;
}

bool has_arg(const ResolvedConfig& config, const std::string& key) {
  if (!config.is_set("optimizer_args")) return false;
  for (const auto& [k, v] : optim::split_optimizer_args(config.get_string("optimizer_args"))) {
    if (k == key) return true;
  }
  return false;
}

}  // namespace

OptionSpec device_option(const std::string& group) {
  return Opt("device", kString, group, "auto",
             "Where to compute: auto (cuda when available, else cpu), cpu, cuda or cuda:N.")
      .check(check_device)
      .allowed("auto, cpu, cuda or cuda:N");
}

OptionSpec precision_option(const std::string& group) {
  return Opt("precision", kChoice, group, "auto", "Compute precision: auto = bf16 on a GPU, fp32 on the CPU.")
      .choices({"auto", "fp32", "bf16", "fp16"})
      .choice_alias("float32", "fp32")
      .choice_alias("no", "fp32")
      .choice_alias("bfloat16", "bf16")
      .choice_alias("float16", "fp16");
}

const OptionTable& train_options() {
  static const OptionTable table = make_train_options();
  return table;
}

std::vector<std::string> usual_model_names(const std::string& file, const std::string& base_model) {
  if (file == "model") {
    if (base_model == "flux-schnell")
      return {"flux1-schnell.safetensors", "flux_schnell.safetensors", "flux1-schnell-fp8.safetensors"};
    return {"flux1-dev.safetensors", "flux_dev.safetensors", "flux1-dev-fp8.safetensors"};
  }
  if (file == "ae") return {"ae.safetensors"};
  if (file == "clip_l") return {"clip_l.safetensors"};
  if (file == "t5xxl") return {"t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors"};
  fail("internal: no model file kind \"", file, "\"");
}

ModelFiles find_model_files(const ModelFiles& given, const std::string& model_dir, const std::string& base_model,
                            const std::string& model_dir_origin) {
  ModelFiles out = given;
  struct Slot {
    const char* kind;
    const char* what;
    const char* flag;
    const char* var;
    std::string* path;
  };
  const Slot slots[] = {{"model", "the Flux transformer", "--model", "PARAMS_MODEL", &out.model},
                        {"ae", "the autoencoder", "--ae", "PARAMS_AE", &out.ae},
                        {"clip_l", "the CLIP-L text encoder", "--clip-l", "PARAMS_CLIP_L", &out.clip_l},
                        {"t5xxl", "the T5-XXL text encoder", "--t5xxl", "PARAMS_T5XXL", &out.t5xxl}};
  std::vector<std::string> missing;
  for (const Slot& slot : slots) {
    if (!slot.path->empty()) continue;
    std::vector<std::string> names = usual_model_names(slot.kind, base_model);
    if (model_dir.empty()) {
      missing.push_back(cat(slot.what, ": not given (set ", slot.flag, " / ", slot.var, ", or ", model_dir_origin,
                            " to a folder holding ", join_names(names), ")"));
      continue;
    }
    for (const auto& name : names) {
      fs::path candidate = fs::path(model_dir) / name;
      std::error_code ec;
      if (fs::is_regular_file(candidate, ec)) {
        *slot.path = candidate.string();
        break;
      }
    }
    if (!slot.path->empty()) continue;
    std::string text = cat(slot.what, ": none of ", join_names(names), " in ", model_dir_origin, "=", model_dir);
    if (std::string(slot.kind) == "model") {
      const std::string other = base_model == "flux-schnell" ? "flux-dev" : "flux-schnell";
      for (const auto& name : usual_model_names("model", other)) {
        std::error_code ec;
        if (fs::is_regular_file(fs::path(model_dir) / name, ec))
          text += cat(" (it holds ", name, ": is BASE_MODEL=", other, " meant?)");
      }
    }
    missing.push_back(text + cat("; or name the file with ", slot.flag, " / ", slot.var));
  }
  if (missing.size() == 1) fail("model file missing (BASE_MODEL ", base_model, "): ", missing[0]);
  if (!missing.empty()) {
    std::string text = cat(missing.size(), " model files missing (BASE_MODEL ", base_model, "):");
    for (const auto& m : missing) text += "\n  - " + m;
    fail(text);
  }
  return out;
}

ModelFiles resolve_model_files(const ResolvedConfig& config) {
  ModelFiles given;
  given.model = config.find_string("model").value_or("");
  given.ae = config.find_string("ae").value_or("");
  given.clip_l = config.find_string("clip_l").value_or("");
  given.t5xxl = config.find_string("t5xxl").value_or("");
  std::string origin = "MODEL_DIR";
  if (config.source("model_dir") == Source::cli) origin = "--model-dir";
  if (config.source("model_dir") == Source::file) origin = "model_dir in " + config.config_file();
  return find_model_files(given, config.find_string("model_dir").value_or(""), config.get_string("base_model"), origin);
}

std::string merged_optimizer_args(const ResolvedConfig& config) {
  std::string args = config.find_string("optimizer_args").value_or("");
  for (const char* key : {"d_coef", "weight_decay"}) {
    if (!config.is_set(key)) continue;
    args += cat(args.empty() ? "" : " ", key, "=", format_toml_value(config.option(key).value));
  }
  return args;
}

std::vector<std::string> validate_train_config(const ResolvedConfig& config, bool check_model_files) {
  std::vector<std::string> errors, warnings;
  auto d = [&](const std::string& name) { return config.describe(name); };
  const std::string optimizer = config.get_string("optimizer_type");
  const std::string scheduler = config.get_string("lr_scheduler");

  if (!config.is_set("dataset_name") && !config.is_set("dataset_config"))
    errors.push_back(
        "no dataset: set DATASET_NAME (--dataset-name: a Hugging Face dataset, Kaggle dataset, URL or "
        "local folder) or DATASET_CONFIG (--dataset-config: kohya's dataset TOML/JSON)");
  try {
    if (check_model_files) resolve_model_files(config);
  } catch (const Error& e) {
    errors.push_back(e.what());
  }

  if (config.is_set("max_train_epochs") && config.changed("max_train_steps"))
    errors.push_back(cat(d("max_train_epochs"), " and ", d("max_train_steps"),
                         " are both set: the run length is one or the other; remove one"));
  if (config.is_set("d_coef") && optimizer != "Prodigy")
    errors.push_back(cat(d("d_coef"), " applies to the Prodigy optimizer only, but ", d("optimizer_type")));
  for (const char* key : {"d_coef", "weight_decay"}) {
    if (config.is_set(key) && has_arg(config, key))
      errors.push_back(cat(d(key), " and ", key, "= in ", d("optimizer_args"), " set the same thing; keep one"));
  }
  if (config.get_bool("offload_checkpoints") && !config.get_bool("gradient_checkpointing"))
    errors.push_back(cat(d("offload_checkpoints"), " needs gradient checkpointing, but ", d("gradient_checkpointing")));
  if (!config.is_set("sample_prompts")) {
    for (const char* key : {"sample_every_n_steps", "sample_every_n_epochs"}) {
      if (config.get_int(key) > 0)
        errors.push_back(cat(d(key),
                             " asks for samples, but there are no prompts: set SAMPLE_PROMPTS (--sample-prompts) "
                             "to a prompt file, or set ",
                             key, " to 0"));
    }
    if (config.get_bool("sample_at_first"))
      errors.push_back(cat(d("sample_at_first"),
                           " asks for samples, but there are no prompts: set SAMPLE_PROMPTS (--sample-prompts)"));
  }
  if (config.is_set("resume_from") && config.is_set("network_weights"))
    errors.push_back(cat(d("resume_from"), " restores the LoRA weights, so ", d("network_weights"),
                         " would be ignored; set only one"));
  if (scheduler == "piecewise_constant") {
    if (!config.is_set("lr_step_rules")) {
      errors.push_back(
          cat(d("lr_scheduler"), " needs lr_step_rules (--lr-step-rules / PARAMS_LR_STEP_RULES), e.g. \"1:500,0.1\""));
    } else {
      try {
        optim::ScheduleOptions o;
        o.name = scheduler;
        o.step_rules = config.get_string("lr_step_rules");
        optim::LrSchedule(o, config.get_real("learning_rate"));
      } catch (const Error& e) {
        errors.push_back(cat(d("lr_step_rules"), ": ", e.what()));
      }
    }
  } else if (config.given("lr_step_rules")) {
    warnings.push_back(
        cat(d("lr_step_rules"), " has no effect with ", d("lr_scheduler"), " (piecewise_constant only)"));
  }
  if (scheduler == "polynomial" && !(config.get_real("learning_rate") > 1e-7))
    errors.push_back(cat(d("learning_rate"), " must exceed the polynomial schedule's end value 1e-7"));
  const double warmup = config.get_real("lr_warmup_steps");
  if (warmup >= 1 && !config.is_set("max_train_epochs") &&
      warmup >= static_cast<double>(config.get_int("max_train_steps")))
    errors.push_back(cat(d("lr_warmup_steps"), " is not shorter than the run, ", d("max_train_steps")));
  if (warmup > 0 && scheduler == "constant")
    warnings.push_back(
        cat(d("lr_warmup_steps"), " has no effect with ", d("lr_scheduler"), " (use constant_with_warmup)"));
  if (config.changed("lr_scheduler_num_cycles") && config.get_int("lr_scheduler_num_cycles") != 1 &&
      scheduler != "cosine_with_restarts")
    warnings.push_back(cat(d("lr_scheduler_num_cycles"), " has no effect with ", d("lr_scheduler"),
                           " (only cosine_with_restarts restarts; kohya's cosine ignores it too)"));
  if (config.changed("lr_scheduler_power") && scheduler != "polynomial")
    warnings.push_back(cat(d("lr_scheduler_power"), " has no effect with ", d("lr_scheduler"), " (polynomial only)"));
  const std::string sampling = config.get_string("timestep_sampling");
  if (config.changed("discrete_flow_shift") && sampling != "shift")
    warnings.push_back(cat(d("discrete_flow_shift"), " has no effect with ", d("timestep_sampling"), " (shift only)"));
  if (config.changed("sigmoid_scale") && sampling == "uniform")
    warnings.push_back(cat(d("sigmoid_scale"), " has no effect with ", d("timestep_sampling")));
  const std::string loss = config.get_string("loss_type");
  if (config.changed("huber_c") && loss != "huber" && loss != "smooth_l1")
    warnings.push_back(cat(d("huber_c"), " has no effect with ", d("loss_type"), " (huber and smooth_l1 only)"));
  if (config.changed("guidance_scale") && config.get_string("base_model") == "flux-schnell")
    warnings.push_back(cat(d("guidance_scale"), " has no effect on flux-schnell, which has no guidance input"));
  const std::string blocks = config.get_string("train_blocks");
  if (blocks == "single" && config.changed("train_double_block_indices"))
    warnings.push_back(cat(d("train_double_block_indices"), " has no effect with ", d("train_blocks")));
  if (blocks == "double" && config.changed("train_single_block_indices"))
    warnings.push_back(cat(d("train_single_block_indices"), " has no effect with ", d("train_blocks")));
  if (config.changed("keep_last_n_states") && !config.get_bool("save_state"))
    warnings.push_back(cat(d("keep_last_n_states"), " has no effect with ", d("save_state")));

  throw_errors(errors);
  return warnings;
}

const char* const kTrainCommandHelp =
    "Train a Flux LoRA (the main job): options from flags, PARAMS_* / the seed's variables or --config";
const char* const kCacheCommandHelp =
    "Fetch and plan the dataset and fill the latent and text caches (the first half of train)";

std::shared_ptr<TrainCli> add_train_cli(CLI::App& command) {
  auto cli = std::make_shared<TrainCli>();
  cli->binding = std::make_unique<CliBinding>(command, train_options());
  command.add_flag(
      "--print-config", cli->print_config,
      "Print every resolved value and where it came from (command line, environment, config file, default)");
  command.add_flag("--help-env", cli->help_env,
                   "Print the reference of the environment variables (and their flags) and exit");
  command
      .add_option("--format", cli->format, "Output format: text or toml (the config), text or markdown (--help-env)")
      ->capture_default_str();
  return cli;
}

ResolvedConfig resolve_train_config(const TrainCli& cli, const EnvMap& env, bool check_model_files) {
  ResolvedConfig config = resolve(train_options(), ResolveInputs{cli.binding->values(), env});
  for (const auto& w : config.warnings()) log::warn(w);
  for (const auto& w : validate_train_config(config, check_model_files)) log::warn(w);
  return config;
}

}  // namespace fluxtrain::app
