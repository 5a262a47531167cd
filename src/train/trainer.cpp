#include "train/trainer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <functional>
#include <limits>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/tfevents.h"
#include "core/train_progress.h"
#include "data/image.h"
#include "core/safetensors.h"
#include "core/stop.h"
#include "lora/text_encoder_network.h"
#include "models/convert.h"
#include "optim/optimizer.h"
#include "train/block_swap.h"
#include "train/device_memory.h"
#include "train/ema.h"
#include "train/prefetch.h"
#include "train/state.h"
#include "train/trainable.h"

namespace fluxtrain::train {
namespace fs = std::filesystem;
namespace {

std::string numbered(const std::string& name, const char* what, int64_t n, int width) {
  char text[64];
  std::snprintf(text, sizeof(text), "-%s%0*lld", what, width, static_cast<long long>(n));
  return name + text + ".safetensors";
}

// Peak bytes held by tensors on the device (CUDA), or the process's peak RSS on the CPU; -1 if unknown.
double peak_memory_bytes(const at::Device& device) {
  if (device.is_cuda()) {
    try {
      return static_cast<double>(device_peak_allocated_bytes(device));
    } catch (const std::exception&) {
      return -1;
    }
  }
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
  return static_cast<double>(usage.ru_maxrss) * 1024.0;
}

// Named tensors as JSON [[name, dtype, sizes], ...], for another rank to allocate them (received_tensor) before
// they are broadcast.
nlohmann::json describe_tensors(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, tensor] : tensors) out.push_back({name, static_cast<int>(tensor.scalar_type()), tensor.sizes().vec()});
  return out;
}

// An empty tensor of one describe_tensors() entry, to broadcast into.
at::Tensor received_tensor(const nlohmann::json& entry) {
  return at::empty(entry.at(2).get<std::vector<int64_t>>(),
                   at::TensorOptions().dtype(static_cast<at::ScalarType>(entry.at(1).get<int>())));
}

// A state as rank 0 read it, on every rank: its description through the store, its tensors broadcast
// (so that ranks on other machines need no copy of OUTPUT_PATH).
void share_state(TrainingState& state, Parallel& par, const std::function<bool(const std::string&)>& keep_optimizer) {
  const bool root = par.rank() == 0;
  const std::string phase = "the resume (rank 0's state to every rank)";
  nlohmann::json d;
  if (root)
    d = {{"info", state.info},
         {"trainable", describe_tensors(state.trainable)},
         {"optimizer", describe_tensors(state.optimizer_tensors)}};
  d = nlohmann::json::parse(par.broadcast_text(root ? d.dump() : std::string(), phase));
  if (!root) state.info = d.at("info");
  // One tensor at a time; an optimizer tensor this rank does not keep (ZeRO stage 1) is dropped at once.
  auto share = [&](const nlohmann::json& list, std::vector<std::pair<std::string, at::Tensor>>& tensors,
                   const std::function<bool(const std::string&)>& keep) {
    std::vector<std::pair<std::string, at::Tensor>> kept;
    for (size_t k = 0; k < list.size(); ++k) {
      const std::string name = list[k].at(0).get<std::string>();
      std::vector<at::Tensor> one = {root ? tensors[k].second : received_tensor(list[k])};
      par.broadcast(one, phase);
      if (!keep || keep(name)) kept.emplace_back(name, one[0]);
    }
    tensors = std::move(kept);
  };
  share(d.at("trainable"), state.trainable, nullptr);
  share(d.at("optimizer"), state.optimizer_tensors, keep_optimizer);
}

// ZeRO stage 1: each trained tensor's rank, the largest first to the least loaded rank.
std::vector<int> shard_owners(const std::vector<at::Tensor>& params, int world) {
  std::vector<size_t> order(params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return params[a].numel() > params[b].numel(); });
  std::vector<int64_t> load(static_cast<size_t>(world), 0);
  std::vector<int> owner(params.size(), 0);
  for (size_t i : order) {
    const int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = r;
    load[static_cast<size_t>(r)] += params[i].numel();
  }
  return owner;
}

// The parameter index of an optimizer state tensor's name ("<index>.<slot>").
size_t state_index(const std::string& name) { return std::stoul(name.substr(0, name.find('.'))); }

// ZeRO stage 1: every rank's optimizer state tensors, on rank 0 (in the order one optimizer lists them);
// the other ranks get an empty list. Collective.
std::vector<std::pair<std::string, at::Tensor>> gather_optimizer_state(
    const std::vector<std::pair<std::string, at::Tensor>>& mine, Parallel& par) {
  const std::string phase = "the state's sharded optimizer tensors";
  const std::vector<std::string> all = par.gather_text(describe_tensors(mine).dump(), phase);
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (int r = 0; r < par.world_size(); ++r) {
    const nlohmann::json list = nlohmann::json::parse(all[static_cast<size_t>(r)]);
    for (size_t k = 0; k < list.size(); ++k) {
      std::vector<at::Tensor> one = {r == par.rank() ? mine[k].second.contiguous() : received_tensor(list[k])};
      par.broadcast(one, phase, r);
      if (par.rank() == 0) out.emplace_back(list[k].at(0).get<std::string>(), one[0]);
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    const size_t x = state_index(a.first), y = state_index(b.first);
    return x != y ? x < y : a.first < b.first;
  });
  return out;
}

