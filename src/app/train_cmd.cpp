// `fluxtrain train` (the main job) and `fluxtrain cache` (its first half: fetch, plan, fill the caches).
// Options come from the one train option table (train_options.h): flags > PARAMS_* / the seed's
// variables > --config TOML > defaults, all checked before any model is loaded.
//
// The run folder (OUTPUT_PATH): config.toml (the resolved options), {name}-step{N}.safetensors,
// {name}.safetensors, state/step-N/ (exact resume), samples/, logs/ (fluxtrain.log, TensorBoard events),
// metrics.jsonl. A restarted pod resumes from the newest complete state when the options that shape the
// training are unchanged; changes a resume can honour (cadences, more steps or epochs, sampling) are
// applied and reported; any other change starts a fresh run in OUTPUT_PATH/run-<hash> rather than mixing
// two configurations.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <set>

#include "app/commands.h"
#include "app/device.h"
#include "app/environment_knobs.h"
#include "app/train_options.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "data/dataset.h"
#include "fetch/dataset.h"
#include "models/linear.h"
#include "sample/prompts.h"
#include "sample/sampler_setup.h"
#include "train/dataset_source.h"
#include "train/state.h"
#include "train/trainer.h"

namespace fluxtrain::app {
namespace fs = std::filesystem;
namespace {

// Options whose change a resumed run can take on without mixing two trainings.
const std::set<std::string> kResumeSafe = {
    "save_every_n_steps", "save_every_n_epochs", "keep_last_n", "keep_last_n_states", "save_state",
    "sample_prompts", "sample_every_n_steps", "sample_every_n_epochs", "sample_at_first", "max_train_epochs",
    "max_train_steps", "log_every_seconds", "prefetch_batches", "device", "resume_from", "auto_resume", "config", "cache_dir",
    "output_path", "model_dir", "model", "ae", "clip_l", "t5xxl", "dataset_name"};

std::string value_text(const OptionValue& value) {
  struct Visitor {
    std::string operator()(std::monostate) const { return "(unset)"; }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(int64_t v) const { return std::to_string(v); }
    std::string operator()(double v) const {
      std::ostringstream out;
      out.precision(17);
      out << v;
      return out.str();
    }
    std::string operator()(const std::string& v) const { return v; }
    std::string operator()(const std::vector<std::string>& v) const {
      std::string out;
      for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
      return out;
    }
  };
  return std::visit(Visitor{}, value);
}

nlohmann::json option_values(const ResolvedConfig& config) {
  nlohmann::json out = nlohmann::json::object();
  for (const std::string& name : config.table().names()) out[name] = value_text(config.option(name).value);
  return out;
}

// The hash of the options that shape the training (everything not in kResumeSafe).
std::string training_hash(const nlohmann::json& values) {
  std::string text;
  for (const auto& [name, value] : values.items()) {
    if (!kResumeSafe.count(name)) text += name + "=" + value.get<std::string>() + "\n";
  }
  return sha256_hex(text).substr(0, 12);
}

struct RunPlan {
  fs::path dir;              // the run folder
  std::string resume_state;  // "" = fresh
};

// Where this run lives and whether it resumes (see the file comment).
RunPlan plan_run(const ResolvedConfig& config, const nlohmann::json& values) {
  RunPlan plan;
  const fs::path output(config.get_string("output_path"));
  plan.dir = output;
  if (auto from = config.find_string("resume_from"); from && !from->empty()) {
    plan.resume_state = *from;
    return plan;
  }
  if (!config.get_bool("auto_resume")) return plan;
  const std::string hash = training_hash(values);
  auto newest = train::newest_state(output);
  if (!newest) {
    // A changed configuration may have started an alternate run before: resume that one.
    fs::path alternate = output / ("run-" + hash);
    if (auto alt = train::newest_state(alternate)) {
      plan.dir = alternate;
      plan.resume_state = alt->string();
    }
    return plan;
  }
  nlohmann::json saved;
  try {
    std::ifstream in(*newest / "state.json");
    saved = nlohmann::json::parse(in).value("run", nlohmann::json::object()).value("options", nlohmann::json::object());
  } catch (const std::exception&) {
    saved = nlohmann::json::object();
  }
  std::vector<std::string> honoured, breaking;
  for (const auto& [name, value] : values.items()) {
    std::string before = saved.contains(name) ? saved[name].get<std::string>() : "(unset)";
    if (before == value.get<std::string>()) continue;
    std::string change = cat(name, ": ", before, " -> ", value.get<std::string>());
    (kResumeSafe.count(name) ? honoured : breaking).push_back(change);
  }
  if (breaking.empty()) {
    plan.resume_state = newest->string();
    for (const auto& c : honoured) log::info("changed since the saved state (applied to the resumed run): ", c);
    return plan;
  }
  for (const auto& c : breaking) log::warn("changed since the saved state in ", output.string(), ": ", c);
  plan.dir = output / ("run-" + hash);
  log::warn("these changes shape the training, so this is a new run in ", plan.dir.string(),
            " (the run in ", output.string(), " is left as it is)");
  if (auto alt = train::newest_state(plan.dir)) plan.resume_state = alt->string();
  return plan;
}

std::shared_ptr<data::DatasetPlan> build_dataset(const ResolvedConfig& config) {
  data::ConfigOptions options;
  if (auto v = config.find_int("train_batch_size")) {
    options.fallbacks.batch_size = static_cast<int>(*v);
    options.fallbacks.batch_size_origin = config.describe("train_batch_size");
  }
  if (config.is_set("resolution")) {
    const auto& r = config.get_list("resolution");
    int w = std::stoi(r.at(0)), h = r.size() > 1 ? std::stoi(r[1]) : w;
    options.fallbacks.resolution = data::Resolution{w, h};
    options.fallbacks.resolution_origin = config.describe("resolution");
  }
  fs::path fetched;
  if (auto name = config.find_string("dataset_name"); name && !name->empty()) {
    fetch::FetchOptions fetch_options = fetch_options_from_environment();
    fetched = fetch::fetch_dataset(*name, default_dataset_cache_dir(), fetch_options);
    log::info("dataset ", *name, ": ", fetched.string());
    options.default_image_dir = fetched;
  }
  data::DatasetGroupConfig group;
  if (auto file = config.find_string("dataset_config"); file && !file->empty()) {
    group = data::load_dataset_config(*file, options);
  } else {
    group = data::folder_dataset_config(fetched, options);
  }
  for (auto& dataset : group.datasets) {
    for (auto& subset : dataset.subsets) {
      if (auto ext = config.find_string("caption_extension"); ext && !ext->empty() && !subset.origin.count("caption_extension")) {
        subset.caption_extension = (*ext)[0] == '.' ? *ext : "." + *ext;
      }
      if (auto n = config.find_int("num_repeats"); n && subset.origin.count("num_repeats") == 0) {
        subset.num_repeats = static_cast<int>(*n);
      }
    }
  }
  data::ScanOptions scan;
  scan.probe = data::default_image_probe();
  return std::make_shared<data::DatasetPlan>(data::DatasetPlan::build(std::move(group), scan));
}

train::TrainerConfig trainer_config(const ResolvedConfig& config, const ModelFiles& files, const RunPlan& run,
                                    const data::DatasetPlan& plan, const nlohmann::json& values, at::Device device,
                                    at::ScalarType precision) {
  train::TrainerConfig t;
  t.model_path = files.model;
  t.model.device = device;
  t.compute_dtype = precision;
  t.model.dtype = t.compute_dtype;
  t.model.fp8_base = config.get_bool("fp8_base");
  t.full_finetune = config.get_string("network_type") == "none";
  t.lora.rank = config.get_int("network_dim");
  t.lora.alpha = config.get_real("network_alpha");
  t.lora.train_blocks = config.get_string("train_blocks");
  t.lora.train_double_block_indices = config.get_string("train_double_block_indices");
  t.lora.train_single_block_indices = config.get_string("train_single_block_indices");
  t.lora.split_qkv = config.get_bool("split_qkv");
  if (auto v = config.find_real("network_dropout")) t.lora.dropout.neuron = *v;
  if (auto v = config.find_real("rank_dropout")) t.lora.dropout.rank = *v;
  if (auto v = config.find_real("module_dropout")) t.lora.dropout.module = *v;
  for (const char* type : {"img_attn", "img_mlp", "img_mod", "txt_attn", "txt_mlp", "txt_mod", "single", "single_mod"}) {
    if (auto v = config.find_int(std::string(type) + "_dim")) t.lora.type_dims[type] = *v;
  }
  if (auto w = config.find_string("network_weights")) t.network_weights = *w;
  t.optimizer_type = config.get_string("optimizer_type");
  t.optimizer_args = merged_optimizer_args(config);
  t.learning_rate = config.get_real("learning_rate");
  t.weight_decay = 0.0;  // the optimizer's own default unless optimizer_args / PARAMS_WEIGHT_DECAY set it
  t.schedule.name = config.get_string("lr_scheduler");
  if (auto v = config.find_real("lr_warmup_steps")) t.schedule.warmup = *v;
  if (auto v = config.find_int("lr_scheduler_num_cycles")) t.schedule.num_cycles = static_cast<double>(*v);
  t.schedule.power = config.get_real("lr_scheduler_power");
  if (auto v = config.find_string("lr_step_rules")) t.schedule.step_rules = *v;
  t.step.objective.sampling = train::parse_timestep_sampling(config.get_string("timestep_sampling"), "timestep_sampling");
  t.step.objective.sigmoid_scale = config.get_real("sigmoid_scale");
  t.step.objective.discrete_flow_shift = config.get_real("discrete_flow_shift");
  t.step.objective.guidance_scale = config.get_real("guidance_scale");
  t.step.objective.loss = train::parse_loss_type(config.get_string("loss_type"), "loss_type");
  t.step.objective.huber_c = config.get_real("huber_c");
  if (auto v = config.find_real("noise_offset")) t.step.objective.noise_offset = *v;
  t.step.checkpointing.enabled = config.get_bool("gradient_checkpointing");
  t.step.checkpointing.offload_inputs = config.get_bool("offload_checkpoints");
  t.step.checkpointing.interval = config.get_int("gradient_checkpointing_interval");
  t.step.checkpointing.keep_attention = config.get_bool("checkpoint_keep_attention");
  t.step.checkpointing.keep_products =
      models::parse_keep_products(config.get_string("checkpoint_keep_products"), "checkpoint_keep_products");
  t.step.apply_t5_mask = config.get_bool("apply_t5_attn_mask");
  t.step.max_grad_norm = config.get_real("max_grad_norm");
  if (auto v = config.find_int("gradient_accumulation_steps")) t.gradient_accumulation = *v;
  t.prefetch_batches = static_cast<int>(config.get_int("prefetch_batches"));
  if (auto v = config.find_int("max_train_epochs")) {
    t.max_epochs = *v;
    t.max_steps = 0;
  } else {
    t.max_steps = config.get_int("max_train_steps");
  }
  t.seed = static_cast<uint64_t>(config.get_int("seed"));
  t.output_dir = run.dir;
  t.output_name = config.get_string("output_name");
  if (auto v = config.find_int("save_every_n_steps")) t.save_every_n_steps = *v;
  if (auto v = config.find_int("save_every_n_epochs")) t.save_every_n_epochs = *v;
  if (auto v = config.find_int("keep_last_n")) t.keep_last_n = static_cast<int>(*v);
  t.save_state = config.get_bool("save_state");
  t.keep_last_n_states = static_cast<int>(config.get_int("keep_last_n_states"));
  if (auto v = config.find_int("sample_every_n_steps")) t.sample_every_n_steps = *v;
  if (auto v = config.find_int("sample_every_n_epochs")) t.sample_every_n_epochs = *v;
  t.sample_at_first = config.get_bool("sample_at_first");
  t.log_every_seconds = config.get_real("log_every_seconds");
  t.resume_from = run.resume_state;
  const bool schnell = config.get_string("base_model") == "flux-schnell";
  t.file_info.architecture = schnell ? "flux-1-schnell" : "flux-1-dev";
  t.file_info.title = t.output_name;
  t.file_info.created_at = source_date_epoch();
  if (!plan.buckets().empty()) {
    t.file_info.width = plan.config().datasets.at(0).buckets.resolution.width;
    t.file_info.height = plan.config().datasets.at(0).buckets.resolution.height;
  }
  std::set<std::string> triggers;
  for (const auto& dataset : plan.config().datasets) {
    for (const auto& subset : dataset.subsets) {
      if (!subset.class_tokens.empty() && !subset.is_reg) triggers.insert(subset.class_tokens);
    }
  }
  for (const auto& trigger : triggers) t.file_info.trigger_phrase += (t.file_info.trigger_phrase.empty() ? "" : ", ") + trigger;
  t.file_info.training = {
      {"ss_learning_rate", value_text(config.option("learning_rate").value)},
      {"ss_unet_lr", value_text(config.option("learning_rate").value)},
      {"ss_optimizer", t.optimizer_type + (t.optimizer_args.empty() ? "" : "(" + t.optimizer_args + ")")},
      {"ss_lr_scheduler", t.schedule.name},
      {"ss_lr_warmup_steps", cat(t.schedule.warmup)},
      {"ss_num_train_images", std::to_string(plan.train_samples())},
      {"ss_num_reg_images", std::to_string(plan.reg_samples())},
      {"ss_num_batches_per_epoch", std::to_string(plan.steps_per_epoch())},
      {"ss_gradient_checkpointing", t.step.checkpointing.enabled ? "True" : "False"},
      {"ss_gradient_accumulation_steps", std::to_string(t.gradient_accumulation)},
      {"ss_max_grad_norm", value_text(config.option("max_grad_norm").value)},
      {"ss_seed", std::to_string(t.seed)},
      {"ss_noise_offset", cat(t.step.objective.noise_offset)},
      {"ss_timestep_sampling", config.get_string("timestep_sampling")},
      {"ss_sigmoid_scale", value_text(config.option("sigmoid_scale").value)},
      {"ss_discrete_flow_shift", value_text(config.option("discrete_flow_shift").value)},
      {"ss_guidance_scale", value_text(config.option("guidance_scale").value)},
      {"ss_model_prediction_type", "raw"},
      {"ss_loss_type", config.get_string("loss_type")},
      {"ss_fp8_base", t.model.fp8_base ? "True" : "False"},
      {"ss_apply_t5_attn_mask", t.step.apply_t5_mask ? "True" : "False"},
      {"ss_mixed_precision", c10::toString(t.compute_dtype)},
      {"ss_sd_model_name", fs::path(files.model).filename().string()},
      {"ss_vae_name", fs::path(files.ae).filename().string()},
  };
  t.run_info = {{"options", values}, {"training_hash", training_hash(values)}};
  return t;
}

int run_train(const TrainCli& cli, bool cache_only) {
  if (cli.help_env) {
    std::cout << help_env(train_options(), cli.format);
    return 0;
  }
  ResolvedConfig config = resolve_train_config(cli, environment());
  if (cli.print_config) {
    std::cout << (cli.format == "toml" ? config.to_toml() : config.print());
    return 0;
  }
  const ModelFiles files = resolve_model_files(config);
  const nlohmann::json values = option_values(config);
  const at::Device device = resolve_device(config.get_string("device"), config.describe("device"));
  const at::ScalarType precision = resolve_precision(config.get_string("precision"), device, config.describe("precision"));

  RunPlan run = cache_only ? RunPlan{fs::path(config.get_string("output_path")), ""} : plan_run(config, values);
  std::shared_ptr<data::DatasetPlan> plan = build_dataset(config);

  train::DatasetSourceOptions source_options;
  source_options.cache_dir = config.find_string("cache_dir").value_or("");
  if (source_options.cache_dir.empty()) source_options.cache_dir = fs::path(config.get_string("output_path")) / "cache";
  source_options.encoders.device = device;
  source_options.encoders.dtype = precision;
  source_options.text.t5_max_length = static_cast<int>(
      config.find_int("t5xxl_max_token_length").value_or(config.get_string("base_model") == "flux-schnell" ? 256 : 512));
  source_options.text.t5_attn_mask = config.get_bool("apply_t5_attn_mask");
  source_options.seed = static_cast<uint64_t>(config.get_int("seed"));
  train::DatasetSource source(plan, {files.ae, files.clip_l, files.t5xxl}, source_options);
  log::info(source.prepare());
  if (cache_only) return 0;

  train::TrainerConfig trainer = trainer_config(config, files, run, *plan, values, device, precision);
  fs::create_directories(run.dir / "logs");
  write_file_atomic((run.dir / "config.toml").string(), config.to_toml());
  log::add_file_sink((run.dir / "logs" / "fluxtrain.log").string());
  log::info("training ", trainer.output_name, " in ", run.dir.string(), " on ", trainer.model.device.str(), " (",
            c10::toString(trainer.compute_dtype), ")", run.resume_state.empty() ? "" : ", resuming from " + run.resume_state);
  // Samples: the prompts are encoded once now (the text encoders are freed again); the AE stays.
  std::unique_ptr<sample::Sampler> sampler;
  train::SampleHook hook;
  const bool sampling = trainer.sample_every_n_steps > 0 || trainer.sample_every_n_epochs > 0 || trainer.sample_at_first;
  if (auto prompts = config.find_string("sample_prompts"); prompts && !prompts->empty() && sampling) {
    sample::SamplerSetup setup;
    setup.ae_path = files.ae;
    setup.clip_path = files.clip_l;
    setup.t5_path = files.t5xxl;
    setup.options.device = device;
    setup.options.dtype = precision;
    setup.text = source_options.text;
    setup.prompts = sample::load_prompts(*prompts);
    setup.sampler.out_dir = run.dir / "samples";
    setup.sampler.name = trainer.output_name;
    setup.sampler.run_seed = trainer.seed;
    setup.sampler.text = {{"model", fs::path(files.model).filename().string()}, {"lora", trainer.output_name}};
    sampler = sample::make_sampler(setup);
    hook = [&sampler](int64_t step, models::FluxTransformerImpl& model) { return sampler->render(step, model); };
  }
  train::TrainResult result = train::train(trainer, source, hook);
  log::info(result.interrupted ? "stopped" : "done", ": ", result.steps, "/", result.total_steps, " steps in ",
            result.seconds, " s, last loss ", result.last_loss, ", peak memory ",
            result.peak_memory_bytes >= 0 ? format_bytes(result.peak_memory_bytes) : std::string("unknown"),
            "; the steps waited for data ", 100.0 * result.data_wait_share, " % of their time; ",
            result.files.size(), " file", result.files.size() == 1 ? "" : "s", " written:");
  for (const auto& file : result.files) std::cout << file << "\n";
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& app) {
  CLI::App* sub = app.add_subcommand("train", kTrainCommandHelp);
  std::shared_ptr<TrainCli> cli = add_train_cli(*sub);
  return {sub, [cli]() { return run_train(*cli, false); }};
}

Command add_cache_command(CLI::App& app) {
  CLI::App* sub = app.add_subcommand("cache", kCacheCommandHelp);
  std::shared_ptr<TrainCli> cli = add_train_cli(*sub);
  return {sub, [cli]() { return run_train(*cli, true); }};
}

}  // namespace fluxtrain::app
