// Checks of the train options that span several options or need the files on disk (validate_train_config).
#include <cmath>

#include "app/train_option_parts.h"
#include "app/train_options.h"
#include "core/error.h"
#include "optim/args.h"
#include "optim/schedule.h"

namespace fluxtrain::app {
namespace {

bool has_arg(const ResolvedConfig& config, const std::string& key) {
  if (!config.is_set("optimizer_args")) return false;
  for (const auto& [k, v] : optim::split_optimizer_args(config.get_string("optimizer_args"))) {
    if (k == key) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> validate_train_config(const ResolvedConfig& config, bool check_model_files) {
  std::vector<std::string> errors, warnings;
  auto d = [&](const std::string& name) { return config.describe(name); };
  const std::string optimizer = config.get_string("optimizer_type");
  const std::string scheduler = config.get_string("lr_scheduler");

  // `fluxtrain plan` (its own table) plans without a dataset: the resolution stands in for the buckets.
  if (!config.is_set("dataset_name") && !config.is_set("dataset_config") && config.table().command() != "plan")
    errors.push_back(
        "no dataset: set DATASET_NAME (--dataset-name: a Hugging Face dataset, Kaggle dataset, URL or "
        "local folder) or DATASET_CONFIG (--dataset-config: kohya's dataset TOML/JSON)");
  try {
    if (check_model_files) find_model_files(config.bind<TrainSettings>().models);
  } catch (const Error& e) {
    errors.push_back(e.what());
  }

  if (config.is_set("max_train_steps") && config.changed("max_train_epochs") && config.given("max_train_epochs"))
    errors.push_back(cat(d("max_train_epochs"), " and ", d("max_train_steps"),
                         " are both set: the run length is one or the other; remove one"));
  if (config.is_set("d_coef") && optimizer != "Prodigy")
    errors.push_back(cat(d("d_coef"), " applies to the Prodigy optimizer only, but ", d("optimizer_type")));
  for (const char* key : {"d_coef", "weight_decay"}) {
    if (config.given(key) && has_arg(config, key))
      errors.push_back(cat(d(key), " and ", key, "= in ", d("optimizer_args"), " set the same thing; keep one"));
  }
  if (config.is_set("loraplus_lr_ratio")) {
    if (config.get_string("network_type") == "none")
      errors.push_back(cat(d("loraplus_lr_ratio"), " applies to a LoRA's up matrices, but ", d("network_type")));
    else if (optimizer == "Prodigy")
      errors.push_back(cat(d("loraplus_lr_ratio"),
                           " needs per-parameter learning rates, which Prodigy refuses (as "
                           "prodigyopt does), but ",
                           d("optimizer_type"), "; use AdamW or unset it"));
  }
  // network_args sets options by their names: an option given itself too is given twice.
  if (config.is_set("network_args")) {
    for (const NetworkArg& arg : network_arg_items(config.get_string("network_args"))) {
      if (config.given(arg.option))
        errors.push_back(cat(d(arg.option), " and ", arg.key, "= in ", d("network_args"), " set the same thing; keep one"));
    }
  }
  // Text-encoder LoRA (kohya's network_train_unet_only / text_encoder_lr / train_t5xxl).
  const bool train_text = !config.get_bool("network_train_unet_only");
  if (!train_text) {
    for (const char* key : {"text_encoder_lr", "train_t5xxl"}) {
      if (std::string(key) == "text_encoder_lr" ? config.is_set(key) : config.get_bool(key))
        errors.push_back(cat(d(key), " trains a text-encoder LoRA, but ", d("network_train_unet_only"),
                             " trains the transformer only; unset network_train_unet_only (or set it to false)"));
    }
  } else {
    if (config.get_bool("cache_text_encoder_outputs"))
      errors.push_back(cat(d("cache_text_encoder_outputs"),
                           " encodes every caption once before training, but with ", d("network_train_unet_only"),
                           " a text encoder trains and its outputs change with every step, so they cannot be cached; "
                           "set cache_text_encoder_outputs=false (or leave it unset), or network_train_unet_only=true"));
    if (config.get_string("network_type") == "none")
      errors.push_back(cat(d("network_train_unet_only"), " trains a text-encoder LoRA, but ", d("network_type"),
                           " fine-tunes the transformer without a LoRA; set network_type=lora or "
                           "network_train_unet_only=true"));
    if (optimizer == "Prodigy" && config.is_set("text_encoder_lr") &&
        config.get_real("text_encoder_lr") != config.get_real("learning_rate"))
      errors.push_back(cat(d("text_encoder_lr"), " differs from ", d("learning_rate"),
                           ": per-parameter learning rates, which Prodigy refuses (as prodigyopt does); use AdamW, "
                           "or unset text_encoder_lr (the text encoders then train at learning_rate)"));
  }
  {
    // LyCORIS's types (lora/lycoris.h) train whole-layer adapters: no split parts, no dropouts, no LoRA+.
    const std::string type = config.get_string("network_type");
    const bool lycoris = type == "lokr" || type == "loha" || config.get_bool("dora_wd");
    const std::string what = config.get_bool("dora_wd") && type == "lora" ? d("dora_wd") : d("network_type");
    if (config.get_bool("dora_wd") && type != "lora")
      errors.push_back(cat(d("dora_wd"), " trains DoRA on a plain LoRA, but ", d("network_type"),
                           "; DoRA on LoKr/LoHa is not supported: use network_type lora or unset dora_wd"));
    if (lycoris && config.get_bool("split_qkv"))
      errors.push_back(cat(d("split_qkv"), " splits a LoRA into q/k/v parts, which ", what,
                           " does not support; unset split_qkv"));
    for (const char* key : {"network_dropout", "rank_dropout", "module_dropout"}) {
      if (lycoris && config.get_real(key) > 0)
        errors.push_back(cat(d(key), " is a plain LoRA's dropout, which ", what, " does not support; set it to 0"));
    }
    if (lycoris && train_text)
      errors.push_back(cat(d("network_train_unet_only"), " trains a text-encoder LoRA, which is a plain LoRA only, but ",
                           what, "; set network_train_unet_only=true or network_type=lora"));
    if (lycoris && config.is_set("loraplus_lr_ratio"))
      errors.push_back(cat(d("loraplus_lr_ratio"), " speeds up a plain LoRA's up matrices, but ", what,
                           "; unset loraplus_lr_ratio"));
    for (const char* key : {"factor", "decompose_both", "full_matrix"}) {
      if (type != "lokr" && config.changed(key))
        errors.push_back(cat(d(key), " shapes a LoKr network, but ", d("network_type"), "; set network_type lokr"));
    }
    if (config.get_int("factor") == 0)
      errors.push_back(cat(d("factor"), ": expected -1 (automatic) or a positive factor"));
  }
  if (config.get_bool("offload_checkpoints") && !config.get_bool("gradient_checkpointing"))
    errors.push_back(cat(d("offload_checkpoints"), " needs gradient checkpointing, but ", d("gradient_checkpointing")));
  const std::string fp8_compute = config.get_string("fp8_compute");
  if (!config.get_bool("fp8_base") && fp8_compute != "off" && fp8_compute != "auto")
    errors.push_back(cat(d("fp8_compute"), " multiplies the fp8 weights of an fp8 base, but ", d("fp8_base"),
                         ": there are none; set fp8_base=true (PARAMS_FP8_BASE=true) or fp8_compute=auto or off"));
  if (config.get_string("blocks_to_swap") != "0" && config.get_string("network_type") == "none")
    errors.push_back(cat(d("blocks_to_swap"), " swaps frozen weights only (LoRA training), but ", d("network_type"),
                         "; set blocks_to_swap to 0 or train a LoRA"));
  if (!config.is_set("sample_prompts")) {
    for (const char* key : {"sample_every_n_steps", "sample_every_n_epochs"}) {
      if (config.changed(key) && config.get_int(key) > 0)  // the default cadence needs no prompts
        errors.push_back(cat(d(key),
                             " asks for samples, but there are no prompts: set SAMPLE_PROMPTS (--sample-prompts) "
                             "to a prompt file, or set ",
                             key, " to 0"));
    }
    if (config.get_bool("sample_at_first"))
      errors.push_back(cat(d("sample_at_first"),
                           " asks for samples, but there are no prompts: set SAMPLE_PROMPTS (--sample-prompts)"));
  }
  if (config.get_real("ema_decay") > 0 && config.get_string("network_type") == "none")
    errors.push_back(cat(d("ema_decay"), " averages a LoRA's weights; with ", d("network_type"),
                         " the average would be a second fp32 copy of the whole transformer, which fluxtrain does not "
                         "keep; set ema_decay to 0 or train a LoRA"));
  if (config.get_real("ema_decay") == 0) {
    for (const char* key : {"ema_samples", "use_ema_warmup", "ema_update_interval", "ema_update_after_step",
                            "ema_min_decay", "ema_inv_gamma", "ema_power", "ema_device"})
      if (config.changed(key)) warnings.push_back(cat(d(key), " has no effect without an EMA (ema_decay > 0)"));
  }
  if (config.get_bool("dim_from_weights") && !config.is_set("network_weights"))
    errors.push_back(cat(d("dim_from_weights"), " takes the network's ranks from network_weights, which is not set; "
                         "set network_weights (PARAMS_NETWORK_WEIGHTS) to a LoRA file or dim_from_weights to false"));
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
  if (warmup >= 1 && !config.is_set("max_train_epochs") && config.is_set("max_train_steps") &&
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
  if (config.changed("discrete_flow_shift") && sampling != "shift" && sampling != "sigma")
    warnings.push_back(
        cat(d("discrete_flow_shift"), " has no effect with ", d("timestep_sampling"), " (shift and sigma only)"));
  if (config.changed("sigmoid_scale") && (sampling == "uniform" || sampling == "sigma"))
    warnings.push_back(cat(d("sigmoid_scale"), " has no effect with ", d("timestep_sampling")));
  const std::string weighting = config.get_string("weighting_scheme");
  if ((weighting == "logit_normal" || weighting == "mode") && sampling != "sigma")
    warnings.push_back(cat(d("weighting_scheme"), " shapes only the draw of timestep_sampling sigma, but ",
                           d("timestep_sampling"), "; set timestep_sampling=sigma (PARAMS_TIMESTEP_SAMPLING=sigma)"));
  for (const char* key : {"logit_mean", "logit_std"}) {
    if (config.changed(key) && weighting != "logit_normal")
      warnings.push_back(cat(d(key), " has no effect with ", d("weighting_scheme"), " (logit_normal only)"));
  }
  if (config.changed("mode_scale") && weighting != "mode")
    warnings.push_back(cat(d("mode_scale"), " has no effect with ", d("weighting_scheme"), " (mode only)"));
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
  if (!config.is_set("hf_upload_repo")) {
    for (const char* key : {"upload_checkpoints", "upload_states", "hf_upload_private"}) {
      if (config.changed(key))
        warnings.push_back(cat(d(key), " has no effect without HF_UPLOAD_REPO (the Hub repository to upload to)"));
    }
  } else if (!config.is_set("hf_token")) {
    errors.push_back(cat("HF_TOKEN is not set, but ", d("hf_upload_repo"),
                         " needs a Hugging Face token with write "
                         "access there (huggingface.co/settings/tokens); set HF_TOKEN, or unset HF_UPLOAD_REPO"));
  }

  throw_errors(errors);
  return warnings;
}

}  // namespace fluxtrain::app