// A resume at another world size continues only with the same global batch; else this names the settings
// that would give it.
void check_world_change(const std::string& dir, const nlohmann::json& info, int world, int64_t device_batch,
                        int64_t ga) {
  const int64_t saved_world = info.value("world", int64_t{1});
  if (saved_world == world) return;
  const int64_t saved_batch = info.value("device_batch", device_batch);
  const int64_t saved_ga = info.value("gradient_accumulation", ga);
  const int64_t before = saved_world * saved_batch * saved_ga, now = world * device_batch * ga;
  if (before == now) {
    log::info("this state was trained on ", saved_world, " rank", saved_world == 1 ? "" : "s", " x batch ",
              saved_batch, " x accumulation ", saved_ga, "; this run has ", world, " x ", device_batch, " x ", ga,
              ": the same global batch (", now, " images per step), so it continues from the same step and data "
              "position (docs/distributed.md: within the stated tolerance of an uninterrupted run)");
    return;
  }
  std::vector<std::string> fits;
  if (before % (world * ga) == 0)
    fits.push_back(cat("batch_size = ", before / (world * ga), " per device in the dataset config"));
  if (before % (world * device_batch) == 0)
    fits.push_back(cat("gradient_accumulation_steps = ", before / (world * device_batch)));
  fits.push_back(cat(saved_world, " rank", saved_world == 1 ? "" : "s", " (--nproc ", saved_world,
                     " / PARAMS_NUM_PROCESSES)"));
  std::string options;
  for (size_t i = 0; i < fits.size(); ++i) options += (i == 0 ? "" : i + 1 == fits.size() ? ", or " : ", ") + fits[i];
  fail(dir, ": this state was trained on ", saved_world, " rank", saved_world == 1 ? "" : "s", " x batch ", saved_batch,
       " per device x gradient accumulation ", saved_ga, " = ", before, " images per optimizer step; this run has ",
       world, " x ", device_batch, " x ", ga, " = ", now, ". A resume at another world size needs the same global "
       "batch: with ", world, " rank", world == 1 ? "" : "s", " set ", options,
       "; or start a new run (another OUTPUT_PATH)");
}

}  // namespace

void request_stop() { stop::request(SIGTERM); }

std::string step_file_name(const std::string& output_name, int64_t step) {
  return numbered(output_name, "step", step, 8);
}

int64_t planned_steps(const TrainerConfig& config, int64_t batches_per_epoch) {
  if (!config.max_epochs) return config.max_steps;
  const int64_t ga = std::max<int64_t>(1, config.gradient_accumulation);
  // kohya: ceil(batches per epoch / accumulation) optimizer steps per epoch.
  return *config.max_epochs * ((batches_per_epoch + ga - 1) / ga);
}

