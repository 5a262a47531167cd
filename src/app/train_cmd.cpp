// `fluxtrain train` (the main job) and `fluxtrain cache` (its first half: fetch, plan, fill the caches).
// Options come from the one train option table (train_options.h): flags > PARAMS_* / the seed's
// variables > --config TOML > defaults, all checked before any model is loaded.
//
// The run folder (OUTPUT_PATH): config.toml (the resolved options), dataset-plan.txt, monitor-token (the live
// page's, mode 0600), {name}-step{N}.safetensors, {name}.safetensors, state/step-N/ (exact resume), samples/,
// logs/ (fluxtrain.log, TensorBoard events),
// metrics.jsonl. A restarted pod resumes from the newest complete state when the options that shape the
// training and the dataset (its images, sizes and captions) are unchanged; changes a resume can honour (cadences, more
// steps or epochs, sampling) are applied and reported; any other change starts a fresh run in OUTPUT_PATH/run-<hash>
// rather than mixing two configurations.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <torch/cuda.h>

#include <charconv>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "app/commands.h"
#include "app/device.h"
#include "app/memory_planning.h"
#include "app/monitor_options.h"
#include "app/train_options.h"
#include "app/train_samples.h"
#include "core/atomic_file.h"
#include "core/enum_names.h"
#include "core/error.h"
#include "core/folder_lock.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/log_prefix.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "core/strings.h"
#include "data/dataset.h"
#include "data/hub_formats.h"
#include "data/lint.h"
#include "dist/launch.h"
#include "dist/process_group.h"
#include "fetch/dataset.h"
#include "fetch/hub_upload.h"
#include "models/convert.h"
#include "monitor/server.h"
#include "publish/publish.h"
#include "sample/prompts.h"
#include "report/report.h"
#include "train/block_swap.h"
#include "train/dataset_source.h"
#include "train/device_memory.h"
#include "train/state.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"
#include "train/trainer.h"

namespace fluxtrain::app {
namespace fs = std::filesystem;
namespace {

// The dataset as the training sees it: each image's path below its subset's folder (its file name unless the
// subset is recursive), size in bytes, caption, repeats and role, in plan order, hashed. The folder it sits
// in does not count (a dataset fetched into another cache is the same dataset); a changed, added or removed
// image or caption does.
std::string dataset_identity(const data::DatasetPlan& plan) {
  Sha256 hash;
  for (const auto& image : plan.images()) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(image.path, ec);
    const fs::path& dir = plan.config().datasets.at(image.dataset).subsets.at(image.subset).image_dir;
    hash.update(cat(image.dataset, "/", image.subset, "/", image.path.lexically_relative(dir).generic_string(), " ",
                    ec ? 0 : size, " ", image.num_repeats, image.is_reg ? " reg " : " train ", image.caption, "\n"));
  }
  return hash.hex_digest().substr(0, 12);
}

// The options that shape the training (resume rule `breaking`) as "name=value" lines and the dataset's
// identity, hashed.
std::string training_hash(const std::map<std::string, std::string>& values, const std::string& dataset) {
  std::string text;
  for (const auto& [name, value] : values) {
    if (train_options().at(name).resume == ResumeRule::breaking) text += name + "=" + value + "\n";
  }
  return sha256_hex(text + "dataset=" + dataset + "\n").substr(0, 12);
}

// The option values that identify the run: a per-rank value (a batch size) as the whole run's, times the
// ranks, so that 2 ranks x batch 2 and 1 rank x batch 4 are the same run.
std::map<std::string, std::string> run_values(const ResolvedConfig& config, int world) {
  std::map<std::string, std::string> values = config.value_texts();
  if (world == 1) return values;
  for (auto& [name, value] : values) {
    if (!train_options().at(name).per_rank) continue;
    int64_t n = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
    if (ec == std::errc() && end == value.data() + value.size()) value = std::to_string(n * world);
  }
  return values;
}

// Two option texts for the same value: equal, or the same number written differently (states of format 1
// wrote numbers with 17 significant digits).
bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char* end_a = nullptr;
  char* end_b = nullptr;
  const double x = std::strtod(a.c_str(), &end_a), y = std::strtod(b.c_str(), &end_b);
  return !a.empty() && !b.empty() && *end_a == '\0' && *end_b == '\0' && x == y;
}

struct RunPlan {
  fs::path dir;                  // the run folder
  std::string resume_state;      // "" = fresh
  bool resume_verified = false;  // resume_state was chosen by newest_sound_state, which verified it
};

// Where this run lives and whether it resumes (see the file comment).
RunPlan plan_run(const TrainSettings& settings, const std::map<std::string, std::string>& values,
                 const std::string& dataset) {
  RunPlan plan;
  const fs::path output(settings.output_path);
  plan.dir = output;
  if (!settings.resume_from.empty()) {
    plan.resume_state = settings.resume_from;
    return plan;
  }
  if (!settings.auto_resume) return plan;
  const std::string hash = training_hash(values, dataset);
  auto newest = train::newest_sound_state(output);
  if (!newest) {
    // A changed configuration may have started an alternate run before: resume that one.
    fs::path alternate = output / ("run-" + hash);
    if (auto alt = train::newest_sound_state(alternate)) {
      plan.dir = alternate;
      plan.resume_state = alt->string();
      plan.resume_verified = true;
    }
    return plan;
  }
  nlohmann::json saved, run_info;
  try {
    std::ifstream in(*newest / "state.json");
    std::stringstream text;
    text << in.rdbuf();
    check_json_depth(text.str(), (*newest / "state.json").string());
    run_info = nlohmann::json::parse(text.str()).value("run", nlohmann::json::object());
    saved = run_info.value("options", nlohmann::json::object());
  } catch (const std::exception&) {
    saved = nlohmann::json::object();
  }
  // An option the saved state does not know (a newer fluxtrain added it) had its default then: an upgrade
  // of the program does not start a new run by itself.
  const std::map<std::string, std::string> defaults = resolve(train_options(), {}).value_texts();
  std::vector<std::string> honoured, breaking;
  for (const auto& [name, value] : values) {
    if (!train_options().at(name).from_file) continue;  // a process's own variables (RANK, MASTER_PORT, ...)
    const std::string before = saved.contains(name) ? saved[name].get<std::string>() : defaults.at(name);
    if (same_value(before, value)) continue;
    const ResumeRule rule = train_options().at(name).resume;
    std::string change =
        cat(name, ": ", before, " -> ", value, rule == ResumeRule::memory_only ? " (memory only)" : "");
    (rule == ResumeRule::breaking ? breaking : honoured).push_back(change);
  }
  // A state of an older fluxtrain does not record its dataset: it is taken as this one.
  const std::string saved_dataset = run_info.value("dataset", dataset);
  if (saved_dataset != dataset)
    breaking.push_back(cat("the dataset (its images, sizes or captions): ", saved_dataset, " -> ", dataset));
  if (breaking.empty()) {
    plan.resume_state = newest->string();
    plan.resume_verified = true;
    for (const auto& c : honoured) log::info("changed since the saved state (applied to the resumed run): ", c);
    return plan;
  }
  for (const auto& c : breaking) log::warn("changed since the saved state in ", output.string(), ": ", c);
  plan.dir = output / ("run-" + hash);
  log::warn("these changes shape the training, so this is a new run in ", plan.dir.string(), " (the run in ",
            output.string(), " is left as it is)");
  if (auto alt = train::newest_sound_state(plan.dir)) {
    plan.resume_state = alt->string();
    plan.resume_verified = true;
  }
  return plan;
}

// `adjust` sees the dataset configs before the plan is built (the memory planner fills in batch_size = auto).
// DATASET_NAME fetched (and a Hub format turned into images and captions) into the dataset cache; "" when
// there is none.
fs::path fetch_dataset_folder(const TrainSettings& settings) {
  fs::path fetched;
  if (!settings.dataset_name.empty()) {
    fetched =
        fetch::fetch_dataset(settings.dataset_name, dataset_cache_dir(settings.downloads), settings.downloads.fetch);
    log::info("dataset ", redact_url(settings.dataset_name), ": ", fetched.string());
    // Parquet files or an imagefolder's metadata become images + captions once, in the dataset cache.
    data::HubFormatOptions hub = settings.hub_formats;
    hub.cache_dir = dataset_cache_dir(settings.downloads);
    fetched = data::prepare_hub_dataset(fetched, hub);
  }
  return fetched;
}

// How a run scans its images: the training images, or those held out for validation (by the run's seed).
data::ScanOptions scan_options(const TrainSettings& settings, data::DatasetPart part) {
  data::ScanOptions scan;
  scan.probe = data::default_image_probe();
  scan.part = part;
  scan.seed = settings.training.seed;
  return scan;
}

std::shared_ptr<data::DatasetPlan> build_dataset(const TrainSettings& settings, const fs::path& fetched,
                                                 const std::function<void(data::DatasetGroupConfig&)>& adjust) {
  data::ConfigOptions options;
  options.fallbacks = settings.dataset_fallbacks;
  if (!fetched.empty()) options.default_image_dir = fetched;
  data::DatasetGroupConfig group = settings.dataset_config.empty()
                                       ? data::folder_dataset_config(fetched, options)
                                       : data::load_dataset_config(settings.dataset_config, options);
  if (adjust) adjust(group);
  return std::make_shared<data::DatasetPlan>(
      data::DatasetPlan::build(std::move(group), scan_options(settings, data::DatasetPart::training)));
}