TrainResult train(const TrainerConfig& config, DataSource& data, const SampleHook& sample) {
  const auto started = std::chrono::steady_clock::now();
  const int64_t per_epoch = data.batches_per_epoch();
  if (per_epoch <= 0) fail("the dataset gives no batches: nothing to train on");
  const int64_t ga = std::max<int64_t>(1, config.gradient_accumulation);
  const int64_t steps_per_epoch = (per_epoch + ga - 1) / ga;
  // As kohya (accelerate syncs at the end of the dataloader): an optimizer step never spans two epochs;
  // the last step of an epoch takes the batches that are left, fewer than `ga` when they do not divide
  // evenly. Batches are consumed in order, so step s starts at this position (epoch * per_epoch + index).
  auto first_batch = [&](int64_t s) { return (s / steps_per_epoch) * per_epoch + (s % steps_per_epoch) * ga; };
  auto end_batch = [&](int64_t s) {
    return (s / steps_per_epoch) * per_epoch + std::min(per_epoch, (s % steps_per_epoch + 1) * ga);
  };

  Trainable t = build(config);
  Parallel* const par = config.parallel;
  const bool root = !par || par->rank() == 0;
  const int world = par ? par->world_size() : 1;
  if (par && t.network && par->rank() > 0) {
    // Each rank its own dropout draws (rank 0 keeps the seed's, as one process would have).
    t.network->dropout_generator().set_current_seed(config.seed + 1 + 1000003ull * static_cast<uint64_t>(par->rank()));
  }
  auto optimizer = optim::make_optimizer(config.optimizer, t.params);
  {
    std::vector<double> multipliers(t.params.size(), 1.0);
    bool per_parameter = false;
    if (config.optimizer.loraplus_lr_ratio && t.network) {
      // LoRA+ (kohya loraplus_lr_ratio): the up matrices learn `ratio` times faster than the down ones.
      // LoraNetwork::parameters() and TextEncoderNetwork::parameters() list each part's down matrix, then
      // its up matrix.
      for (size_t i = 1; i < multipliers.size(); i += 2) multipliers[i] = *config.optimizer.loraplus_lr_ratio;
      per_parameter = true;
    }
    if (t.te_network && config.text_encoder_lr && *config.text_encoder_lr != config.optimizer.learning_rate) {
      // kohya's text-encoder parameter group: lr text_encoder_lr under the same schedule (its LambdaLR scales
      // every group's own lr by one factor), i.e. the scheduled lr times text_encoder_lr / learning_rate.
      for (size_t i = t.te_begin; i < multipliers.size(); ++i)
        multipliers[i] *= *config.text_encoder_lr / config.optimizer.learning_rate;
      per_parameter = true;
    }
    if (per_parameter) optimizer->set_lr_multipliers(multipliers);
  }
  // The EMA (rank 0's: every rank has the same weights after a step), from the weights the run starts with.
  std::unique_ptr<Ema> ema;
  if (config.ema.enabled() && root) {
    ema = std::make_unique<Ema>(config.ema, t.params, config.model.device);
    log::info("EMA of the ", t.params.size(), " trained tensors: decay up to ", config.ema.decay, ", every ",
              config.ema.update_interval, " step", config.ema.update_interval == 1 ? "" : "s", ", kept in fp32 on ",
              config.ema.device == EmaDevice::cpu ? std::string("the CPU") : config.model.device.str(),
              "; saved as NAME-ema.safetensors beside each LoRA file");
  }
  // ZeRO stage 1: each rank steps (and keeps the optimizer state of) the tensors it owns.
  std::vector<int> owner;
  std::vector<bool> owned;
  if (par && world > 1 && config.zero_stage == 1) {
    if (!optimizer->element_wise())
      fail("zero_stage = 1 shards the state of element-wise optimizers, but ", optimizer->name(),
           "'s step reads every gradient (its d estimate); set zero_stage to 0, or use AdamW, AdamW8bit, Lion, "
           "Adafactor or SGD");
    if (static_cast<int64_t>(t.params.size()) < world)
      fail("zero_stage = 1 gives each rank some of the ", t.params.size(), " trained tensors, fewer than the ", world,
           " ranks; set zero_stage to 0");
    owner = shard_owners(t.params, world);
    int64_t mine = 0, all = 0;
    for (size_t i = 0; i < owner.size(); ++i) {
      owned.push_back(owner[i] == par->rank());
      all += t.params[i].numel();
      if (owned.back()) mine += t.params[i].numel();
    }
    log::info("zero_stage 1: each rank keeps the optimizer state of its share of the trained tensors (rank 0: ", mine,
              " of ", all, " numbers)");
  }
  optim::ScheduleOptions schedule_options = config.schedule;
  TrainResult result;
  result.total_steps = planned_steps(config, per_epoch);
  schedule_options.num_training_steps = result.total_steps;
  optim::LrSchedule schedule(schedule_options, config.optimizer.learning_rate);

  StepGenerators generators{at::detail::createCPUGenerator(config.seed + 101),
                            at::detail::createCPUGenerator(config.seed + 102)};
  StepOptions step_options(config.step);
  step_options.compute_dtype = config.compute_dtype;
  if (t.network) step_options.checkpointing.generators = {t.network->dropout_generator()};
  if (t.encoders) {
    // The text embeddings of each batch from the encoders with their LoRA (the text cache is off).
    step_options.encode_text = [&t](LatentBatch& batch) {
      sample::TextEmbeddings e = t.encoders->encode(batch.captions, at::GradMode::is_enabled());
      batch.t5 = e.t5;
      batch.t5_mask = e.t5_mask;
      batch.clip_pooled = e.clip_pooled;
    };
  }

  int64_t step = 0;  // optimizer steps done
  if (!config.resume_from.empty()) {
    TrainingState state;
    if (root) state = load_state(config.resume_from, config.resume_verified);
    if (par) {
      // With ZeRO stage 1 every rank (rank 0 too) keeps only the optimizer tensors it owns.
      share_state(state, *par, owner.empty() ? std::function<bool(const std::string&)>()
                                             : [&](const std::string& name) { return owned.at(state_index(name)); });
    }
    const std::string dir = state.info.value("_dir", config.resume_from);
    if (state.trainable.size() != t.params.size()) {
      fail(dir, ": the state holds ", state.trainable.size(), " trained tensors but this network has ", t.params.size(),
           "; it was saved by a different network configuration");
    }
    {
      std::map<std::string, at::Tensor> saved(state.trainable.begin(), state.trainable.end());
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < t.params.size(); ++i) {
        auto it = saved.find(t.names[i]);
        if (it == saved.end() || it->second.sizes() != t.params[i].sizes()) {
          fail(dir, ": trained tensor '", t.names[i], "' ", t.params[i].sizes(), " is ",
               it == saved.end() ? std::string("missing from the state") : cat("saved as ", it->second.sizes()),
               "; the state was saved by a different network configuration");
        }
        t.params[i].copy_(it->second);
      }
    }
    optimizer->load_state(state.optimizer_tensors, state.info.at("optimizer"));
    if (ema) {
      if (state.ema_tensors.empty() || !state.info.contains("ema")) {
        ema = std::make_unique<Ema>(config.ema, t.params, config.model.device);
        log::warn(dir, ": the state holds no EMA (ema_decay was off); the EMA starts from the resumed weights");
      } else {
        ema->load_state(state.ema_tensors, state.info.at("ema"), dir);
      }
    }
    const auto& gens = state.info.at("generators");
    set_generator_state(generators.timesteps, gens.at("timesteps"), dir);
    set_generator_state(generators.noise, gens.at("noise"), dir);
    if (t.network) {
      // Rank r's own draws where the state has them (rank 0's are the "dropout" entry).
      at::Generator dropout = t.network->dropout_generator();
      const nlohmann::json by_rank = state.info.value("rank_generators", nlohmann::json::array());
      const int rank = par ? par->rank() : 0;
      if (rank == 0)
        set_generator_state(dropout, gens.at("dropout"), dir);
      else if (static_cast<size_t>(rank) < by_rank.size())
        set_generator_state(dropout, by_rank.at(static_cast<size_t>(rank)).at("dropout"), dir);
    }
    check_world_change(dir, state.info, world, config.device_batch, ga);
    step = state.info.at("step").get<int64_t>();
    log::info("resumed from ", dir, " at step ", step, " of ", result.total_steps);
  }

  if (par) {
    // One start for all: rank 0's initial LoRA (resumed runs got rank 0's state above), then the hooks of
    // the gradient all-reduce.
    if (t.network && config.resume_from.empty()) par->broadcast(t.params, "the start (rank 0's initial LoRA)");
    par->attach(t.params);
  }
  if (root) fs::create_directories(config.output_dir);
  const int64_t first_step = step;  // where this process started
  int64_t last_state_step = config.resume_from.empty() ? -1 : step;
  double state_seconds = 0;  // how long the last state took to write
  auto save_training_state = [&](int64_t at_step) {
    // A state is a resume point: one with NaN or infinite weights would only resume a broken run, and
    // saving it could prune the last good one. Such a state is not written.
    for (size_t i = 0; i < t.params.size(); ++i) {
      if (!at::isfinite(t.params[i].detach()).all().item<bool>()) {
        log::warn("step ", at_step, ": trained tensor '", t.names[i], "' holds NaN or infinite values; no state is ",
                  "saved (the older ones are kept)");
        return;
      }
    }
    const auto save_started = std::chrono::steady_clock::now();
    // Every rank's own generators (the LoRA dropout's); rank 0 writes the state.
    std::vector<std::string> rank_dropout;
    if (par && t.network)
      rank_dropout = par->gather_text(generator_state(t.network->dropout_generator()), "the state's generators");
    std::vector<std::pair<std::string, at::Tensor>> optimizer_tensors = optimizer->state_tensors();
    nlohmann::json optimizer_scalars = optimizer->state_scalars();
    if (!owner.empty()) {
      optimizer_tensors = gather_optimizer_state(optimizer_tensors, *par);
      // Per-tensor scalars (AdamW's step counts) from each tensor's owner; the rest are the same everywhere.
      std::vector<nlohmann::json> all;
      for (const auto& text : par->gather_text(optimizer_scalars.dump(), "the state's optimizer scalars"))
        all.push_back(nlohmann::json::parse(text));
      for (auto& [key, value] : optimizer_scalars.items()) {
        if (!value.is_array() || value.size() != owner.size()) continue;
        for (size_t i = 0; i < owner.size(); ++i) value[i] = all.at(static_cast<size_t>(owner[i])).at(key).at(i);
      }
    }
    if (!root) {
      last_state_step = at_step;
      return;
    }
    TrainingState state;
    for (size_t i = 0; i < t.params.size(); ++i) state.trainable.emplace_back(t.names[i], t.params[i].detach());
    state.optimizer_tensors = std::move(optimizer_tensors);
    if (ema) {
      state.ema_tensors = ema->state_tensors();
      state.info["ema"] = ema->state_info();
    }
    state.info["step"] = at_step;
    state.info["epoch"] = at_step / steps_per_epoch;
    state.info["batch_in_epoch"] = first_batch(at_step) % per_epoch;
    state.info["total_steps"] = result.total_steps;
    state.info["optimizer"] = optimizer_scalars;
    state.info["generators"]["timesteps"] = generator_state(generators.timesteps);
    state.info["generators"]["noise"] = generator_state(generators.noise);
    if (t.network) state.info["generators"]["dropout"] = generator_state(t.network->dropout_generator());
    state.info["run"] = config.run_info;
    state.info["world"] = world;
    state.info["device_batch"] = config.device_batch;
    state.info["gradient_accumulation"] = ga;
    for (const auto& g : rank_dropout) state.info["rank_generators"].push_back({{"dropout", g}});
    save_state(config.output_dir, at_step, state);
    prune_states(config.output_dir, std::max(1, config.keep_last_n_states));
    last_state_step = at_step;
    config.hooks.emit({"state", at_step, {config.output_dir / "state" / state_dir_name(at_step)}, {}});
    state_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - save_started).count();
  };
  // A LoRA file (or the full model), listed in the result and the "model" event with its EMA file: on a full
  // disk (checked before, or ENOSPC while writing) its temporary file is gone and the error says which state
  // a restart resumes from.
  auto save_model = [&](const std::string& path, int64_t at_step, bool final) {
    if (!root) return;
    try {
      write_final_model(path, config, t);
      std::vector<fs::path> written{path};
      if (ema) {
        // Its EMA beside it (NAME-ema.safetensors), written by the same writer with the averaged values.
        const Ema::Applied averaged(*ema, t.params);
        write_final_model(ema_file_name(path), config, t);
        written.emplace_back(ema_file_name(path));
      }
      for (const auto& file : written) result.files.push_back(file.string());
      config.hooks.emit({"model", at_step, written, {{"final", final}}});
    } catch (const Error& e) {
      const auto kept = newest_state(config.output_dir);
      fail(e.what(), kept ? cat("; the newest complete state, ", kept->string(),
                                ", is kept, and a restart with space again resumes from it")
                          : std::string());
    }
  };
  // The LoRA file of this step ({name}-step{N:08}), with the LoRA in inference mode.
  auto save_step_file = [&] {
    const std::string path = (config.output_dir / step_file_name(config.output_name, step)).string();
    t.set_training(false);
    save_model(path, step, false);
    t.set_training(true);
  };
  auto prune_files = [&](const char* what) {
    if (config.keep_last_n <= 0 || !root) return;
    std::vector<fs::path> files;
    const std::string prefix = config.output_name + "-" + what;
    for (const auto& entry : fs::directory_iterator(config.output_dir)) {
      std::string name = entry.path().filename().string();
      // An EMA file goes with its LoRA file.
      if (name.rfind(prefix, 0) == 0 && entry.path().extension() == ".safetensors" && !name.ends_with("-ema.safetensors"))
        files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (size_t i = 0; i + static_cast<size_t>(config.keep_last_n) < files.size(); ++i) {
      fs::remove(files[i]);
      std::error_code ec;
      fs::remove(ema_file_name(files[i].string()), ec);
    }
  };

  // metrics.jsonl and TensorBoard: a resumed run first drops what the lost steps had logged.
  // Rank 0 alone writes them (and the progress line).
  std::unique_ptr<MetricsLog> metrics;
  std::unique_ptr<EventWriter> events;
  if (root) {
    metrics = std::make_unique<MetricsLog>((config.output_dir / "metrics.jsonl").string());
    metrics->truncate_after(step);
    events = std::make_unique<EventWriter>((config.output_dir / "logs").string(),
                                           step > 0 ? std::optional<int64_t>(step + 1) : std::nullopt);
  }
  TrainProgressOptions progress_options;
  progress_options.total_steps = result.total_steps;
  if (config.log_every_seconds > 0) progress_options.line_interval_seconds = config.log_every_seconds;
  TrainProgress progress(progress_options);
  BatchStaging staging;  // on CUDA: pinned host memory, so the step's copies to the device are asynchronous
  if (config.model.device.is_cuda()) {
    staging = [dtype = config.compute_dtype](LatentBatch b) { return pin_for_device(std::move(b), dtype); };
  }
  PrefetchingSource prefetch(data, config.prefetch_batches, first_batch(step), std::move(staging));
  double step_seconds = 0;
  t.set_training(true);
  // Samples with the LoRA in inference mode (no dropout), each PNG also a TensorBoard image.
  auto render_samples = [&](int64_t at) {
    t.set_training(false);
    std::vector<std::filesystem::path> files;
    try {
      // ema_samples: rendered with the averaged weights (the live ones come back after).
      std::optional<Ema::Applied> averaged;
      if (ema && config.ema.samples) averaged.emplace(*ema, t.params);
      files = sample(at, *t.model, t.encoders.get());
    } catch (const stop::Stopped&) {
      // Stopped between denoising steps: before the first step that is the run's end (nothing trained,
      // exit 0); later the loop below writes the state.
      if (at == first_step) throw;
      log::info("sampling at step ", at, " stopped on ", stop::signal_name());
    }
    if (!files.empty()) config.hooks.emit({"samples", at, files, {}});
    t.set_training(true);
    for (size_t i = 0; i < files.size(); ++i) {
      try {
        const data::ImageInfo info = data::probe_image(files[i]);
        events->add_image_png("samples/" + std::to_string(i), read_file_bytes(files[i].string()), info.width, info.height, at,
                             info.has_alpha ? 4 : 3);
      } catch (const Error& e) {
        log::warn("sample ", files[i].string(), " not added to the TensorBoard events: ", e.what());
      }
    }
  };
  // Rank 0 renders the samples while the others wait for it (no collective timeout: many prompts of a
  // large model can take longer).
  const bool sampler = par ? par->sum({sample ? 1.0 : 0.0}, "the start (who samples)")[0] > 0 : bool(sample);
  auto samples_at = [&](int64_t at) {
    bool stopped = false;  // before the first step (render_samples throws only then): the run's end
    if (sample) {
      try {
        render_samples(at);
      } catch (const stop::Stopped&) {
        stopped = true;
      }
    }
    if (par) {
      par->wait_for_all("the samples (rank 0 renders them)", 86400);
      stopped = par->sum({stopped ? 1.0 : 0.0}, "the samples' stop")[0] > 0;
    }
    if (stopped) throw stop::Stopped("sampling");
  };
  // The validation loss: rank 0 computes it (LoRA dropouts off) while the others wait.
  const bool validating =
      par ? par->sum({config.validation ? 1.0 : 0.0}, "the start (who validates)")[0] > 0 : config.validation != nullptr;
  auto validate = [&](int64_t at) {
    double loss = std::numeric_limits<double>::quiet_NaN();
    if (config.validation) {
      t.set_training(false);
      loss = validation_loss(*t.model, *config.validation, step_options, config.validation_seed);
      t.set_training(true);
      log::info("validation loss at step ", at, ": ", loss);
      config.hooks.emit({"validation", at, {}, {{"loss", loss}}});
    }
    if (par) par->wait_for_all("the validation loss (rank 0 computes it)", 86400);
    return loss;
  };
  if (root) {
    config.hooks.emit({"start", step, {}, {{"total_steps", result.total_steps}, {"steps_per_epoch", steps_per_epoch},
                                           {"first_step", first_step}}});
  }
  if (config.sample_at_first && sampler && step == 0) samples_at(0);
  // From here on a stop signal is this loop's to handle (poll points below do not throw): the step in
  // progress and a save in progress finish, a state is written and train() returns.
  const stop::Deferral deferral;
  bool grace_checked = false;
  // A stop asked of any rank is every rank's (the launcher forwards a signal to all, but it arrives at
  // different moments): agreed once per check, so all ranks stop after the same step and save one state.
  // The page's "save now" and "sample now" (rank 0's requests) ride on the same agreement.
  bool save_asked = false, sample_asked = false;
  auto stop_agreed = [&] {
    const bool asked = stop::requested();
    if (config.hooks.requests) {
      save_asked = config.hooks.requests->take_save() || save_asked;
      sample_asked = config.hooks.requests->take_sample() || sample_asked;
    }
    if (!par) return asked;
    const auto agreed = par->sum({asked ? 1.0 : 0.0, save_asked ? 1.0 : 0.0, sample_asked ? 1.0 : 0.0},
                                 "the stop agreement");
    save_asked = agreed[1] > 0;
    sample_asked = agreed[2] > 0;
    return agreed[0] > 0;
  };
  // Ends the loop on a requested stop: a state of `step` unless one exists (or nothing was trained).
  auto stop_here = [&] {
    const std::string signal = stop::signal_name();
    if (step != first_step && last_state_step != step) save_training_state(step);
    if (last_state_step == step) {
      log::info("stopping on signal ", signal, " during training after step ", step, ": the state is saved in ",
                (config.output_dir / "state" / state_dir_name(step)).string(), "; a restart resumes from it");
    } else if (step == first_step) {
      log::info("stopping on signal ", signal, " before the first step of this run: nothing to save; a restart ",
                step > 0 ? "resumes from the same state" : "starts the training");
    } else {
      log::info("stopping on signal ", signal, " during training after step ", step,
                ": no state of this step (see above); a restart resumes from the newest state");
    }
    const double took = stop::seconds_since_request();
    if (took > stop::grace_seconds()) {
      log::warn("the stop took ", took, " s after the signal, more than stop_grace_seconds (", stop::grace_seconds(),
                " s): a SIGKILL at that time would have cut it (the state before it is kept)");
    }
    result.interrupted = true;
  };
  // Out of memory in a step: the weights are as the last completed step left them (the optimizer step
  // comes last), so that step's state is kept (written now unless it exists) and the error says what ran
  // out, what the planner predicted and what to change.
  auto out_of_memory = [&](int64_t failed, const std::vector<LatentBatch>& micro, const std::string& what) {
    optimizer->zero_grad();
    if (step != first_step && last_state_step != step) save_training_state(step);
    const auto kept = newest_state(config.output_dir);
    const LatentBatch& b = micro.front();
    const int64_t images = b.rows();
    const std::vector<int64_t> shape = b.latents.defined() ? b.latents.sizes().vec() : b.global_shape;
    std::string plan;
    if (config.planned_peak_bytes > 0) {
      plan = cat("; the memory planner predicted ", format_bytes(static_cast<double>(config.planned_peak_bytes)),
                 " for a step at the largest bucket",
                 config.planned_budget_bytes > 0
                     ? cat(" with ", format_bytes(static_cast<double>(config.planned_budget_bytes)), " to plan with")
                     : std::string());
    }
    fail("out of memory on ", config.model.device.str(), " in step ", failed, " (", images, " image",
         images == 1 ? "" : "s", " of ", shape.at(3) * 8, "x", shape.at(2) * 8, " per batch", par ? " on this rank, " : ", ",
         micro.size(), " batch", micro.size() == 1 ? "" : "es", ")", plan, ". ",
         kept ? cat("The newest state, ", kept->string(), ", is kept; a restart resumes from it. ")
              : std::string("No state was written yet. "),
         "To fit: a smaller batch (PARAMS_TRAIN_BATCH_SIZE, or auto for the largest that fits), "
         "checkpoint_keep_products=none (or auto), fp8_base=true, blocks_to_swap=N (or auto), "
         "gradient_checkpointing=true; `fluxtrain plan` shows the memory each choice takes. (",
         what.substr(0, what.find('\n')), ")");
  };
  // The timer of save_state_every_minutes: from the start (or the resume), reset by every state.
  auto last_state = std::chrono::steady_clock::now();
  int64_t skipped_in_a_row = 0;

  while (step < result.total_steps) {
    if (step != first_step) stop::pause_point("training");  // test hook (core/stop.h)
    if (stop_agreed()) {
      stop_here();
      break;
    }
    const auto step_started = std::chrono::steady_clock::now();
    const double waited_before = prefetch.wait_seconds();
    std::vector<LatentBatch> micro;
    try {
      for (int64_t b = first_batch(step); b < end_batch(step); ++b)
        micro.push_back(prefetch.batch(b / per_epoch, b % per_epoch));
    } catch (const stop::Stopped&) {
      stop_here();  // a batch prepared before the loop (text encoders loading) was stopped
      break;
    }
    const double lr = schedule.lr(step);
    optimizer->set_lr(lr);
    StepResult r;
    try {
      r = train_step(*t.model, *optimizer, micro, step_options, generators, par, owned);
      if (!owner.empty() && !r.skipped) {
        // ZeRO stage 1: each owner's new values to every rank.
        for (size_t i = 0; i < t.params.size(); ++i) {
          std::vector<at::Tensor> one = {t.params[i]};
          par->broadcast(one, "the sharded optimizer's new weights", owner[i]);
        }
      }
    } catch (const c10::OutOfMemoryError& e) {
      out_of_memory(step + 1, micro, e.what());
    }
    ++step;
    if (ema) ema->after_step(step, t.params);
    if (r.skipped) {
      ++result.skipped_steps;
      ++skipped_in_a_row;
      log::warn("step ", step, ": the ", std::isfinite(r.loss) ? "gradient norm" : "loss", " is not finite (loss ",
                r.loss, ", gradient norm ", r.grad_norm, "); the optimizer step is skipped (", skipped_in_a_row,
                " in a row, ", result.skipped_steps, " in all)");
    } else {
      skipped_in_a_row = 0;
    }
    const double this_step = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_started).count();
    step_seconds += this_step;
    result.last_loss = r.loss;

    std::vector<std::pair<std::string, double>> values = {{"loss", r.loss}, {"lr", lr}, {"grad_norm", r.grad_norm}};
    // The LoRA files this step writes (the final one after the loop), and the validation loss, which goes on
    // the line of its step: every N steps or epochs, and with every LoRA file.
    const bool epoch_end = step % steps_per_epoch == 0;
    const int64_t epoch = step / steps_per_epoch;
    const bool step_file = step < result.total_steps && config.save_every_n_steps > 0 && step % config.save_every_n_steps == 0;
    const bool epoch_file = step < result.total_steps && config.save_every_n_epochs > 0 && epoch_end &&
                            epoch % config.save_every_n_epochs == 0;
    if (validating &&
        (step == result.total_steps || step_file || epoch_file ||
         (config.validate_every_n_steps > 0 && step % config.validate_every_n_steps == 0) ||
         (config.validate_every_n_epochs > 0 && epoch_end && epoch % config.validate_every_n_epochs == 0)))
      values.emplace_back("validation_loss", validate(step));
    values.emplace_back("skipped", r.skipped ? 1 : 0);
    values.emplace_back("skipped_steps", static_cast<double>(result.skipped_steps));
    values.emplace_back("step_seconds", this_step);
    values.emplace_back("data_wait_seconds", prefetch.wait_seconds() - waited_before);
    // The step's image size (its first batch's bucket): which resolution of a multi-resolution dataset it trained.
    if (!micro.empty() && micro[0].latents.dim() == 4) {
      values.emplace_back("image_width", static_cast<double>(micro[0].latents.size(3) * 8));
      values.emplace_back("image_height", static_cast<double>(micro[0].latents.size(2) * 8));
    }
    for (const auto& [key, value] : optimizer->stats()) values.emplace_back(key, value);
    const double memory = peak_memory_bytes(config.model.device);
    if (memory >= 0) values.emplace_back("peak_memory_bytes", memory);
    if (root) {
      metrics->append(step, values);
      std::vector<std::pair<std::string, double>> scalars;
      for (const auto& [key, value] : values)
        scalars.emplace_back(key == "validation_loss" ? std::string("validation/loss") : "train/" + key, value);
      scalars.emplace_back("train/steps_per_second", progress.steps_per_second());
      events->add_scalars(scalars, step);
      // A skipped step's loss would turn the shown average into NaN for good: it shows the count instead.
      progress.update(step, r.skipped ? progress.smoothed_loss() : r.loss, lr, memory,
                      result.skipped_steps > 0 ? cat("skipped ", result.skipped_steps) : std::string());
      if (!config.hooks.listeners.empty()) {
        RunEvent event{"step", step, {}, {{"epoch", step / steps_per_epoch}}};
        for (const auto& [key, value] : values) event.data[key] = value;
        config.hooks.emit(event);
      }
    }
    if (config.max_nonfinite_steps > 0 && skipped_in_a_row >= config.max_nonfinite_steps) {
      if (root) {
        metrics->flush();
        events->flush();
      }
      const auto kept = newest_state(config.output_dir);
      fail("training stopped at step ", step, ": the loss or gradient norm was not finite (NaN or infinite) in ",
           skipped_in_a_row, " steps in a row (max_nonfinite_steps ", config.max_nonfinite_steps,
           "); the weights were not changed by those steps",
           kept ? cat(", and the newest state, ", kept->string(), ", holds finite weights") : std::string(),
           ". Lower the learning rate, check the dataset for a broken image or caption (or clear the cache), or "
           "raise max_nonfinite_steps");
    }

    bool saved = false, state_saved = false;
    if (step < result.total_steps) {
      if (step_file) {
        save_step_file();
        prune_files("step");
        saved = true;
      }
      if (epoch_file) {
        std::string path = (config.output_dir / numbered(config.output_name, "", epoch, 6)).string();
        save_model(path, step, false);
        saved = true;
      }
      if (saved && config.save_state) {
        save_training_state(step);
        state_saved = true;
      }
      const double minutes = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_state).count() / 60;
      bool timer = !state_saved && config.save_state_every_minutes > 0 && minutes >= config.save_state_every_minutes;
      // Rank 0's clock decides for all.
      if (par && !state_saved && config.save_state_every_minutes > 0)
        timer = par->sum({root && timer ? 1.0 : 0.0}, "the state timer")[0] > 0;
      if (timer) {
        save_training_state(step);
        state_saved = true;
      }
      if (state_saved) last_state = std::chrono::steady_clock::now();
    }
    // Once a step (and a state, when one was written) has been timed: the stop_grace_seconds budget.
    if (root && !grace_checked && !r.skipped && step - first_step >= 2) {
      grace_checked = true;
      const double per_step = step_seconds / static_cast<double>(step - first_step);
      if (per_step + state_seconds > config.stop_grace_seconds) {
        log::warn("a step takes ", per_step, " s", state_seconds > 0 ? cat(" and a state ", state_seconds, " s") : "",
                  ", more than stop_grace_seconds (", config.stop_grace_seconds,
                  " s): a stop signal waits for the step in progress, so a SIGKILL after the grace period may come "
                  "before the state is written; then the restart resumes from the newest state (every ",
                  config.save_state_every_minutes, " minutes by save_state_every_minutes)");
      }
    }
    const bool sample_step = config.sample_every_n_steps > 0 && step % config.sample_every_n_steps == 0;
    const bool sample_epoch = config.sample_every_n_epochs > 0 && epoch_end && epoch % config.sample_every_n_epochs == 0;
    // Samples are not rendered once a stop was requested: the grace period is for the state.
    bool stopping = stop_agreed();
    // The page's "save now": this step's LoRA file and a state (unless this step already wrote them).
    if (save_asked && step < result.total_steps && !stopping) {
      save_asked = false;
      if (!saved) save_step_file();
      if (last_state_step != step) save_training_state(step);
      last_state = std::chrono::steady_clock::now();
      if (root) log::info("saved at step ", step, " as asked (the page's save now)");
    }
    const bool sample_now = sample_asked && sampler && !(sample_step || sample_epoch);
    if (sample_asked) sample_asked = false;
    if (sampler && (sample_step || sample_epoch || sample_now) && !stopping) {
      samples_at(step);
      stopping = stop_agreed();
    }
    if (step < result.total_steps && stopping) {
      stop_here();
      break;
    }
  }
  t.set_training(false);
  if (root) {
    progress.finish();
    metrics->flush();
    events->flush();
  }
  result.data_wait_share = step_seconds > 0 ? prefetch.wait_seconds() / step_seconds : 0;
  result.steps = step;
  if (!result.interrupted) {
    std::string path = (config.output_dir / (config.output_name + ".safetensors")).string();
    save_model(path, step, true);
    save_training_state(step);
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.peak_memory_bytes = peak_memory_bytes(config.model.device);
  if (root) config.hooks.emit({"end", step, {}, {{"interrupted", result.interrupted}, {"steps", step}}});
  return result;
}

}  // namespace fluxtrain::train