// The images held out for the validation loss (validation_split), batched per device; null when none are.
// `root` says what it holds.
std::shared_ptr<data::DatasetPlan> build_validation(const TrainSettings& settings, data::DatasetGroupConfig group,
                                                    bool root) {
  bool split = false;
  for (const auto& d : group.datasets)
    for (const auto& s : d.subsets) split = split || (s.validation_split > 0 && !s.is_reg);
  if (!split) return nullptr;
  auto plan = std::make_shared<data::DatasetPlan>(
      data::DatasetPlan::build(std::move(group), scan_options(settings, data::DatasetPart::validation)));
  if (plan->images().empty()) {
    if (root)
      log::warn("validation_split holds out no image (a subset of one image keeps it for training): no validation loss");
    return nullptr;
  }
  if (root) log::info("validation: ", plan->images().size(), " held-out images in ", plan->steps_per_epoch(), " batches, at ",
            std::size(train::kValidationSigmas), " fixed noise levels each");
  return plan;
}

// The cheap part of `fluxtrain dataset --lint`, from the plan alone (no image is decoded: a large dataset
// would wait minutes): skipped files, upscaled images, extreme aspect ratios, empty, label-like and too long
// captions; one line, a warning when anything is found.
void log_dataset_lint(const data::DatasetPlan& plan, int t5_max_length) {
  const ClipTokenizer clip = ClipTokenizer::from_assets();
  const T5Tokenizer t5 = T5Tokenizer::from_assets();
  data::LintOptions options;
  options.decode = false;
  options.clip = &clip;
  options.t5 = &t5;
  options.t5_max_length = t5_max_length;
  const data::LintReport report = data::lint_dataset(plan, options);
  if (report.findings.empty()) {
    log::info("dataset ", report.summary());
  } else {
    log::warn("dataset ", report.summary(),
              " (`fluxtrain dataset --lint` names them, decodes every image, finds duplicates and draws the crops)");
  }
}

train::TrainerConfig trainer_config(const ResolvedConfig& config, const std::map<std::string, std::string>& values,
                                    const TrainSettings& settings,
                                    const ModelFiles& files, const RunPlan& run, const data::DatasetPlan& plan,
                                    at::Device device, at::ScalarType precision) {
  train::TrainerConfig t;
  static_cast<train::TrainOptions&>(t) = settings.training;
  t.model_path = files.model;
  t.model.device = device;
  t.model.dtype = precision;
  t.model.fp8_base = settings.training.fp8_base;
  t.compute_dtype = precision;
  t.output_dir = run.dir;
  t.resume_from = run.resume_state;
  t.resume_verified = run.resume_verified;
  t.file_info.architecture = settings.models.base_model == BaseModel::schnell ? "flux-1-schnell" : "flux-1-dev";
  t.file_info.title = t.output_name;
  t.file_info.created_at = settings.engine.source_date_epoch;
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
  for (const auto& trigger : triggers)
    t.file_info.trigger_phrase += (t.file_info.trigger_phrase.empty() ? "" : ", ") + trigger;
  // kohya's ss_* keys: those the option table declares, and what only the run knows.
  for (const auto& [key, value] : config.metadata()) t.file_info.training[key] = value;
  t.file_info.training.insert({
      {"ss_optimizer", optim::describe(t.optimizer)},
      {"ss_num_train_images", std::to_string(plan.train_samples())},
      {"ss_num_reg_images", std::to_string(plan.reg_samples())},
      {"ss_num_batches_per_epoch", std::to_string(plan.steps_per_epoch())},
      {"ss_mixed_precision", c10::toString(t.compute_dtype)},
      {"ss_sd_model_name", fs::path(files.model).filename().string()},
      {"ss_vae_name", fs::path(files.ae).filename().string()},
  });
  const std::string dataset = dataset_identity(plan);
  t.run_info = {{"options", values}, {"dataset", dataset}, {"training_hash", training_hash(values, dataset)}};
  return t;
}

// `--nproc N` (or auto): the number of ranks this command starts itself; 1 = train in this process.
int local_processes(const TrainSettings& settings, const at::Device& device) {
  const std::string& n = settings.distributed.num_processes;
  if (n != "auto") return std::stoi(n);
  // A device named with its index (cuda:1) is one GPU: one process.
  return device.is_cuda() && !device.has_index() ? std::max<int>(1, static_cast<int>(torch::cuda::device_count())) : 1;
}

// What must be the same on every rank: the options (not the rank's own variables) and the model files
// (size and the hash of their first MiB). Differences are an Error naming each, on every rank.
void check_same_setup(train::Parallel& group, const ResolvedConfig& config, const ModelFiles& files) {
  nlohmann::json mine;
  for (const auto& [name, value] : config.value_texts()) {
    if (train_options().at(name).group != "distributed") mine["option " + name] = value;
  }
  for (const std::string& file : {files.model, files.ae, files.clip_l, files.t5xxl}) {
    if (file.empty()) continue;
    std::ifstream in(file, std::ios::binary);
    std::string head(1 << 20, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<size_t>(in.gcount()));
    std::error_code ec;
    mine["model file " + fs::path(file).filename().string()] =
        cat(fs::file_size(file, ec), " bytes, sha256 of the first MiB ", sha256_hex(head).substr(0, 12));
  }
  const std::vector<std::string> all = group.gather_text(mine.dump(), "the start (the ranks' options and models)");
  const nlohmann::json first = nlohmann::json::parse(all.at(0));
  std::vector<std::string> differences;
  for (size_t r = 1; r < all.size(); ++r) {
    const nlohmann::json other = nlohmann::json::parse(all[r]);
    std::set<std::string> keys;
    for (const auto& [k, v] : first.items()) keys.insert(k);
    for (const auto& [k, v] : other.items()) keys.insert(k);
    for (const auto& key : keys) {
      const std::string a = first.value(key, std::string("(none)")), b = other.value(key, std::string("(none)"));
      if (a != b) differences.push_back(cat(key, ": ", b, " on rank ", r, ", ", a, " on rank 0"));
    }
  }
  if (differences.empty()) return;
  std::string text;
  for (size_t i = 0; i < differences.size() && i < 8; ++i) text += (i ? "; " : "") + differences[i];
  fail("the ranks do not run the same training: ", text, differences.size() > 8 ? " (and more)" : "",
       ". Every rank must get the same flags, variables, config file and model files (torchrun passes one "
       "command line to all; on several machines, give each the same files and settings)");
}

// HF_UPLOAD_REPO's checks at the start, before hours of training: a token that can write there, and the
// repository (created when missing). A refused token or a bad repository is an Error; a Hub that cannot be
// reached now is a warning (the uploads retry later).
void check_hub_upload(const TrainSettings& settings) {
  const PublishSettings& publish = settings.publish;
  const fetch::FetchOptions& fetch = settings.downloads.fetch;
  if (fetch.hf_token.empty())
    fail("HF_UPLOAD_REPO is ", publish.repo, " but HF_TOKEN is not set: give a Hugging Face token with write access ",
         "(huggingface.co/settings/tokens, \"Write\" or fine-grained with write access to ", publish.repo,
         "), or unset HF_UPLOAD_REPO");
  // A refused token or namespace is the user's to fix now; a Hub that does not answer may answer later.
  auto unreachable = [&](const Error& e) {
    const auto* status = dynamic_cast<const fetch::HttpStatusError*>(&e);
    if (status != nullptr &&
        (status->status == 400 || status->status == 401 || status->status == 403 || status->status == 404))
      fail("HF_UPLOAD_REPO=", publish.repo, ": ", e.what());
    log::warn("HF_UPLOAD_REPO=", publish.repo, ": the Hub cannot be asked now (", e.what(),
              "); the uploads will try again when they are due");
  };
  fetch::HubUser user;
  try {
    user = fetch::hub_whoami(fetch);
  } catch (const Error& e) {
    return unreachable(e);
  }
  if (user.role == "read")
    fail("HF_UPLOAD_REPO is ", publish.repo, " but HF_TOKEN (of ", user.name, ") is a read-only token: create one ",
         "with write access at huggingface.co/settings/tokens");
  try {
    fetch::hub_create_repo(publish.repo, publish.private_repo, fetch);
  } catch (const Error& e) {
    return unreachable(e);
  }
  log::info("results go to https://huggingface.co/", publish.repo, " (HF_UPLOAD_REPO, as ", user.name, ")",
            publish.upload_states ? "; states too (upload_states)" : "");
}

// The model card's facts, from what the trainer's LoRA file records.
publish::ModelCardInfo model_card_info(const TrainSettings& settings, const train::TrainerConfig& trainer) {
  publish::ModelCardInfo card;
  const bool schnell = settings.models.base_model == BaseModel::schnell;
  card.base_model = schnell ? "black-forest-labs/FLUX.1-schnell" : "black-forest-labs/FLUX.1-dev";
  if (schnell) {
    card.license = "apache-2.0";
  } else {
    card.license = "other";
    card.license_name = "flux-1-dev-non-commercial-license";
    card.license_link = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md";
  }
  card.trigger_words = trainer.file_info.trigger_phrase;
  if (!settings.sample_prompts.empty()) {
    for (const auto& prompt : sample::load_prompts(settings.sample_prompts)) card.prompts.push_back(prompt.prompt);
  }
  card.settings.emplace_back("rank (network_dim)", std::to_string(trainer.lora.rank));
  card.settings.emplace_back("alpha (network_alpha)", cat(trainer.lora.alpha));
  if (trainer.file_info.width > 0)
    card.settings.emplace_back("resolution", cat(trainer.file_info.width, "x", trainer.file_info.height));
  const std::pair<const char*, const char*> shown[] = {
      {"ss_optimizer", "optimizer"},       {"ss_learning_rate", "learning rate"},      {"ss_lr_scheduler", "schedule"},
      {"ss_max_train_steps", "steps"},     {"ss_num_train_images", "training images"}, {"ss_seed", "seed"},
      {"ss_noise_offset", "noise offset"},
  };
  for (const auto& [key, label] : shown) {
    auto it = trainer.file_info.training.find(key);
    if (it != trainer.file_info.training.end() && !it->second.empty()) card.settings.emplace_back(label, it->second);
  }
  return card;
}

int run_train_inner(const ResolvedConfig& config, bool cache_only, std::unique_ptr<publish::Publisher>& publisher);

int run_train(const ResolvedConfig& config, bool cache_only) {
  // The webhook hears of a failure from here, the one way out of every error.
  std::unique_ptr<publish::Publisher> publisher;
  try {
    return run_train_inner(config, cache_only, publisher);
  } catch (const std::exception& e) {
    if (publisher) {
      publisher->failed(e.what());
      publisher->finish();
    }
    throw;
  }
}

int run_train_inner(const ResolvedConfig& config, bool cache_only, std::unique_ptr<publish::Publisher>& publisher) {
  const TrainSettings settings = config.bind<TrainSettings>();
  const TrainSettings::Distributed& dist_settings = settings.distributed;
  at::Device device = resolve_device(settings.compute, settings.engine);
  // `--nproc N` without torchrun's variables: this process starts and supervises N ranks (src/dist/launch.h).
  if (!cache_only && !dist_settings.world_size) {
    const int n = local_processes(settings, device);
    if (n > 1) {
      dist::LaunchOptions launch;
      launch.processes = n;
      launch.master_addr = dist_settings.master_addr;
      launch.master_port = static_cast<int>(dist_settings.master_port.value_or(0));
      launch.collective_timeout = dist_settings.collective_timeout_seconds;
      launch.cpu_threads = static_cast<int>(dist_settings.cpu_threads_per_process);
      return dist::launch_local_ranks(launch);
    }
  }
  // From here on SIGTERM/SIGINT stop the run at the next poll point of whatever phase it is in, exit 0.
  stop::install(settings.training.stop_grace_seconds);
  const int world = cache_only ? 1 : static_cast<int>(dist_settings.world_size.value_or(1));
  dist::RankInfo rank_info;
  if (world > 1) {
    if (!dist_settings.rank || !dist_settings.master_port)
      fail("WORLD_SIZE is ", world, " but ", !dist_settings.rank ? "RANK" : "MASTER_PORT", " is not set: start the ",
           "ranks with torchrun (which sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT) or with --nproc N");
    rank_info.rank = static_cast<int>(*dist_settings.rank);
    rank_info.world_size = world;
    rank_info.local_rank = static_cast<int>(dist_settings.local_rank.value_or(*dist_settings.rank));
    rank_info.local_world_size = static_cast<int>(dist_settings.local_world_size.value_or(world));
    rank_info.master_addr = dist_settings.master_addr;
    rank_info.master_port = static_cast<int>(*dist_settings.master_port);
    rank_info.use_agent_store = dist_settings.use_agent_store;
    rank_info.restart_count = static_cast<int>(dist_settings.restart_count);
    if (rank_info.rank >= world) fail("RANK ", rank_info.rank, " is not below WORLD_SIZE ", world);
    if (rank_info.rank != 0) {
      // Rank 0 tells the run; the others speak up only for warnings and errors.
      log::set_prefix(cat("[rank ", rank_info.rank, "] "));
      if (log::level() == log::Level::info) log::set_level(log::Level::warn);
    }
  }
  const bool root = rank_info.rank == 0;
  const ModelFiles files = find_model_files(settings.models);
  // The transformer's shape, from its header (any layout): the memory plan's, and the bound of
  // blocks_to_swap, checked before anything is written.
  const models::FluxConfig model_config = models::read_flux_config(files.model);
  if (settings.training.blocks_to_swap > 0 && !cache_only)
    train::check_blocks_to_swap(settings.training.blocks_to_swap, model_config);
  if (world > 1 && device.is_cuda()) {
    // One GPU per rank: its LOCAL_RANK-th.
    const int64_t gpus = torch::cuda::device_count();
    if (rank_info.local_rank >= gpus)
      fail("LOCAL_RANK ", rank_info.local_rank, " has no GPU of its own: this machine shows ", gpus, " (one rank per "
           "GPU: --nproc ", gpus, " or torchrun --nproc-per-node ", gpus, ")");
    device = at::Device(device.type(), static_cast<c10::DeviceIndex>(rank_info.local_rank));
  }
  const at::ScalarType precision = resolve_precision(settings.compute.precision, device);
  std::unique_ptr<train::Parallel> parallel;
  if (world > 1) {
    dist::GroupOptions group_options;
    group_options.timeout_seconds = dist_settings.collective_timeout_seconds;
    group_options.device = device;
    parallel = dist::join_group(rank_info, group_options);
    check_same_setup(*parallel, config, files);
    const int threads = at::get_num_threads();
    log::info("rank 0 of ", world, " (", dist::backend_name(device), " on ", device.str(), ", ", threads, " CPU thread",
              threads == 1 ? "" : "s", "): the global batch is ",
              world, " x the dataset's batch_size x gradient_accumulation_steps");
  }
  // fp8 compute is decided now, before the dataset and the weights: a mode the device cannot run stops
  // the run here. A cache run loads no transformer.
  Fp8ComputeDecision fp8;
  if (!cache_only)
    fp8 = resolve_fp8_compute(settings.fp8_compute, settings.training.fp8_base, device, precision,
                              settings.fp8_compute_origin);

  // One trainer per OUTPUT_PATH (its run-* folders included); what a killed one left half-written goes.
  // Rank 0 alone writes in it.
  std::optional<FolderLock> lock;
  if (root) {
    lock.emplace(settings.output_path, "OUTPUT_PATH");
    train::remove_stale_temporaries(settings.output_path);
  }
  const PublishSettings& publish = settings.publish;
  if (root && !cache_only && (!publish.repo.empty() || !publish.webhook_url.empty())) {
    if (!publish.repo.empty()) check_hub_upload(settings);
    publish::PublishConfig p;
    p.repo = publish.repo;
    p.upload_checkpoints = publish.upload_checkpoints;
    p.upload_states = publish.upload_states;
    p.keep_states = std::max(1, settings.training.keep_last_n_states);
    p.webhook_url = publish.webhook_url;
    p.fetch = settings.downloads.fetch;
    p.backoff_seconds = settings.downloads.fetch.http.backoff_seconds * 2;
    p.wait_seconds = publish.wait_seconds;
    // The live page's address (without its token) for the webhook's messages.
    p.page_url = live_page_url(settings.monitor, static_cast<int>(settings.monitor.port));
    publisher = std::make_unique<publish::Publisher>(std::move(p));
  }
  int64_t device_batch = 1;  // the dataset's batch_size per rank (its largest)
  // The memory plan (train/memory_plan.h) before the dataset is planned: it resolves batch_size = auto and
  // the other automatic choices, and is printed; without automatic choices it only informs.
  PlannedRun memory;
  bool planned = false;
  auto plan_memory = [&](data::DatasetGroupConfig& group) {
    int batch = 1;
    for (const auto& d : group.datasets) batch = std::max(batch, d.batch_size);
    for (const auto& d : group.datasets)
      if (d.batch_size == data::kAutoBatchSize) batch = data::kAutoBatchSize;
    const bool any_auto = batch == data::kAutoBatchSize || settings.keep_products_auto || settings.blocks_to_swap_auto;
    try {
      std::optional<int64_t> free;
      if (device.is_cuda()) {
        try {
          free = train::device_free_bytes(device);
        } catch (const Error&) {
          if (settings.vram_gb <= 0 && any_auto) throw;
        }
      }
      memory = plan_run_memory(settings, model_config, device.is_cuda(), at::elementSize(precision),
                               planned_resolution(settings, &group), batch, free, device.str());
      memory.model_note = "the header of " + files.model;
      planned = true;
    } catch (const Error& e) {
      if (any_auto) throw;
      log::warn("no memory plan: ", e.what());
      return;
    }
    if (parallel && batch == data::kAutoBatchSize) {
      // One batch for all ranks: the smallest that every rank's plan fits.
      for (const auto& b : parallel->gather_text(std::to_string(memory.batch), "batch_size = auto (every rank's plan)"))
        memory.batch = std::min<int64_t>(memory.batch, std::stoll(b));
    }
    for (auto& d : group.datasets)
      if (d.batch_size == data::kAutoBatchSize) d.batch_size = static_cast<int>(memory.batch);
    log::info(describe_plan(memory, {memory.batch}));
  };
  // The dataset's batch_size is per rank: the plan's batches are the global batches, which the ranks share.
  std::optional<data::DatasetGroupConfig> per_device;  // the config with the batches of one device
  auto plan_batches = [&](data::DatasetGroupConfig& config_group) {
    plan_memory(config_group);
    per_device = config_group;
    for (auto& d : config_group.datasets) {
      device_batch = std::max<int64_t>(device_batch, d.batch_size);
      d.batch_size *= world;
    }
  };
  // Each machine's first rank fetches the dataset; the others find it in the cache.
  fs::path fetched;
  if (rank_info.local_rank == 0) fetched = fetch_dataset_folder(settings);
  if (parallel) parallel->wait_for_all("the dataset download (each machine's first rank fetches it)", 86400);
  if (rank_info.local_rank != 0) fetched = fetch_dataset_folder(settings);
  std::shared_ptr<data::DatasetPlan> plan = build_dataset(settings, fetched, plan_batches);
  const int t5_max_length = settings.t5_max_length > 0
                                ? static_cast<int>(settings.t5_max_length)
                                : (settings.models.base_model == BaseModel::schnell ? 256 : 512);
  if (root) log_dataset_lint(*plan, t5_max_length);
  stop::check("the dataset scan");
  const std::map<std::string, std::string> values = run_values(config, world);
  // A fresh pod (no state in OUTPUT_PATH) with upload_states continues from the newest state on the Hub.
  if (root && !cache_only && publish.upload_states && !publish.repo.empty() && settings.auto_resume &&
      settings.resume_from.empty() && !train::newest_state(settings.output_path)) {
    try {
      publish::pull_hub_state(publish.repo, settings.output_path, settings.downloads.fetch);
    } catch (const Error& e) {
      fail("OUTPUT_PATH has no state, and the newest state on the Hub (HF_UPLOAD_REPO=", publish.repo,
           ", upload_states) cannot be fetched: ", e.what(), ". Try again when the Hub answers; to start afresh ",
           "instead, set PARAMS_UPLOAD_STATES=false");
    }
  }
  RunPlan run;
  if (cache_only) {
    run = RunPlan{fs::path(settings.output_path), ""};
  } else if (root) {
    run = plan_run(settings, values, dataset_identity(*plan));
  }
  if (parallel) {
    // Rank 0's decision (its folder, its state) for all.
    const nlohmann::json shared = nlohmann::json::parse(parallel->broadcast_text(
        nlohmann::json{{"dir", run.dir.string()}, {"resume", run.resume_state}, {"verified", run.resume_verified}}.dump(),
        "the run plan (rank 0's folder and state)"));
    run.dir = shared.at("dir").get<std::string>();
    run.resume_state = shared.at("resume").get<std::string>();
    run.resume_verified = shared.at("verified").get<bool>();
  }

  train::DatasetSourceOptions source_options;
  source_options.cache_dir = settings.cache_dir;
  if (source_options.cache_dir.empty()) source_options.cache_dir = fs::path(settings.output_path) / "cache";
  source_options.encoders.device = device;
  source_options.encoders.dtype = precision;
  source_options.text.t5_max_length = t5_max_length;
  source_options.text.t5_attn_mask = settings.t5_attn_mask;
  source_options.seed = settings.training.seed;
  source_options.rank = rank_info.rank;
  source_options.world_size = world;
  source_options.cache_text = settings.cache_text_encoder_outputs;
  const train::EncoderFiles encoder_files{files.ae, files.clip_l, files.t5xxl};
  train::DatasetSource source(plan, encoder_files, source_options);
  // The held-out images are cached with the training images (one load of the encoders); rank 0 computes the
  // validation loss over its own source of them.
  const std::shared_ptr<data::DatasetPlan> validation_plan =
      per_device ? build_validation(settings, *per_device, root) : nullptr;
  // The ranks of a machine fill its caches together, then all wait until every shard is there.
  log::info(source.prepare(rank_info.local_rank, rank_info.local_world_size, validation_plan.get()));
  std::unique_ptr<train::DatasetSource> validation;
  if (root && validation_plan) {
    train::DatasetSourceOptions one = source_options;
    one.rank = 0;
    one.world_size = 1;
    validation = std::make_unique<train::DatasetSource>(validation_plan, encoder_files, one);
  }
  if (parallel) parallel->wait_for_all("the cache filling (each rank fills its share)", 86400);
  if (cache_only) return 0;

  train::TrainerConfig trainer = trainer_config(config, values, settings, files, run, *plan, device, precision);
  if (planned) {
    trainer.step.checkpointing.keep_per_block = memory.inputs.checkpointing.keep_per_block;
    if (memory.keep_auto) trainer.step.checkpointing.keep_products = memory.inputs.checkpointing.keep_products;
    if (memory.swap_auto) {
      trainer.blocks_to_swap = memory.inputs.blocks_to_swap;
      if (trainer.blocks_to_swap > 0) train::check_blocks_to_swap(trainer.blocks_to_swap, memory.inputs.model);
    }
    trainer.planned_peak_bytes = memory.plan.peak(memory.batch);
    trainer.planned_budget_bytes = memory.budget;
  }
  trainer.model.fp8_matmul = fp8.mode;
  trainer.parallel = parallel.get();
  trainer.device_batch = device_batch;
  trainer.validation = validation.get();
  trainer.validation_seed = settings.training.seed;
  trainer.clip_path = files.clip_l;
  trainer.t5_path = files.t5xxl;
  trainer.encoder_options = source_options.encoders;
  trainer.text_options = source_options.text;
  if (root) {
    fs::create_directories(run.dir / "logs");
    write_file_atomic((run.dir / "config.toml").string(), config.to_toml());
    // The dataset plan as the run saw it (the live page shows it, also for a finished run).
    std::string plan_text = cat(plan->summary(), "\n", plan->train_samples(), " training samples (images x repeats) and ",
                                plan->reg_samples(), " regularisation samples per epoch, ", plan->steps_per_epoch(),
                                " steps per epoch\nbuckets:\n");
    for (const data::PlanBucket& bucket : plan->buckets())
      plan_text += cat("  dataset ", bucket.dataset, "  ", bucket.resolution.width, "x", bucket.resolution.height, ": ",
                       bucket.images.size(), " images, ", bucket.samples, " samples, ", bucket.batches, " batches\n");
    write_file_atomic((run.dir / "dataset-plan.txt").string(), plan_text);
    log::add_file_sink((run.dir / "logs" / "fluxtrain.log").string());
  }
  log::info("training ", trainer.output_name, " in ", run.dir.string(), " on ", trainer.model.device.str(), " (",
            c10::toString(trainer.compute_dtype), ")",
            run.resume_state.empty() ? "" : ", resuming from " + run.resume_state);
  log::info(fp8.line);
  // Samples (app/train_samples.h): the prompts are encoded now (the text encoders are freed again); the AE stays.
  std::unique_ptr<sample::Sampler> sampler;
  train::SampleHook hook;
  const bool sampling =
      trainer.sample_every_n_steps > 0 || trainer.sample_every_n_epochs > 0 || trainer.sample_at_first;
  if (!settings.sample_prompts.empty() && sampling && root) {  // rank 0 renders the samples
    sampler = make_training_sampler(settings.sample_prompts, files, source_options.text, device, precision, trainer,
                                    run.dir);
    hook = training_sample_hook(*sampler);
  }
  // The sample grid and loss plot with every checkpoint, report.html at the end (rank 0, on its own thread).
  std::unique_ptr<report::ReportWriter> pictures;
  if (root) {
    pictures = std::make_unique<report::ReportWriter>(run.dir, trainer.output_name);
    trainer.hooks.listeners.push_back(pictures->listener());
  }
  // The live page (rank 0): its listener and its save / sample requests; it outlives the training loop.
  train::RunRequests page_requests;
  std::unique_ptr<monitor::MonitorServer> page;
  if (root) {
    monitor::MonitorOptions page_options;
    page_options.folder = run.dir;
    page_options.requests = &page_requests;
    page_options.run_info = {{"command", "train"},
                             {"images_per_step", device_batch * world * settings.training.gradient_accumulation}};
    page = start_live_page(settings.monitor, settings.output_path, std::move(page_options), false);
    if (page) {
      trainer.hooks.listeners.push_back(page->listener());
      trainer.hooks.requests = &page_requests;
    }
  }
  // The run's end reaches the publisher only once the pictures are drawn: its upload takes the newest grid
  // and loss plot.
  std::optional<train::RunEvent> end_event;
  if (publisher) {
    publisher->set_run(run.dir, trainer.output_name, model_card_info(settings, trainer));
    trainer.hooks.listeners.push_back([listener = publisher->listener(), &end_event](const train::RunEvent& event) {
      if (event.kind == "end")
        end_event = event;
      else
        listener(event);
    });
  }
  train::TrainResult result = train::train(trainer, source, hook);
  if (pictures) pictures->finish();
  if (publisher) {
    if (end_event) publisher->listener()(*end_event);
    publisher->finish();
  }
  log::info(result.interrupted ? "stopped" : "done", ": ", result.steps, "/", result.total_steps, " steps in ",
            result.seconds, " s, last loss ", result.last_loss, ", peak memory ",
            result.peak_memory_bytes >= 0 ? format_bytes(result.peak_memory_bytes) : std::string("unknown"),
            "; the steps waited for data ", 100.0 * result.data_wait_share, " % of their time; ", result.files.size(),
            " file", result.files.size() == 1 ? "" : "s", " written:");
  for (const auto& file : result.files) std::cout << file << "\n";
  if (parallel) parallel->barrier("the end (every rank done)");
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& app) {
  return add_table_command(app, command_info("train"),
                           [](const ResolvedConfig& config) { return run_train(config, false); });
}

Command add_cache_command(CLI::App& app) {
  return add_table_command(app, command_info("cache"),
                           [](const ResolvedConfig& config) { return run_train(config, true); });
}

}  // namespace fluxtrain::app
