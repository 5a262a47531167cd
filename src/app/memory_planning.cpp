#include "app/memory_planning.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/safetensors_format.h"
#include "data/dataset_config.h"
#include "models/stated_config.h"

namespace fluxtrain::app {
namespace fs = std::filesystem;

models::FluxConfig planned_model_config(const TrainSettings& settings, std::string& note) {
  const models::FluxConfig preset =
      settings.models.base_model == BaseModel::schnell ? models::FluxConfig::schnell() : models::FluxConfig::dev();
  const std::string preset_name = settings.models.base_model == BaseModel::schnell ? "Flux.1 schnell" : "Flux.1 dev";
  ModelFiles files;
  if (!settings.models.given.model.empty()) {
    files.model = settings.models.given.model;  // the transformer alone is read: the encoders may be missing
  } else {
    try {
      files = find_model_files(settings.models);
    } catch (const Error&) {
      note = preset_name + "'s shape (the model file is not there yet)";
      return preset;
    }
  }
  std::error_code ec;
  if (files.model.empty() || !fs::is_regular_file(files.model, ec)) {
    note = preset_name + "'s shape (" + (files.model.empty() ? std::string("no model file") : files.model + " is a folder") + ")";
    return preset;
  }
  const safetensors::Header header = safetensors::read_header(files.model);
  std::string prefix;
  models::FluxLayout layout = models::FluxLayout::bfl;
  for (const std::string p : {"", "transformer."}) {
    if (header.find(p + "x_embedder.weight")) {
      layout = models::FluxLayout::diffusers;
      prefix = p;
    }
  }
  if (layout == models::FluxLayout::bfl) {
    for (const std::string p : {"", "model.diffusion_model."}) {
      if (header.find(p + "img_in.weight")) prefix = p;
    }
  }
  auto find = [&](const std::string& name) { return header.find(prefix + name); };
  models::FluxConfig config = models::FluxConfig::detect(find, files.model, layout,
                                                         models::StatedConfig::beside(fs::path(files.model).parent_path().string()));
  note = "the header of " + files.model;
  return config;
}

namespace {

// The shape of a text encoder from its file's header (any prefix: the names are matched by their ends), or
// CLIP-L's / T5-XXL's when the file is not there or not readable (a plan made before the download).
train::TextEncoderShape text_encoder_shape(train::TextEncoderShape::Kind kind, const std::string& path) {
  using Kind = train::TextEncoderShape::Kind;
  train::TextEncoderShape e = kind == Kind::clip ? train::TextEncoderShape::clip_l() : train::TextEncoderShape::t5_xxl();
  std::error_code ec;
  if (path.empty() || !fs::is_regular_file(path, ec)) return e;
  safetensors::Header header;
  try {
    header = safetensors::read_header(path);
  } catch (const Error&) {
    return e;  // the loader names what is wrong with it
  }
  auto shape_of = [&](std::string_view end) -> const std::vector<int64_t>* {
    for (const auto& t : header.tensors)
      if (t.name.ends_with(end) && t.shape.size() == 2) return &t.shape;
    return nullptr;
  };
  // Layers: one more than the largest index after `marker` ("layers." / "block.").
  auto count_layers = [&](std::string_view marker) {
    int64_t most = -1;
    for (const auto& t : header.tensors) {
      const size_t at = t.name.find(marker);
      if (at == std::string::npos) continue;
      most = std::max<int64_t>(most, std::atoll(t.name.c_str() + at + marker.size()));
    }
    return most + 1;
  };
  if (kind == Kind::clip) {
    const auto* embedding = shape_of("token_embedding.weight");
    const auto* positions = shape_of("position_embedding.weight");
    const auto* fc1 = shape_of("layers.0.mlp.fc1.weight");
    if (embedding == nullptr || positions == nullptr || fc1 == nullptr) return e;
    e.vocab = (*embedding)[0];
    e.width = (*embedding)[1];
    e.tokens = (*positions)[0];
    e.mlp = (*fc1)[0];
    e.heads = std::max<int64_t>(1, e.width / 64);  // CLIP's heads are 64 wide
    e.head_width = e.width / e.heads;
    e.layers = count_layers("encoder.layers.");
  } else {
    const auto* embedding = shape_of("shared.weight");
    if (embedding == nullptr) embedding = shape_of("embed_tokens.weight");
    const auto* q = shape_of("block.0.layer.0.SelfAttention.q.weight");
    const auto* bias = shape_of("relative_attention_bias.weight");
    const auto* wi = shape_of("block.0.layer.1.DenseReluDense.wi_0.weight");
    if (embedding == nullptr || q == nullptr || bias == nullptr || wi == nullptr) return e;
    e.vocab = (*embedding)[0];
    e.width = (*embedding)[1];
    e.heads = (*bias)[1];
    e.mlp = (*wi)[0];
    e.head_width = (*q)[0] / std::max<int64_t>(1, e.heads);
    e.layers = count_layers("block.");
  }
  return e;
}

}  // namespace

std::vector<train::TextEncoderShape> planned_text_encoders(const TrainSettings& settings, int64_t t5_tokens) {
  const train::TrainOptions& t = settings.training;
  if (!t.train_clip && !t.train_t5) return {};
  ModelFiles files;
  try {
    files = find_model_files(settings.models);
  } catch (const Error&) {
    // not downloaded yet: the released encoders' shapes
  }
  train::TextEncoderShape clip = text_encoder_shape(train::TextEncoderShape::Kind::clip, files.clip_l);
  train::TextEncoderShape t5 = text_encoder_shape(train::TextEncoderShape::Kind::t5, files.t5xxl);
  t5.tokens = t5_tokens;
  clip.trained = t.train_clip;
  t5.trained = t.train_t5;
  return {clip, t5};
}

std::pair<int64_t, int64_t> planned_resolution(const TrainSettings& settings, const data::DatasetGroupConfig* group) {
  int64_t w = 1024, h = 1024;
  // Several sizes (multi-resolution): the largest, whose batches need the most memory.
  if (!settings.dataset_fallbacks.resolutions.empty()) w = h = 0;
  for (const data::Resolution& r : settings.dataset_fallbacks.resolutions) {
    if (int64_t{r.width} * r.height > w * h) {
      w = r.width;
      h = r.height;
    }
  }
  if (group != nullptr && !group->datasets.empty()) {
    w = h = 0;
    for (const auto& d : group->datasets) {
      const auto& r = d.buckets.resolution;
      if (int64_t{r.width} * r.height > w * h) {
        w = r.width;
        h = r.height;
      }
    }
  }
  // Buckets hold at most the resolution's area in multiples of 16 pixels (the latent's 2x2 patches).
  return {w / 16 * 16, h / 16 * 16};
}

train::MemoryPlanInputs memory_plan_inputs(const TrainSettings& settings, const models::FluxConfig& model, bool cuda,
                                           int64_t compute_bytes, int64_t width, int64_t height) {
  train::MemoryPlanInputs in;
  const train::TrainOptions& t = settings.training;
  in.model = model;
  in.full_finetune = t.full_finetune;
  in.lora = t.lora;
  in.optimizer = t.optimizer;
  in.fp8_base = t.fp8_base;
  in.compute_bytes = compute_bytes;
  in.checkpointing = t.step.checkpointing;
  in.blocks_to_swap = t.blocks_to_swap;
  in.image_width = width;
  in.image_height = height;
  in.text_tokens = settings.t5_max_length > 0 ? settings.t5_max_length
                                              : (settings.models.base_model == BaseModel::schnell ? 256 : 512);
  in.host_is_device = !cuda;
  in.prefetch_batches = t.prefetch_batches;
  // The ranks of a data-parallel run: torchrun's WORLD_SIZE, else --nproc N (auto plans one rank).
  const std::string& nproc = settings.distributed.num_processes;
  in.ranks = settings.distributed.world_size.value_or(nproc == "auto" ? 1 : std::stoll(nproc));
  in.optimizer_shards = t.zero_stage == 1 ? in.ranks : 1;
  in.ema_on_device = t.ema.enabled() && (t.ema.device == train::EmaDevice::accelerator || !cuda);
  in.text_encoders = planned_text_encoders(settings, in.text_tokens);
  return in;
}

int64_t cpu_memory_budget(const EngineSettings& engine) {
  if (engine.cpu_memory_limit_mb > 0) return engine.cpu_memory_limit_mb << 20;
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

PlannedRun plan_run_memory(const TrainSettings& settings, const models::FluxConfig& model, bool cuda,
                           int64_t compute_bytes, std::pair<int64_t, int64_t> resolution, int batch,
                           std::optional<int64_t> device_memory, const std::string& device_name) {
  PlannedRun run;
  run.inputs = memory_plan_inputs(settings, model, cuda, compute_bytes, resolution.first, resolution.second);
  run.batch_auto = batch == data::kAutoBatchSize;
  run.keep_auto = settings.keep_products_auto;
  run.swap_auto = settings.blocks_to_swap_auto;
  run.batch = std::max(1, batch);

  int64_t memory = 0;
  std::ostringstream note;
  if (settings.vram_gb > 0) {
    memory = static_cast<int64_t>(settings.vram_gb * 1e9);
    note << train::gigabytes(memory) << " given by vram";
  } else if (device_memory) {
    memory = *device_memory;
    note << train::gigabytes(memory) << " free on " << device_name;
  } else if (!cuda) {
    memory = cpu_memory_budget(settings.engine);
    note << train::gigabytes(memory)
         << (settings.engine.cpu_memory_limit_mb > 0 ? " (FLUXTRAIN_CPU_MEMORY_LIMIT_MB)" : " available on the CPU");
  }
  if (memory > 0) {
    run.budget = static_cast<int64_t>(static_cast<double>(memory) * (1.0 - settings.memory_margin));
    note << ", " << std::lround(settings.memory_margin * 100) << " % kept free: " << train::gigabytes(run.budget)
         << " to plan with";
  } else {
    note << "unknown (no vram given and the device's memory is asked for at start)";
  }
  run.budget_note = note.str();

  const bool any_auto = run.batch_auto || run.keep_auto || run.swap_auto;
  if (any_auto && run.budget <= 0) {
    fail("batch_size / checkpoint_keep_products / blocks_to_swap = auto need the device's memory: give vram (GB), "
         "or let `fluxtrain train` ask the device at start");
  }
  train::MemoryPlanInputs& in = run.inputs;
  if (run.keep_auto) in.checkpointing.keep_products = models::KeepProducts::outputs;
  if (run.batch_auto) {
    // The largest batch at the given settings; with kept products auto, the least kept (none) when even
    // one image does not fit with `outputs`; with block swap auto, blocks swapped only when still nothing fits.
    int64_t largest = train::plan_memory(in).largest_batch(run.budget);
    if (largest == 0 && run.keep_auto) {
      in.checkpointing.keep_products = models::KeepProducts::none;
      largest = train::plan_memory(in).largest_batch(run.budget);
    }
    if (largest == 0 && run.swap_auto) {
      const int64_t swap = train::choose_blocks_to_swap(in, 1, run.budget);
      if (swap > 0) {
        in.blocks_to_swap = swap;
        largest = 1;
        run.notes.push_back(cat("blocks_to_swap auto: ", swap, " blocks swapped (nothing else fits one image)"));
      }
    }
    if (largest == 0) {
      run.notes.push_back(cat("batch_size auto: not even one image fits ", train::gigabytes(run.budget),
                              " by the plan; batch 1 is tried (see what to change below)"));
      largest = 1;
    } else {
      run.notes.push_back(cat("batch_size auto: ", largest, " (the largest that fits ",
                              train::gigabytes(run.budget), ")"));
    }
    run.batch = largest;
  } else if (run.swap_auto) {
    if (run.keep_auto) in.checkpointing.keep_products = models::KeepProducts::none;
    if (train::plan_memory(in).peak(run.batch) > run.budget) {
      const int64_t swap = train::choose_blocks_to_swap(in, run.batch, run.budget);
      in.blocks_to_swap = swap > 0 ? swap : train::max_blocks_to_swap(in.model);
      run.notes.push_back(cat("blocks_to_swap auto: ", in.blocks_to_swap, " blocks swapped",
                              swap < 0 ? " (all it can; still more than planned)" : ""));
    } else {
      run.notes.push_back("blocks_to_swap auto: 0 (the batch fits without)");
    }
  }
  if (run.keep_auto) {
    in.checkpointing.keep_per_block = train::choose_kept_products(in, run.batch, run.budget);
    int64_t all = 0, outputs = 0, none = 0;
    const int64_t blocks = in.model.depth + in.model.depth_single_blocks;
    const int64_t interval = std::max<int64_t>(in.checkpointing.interval, 1);
    for (int64_t i = 0; i < blocks; ++i) {
      if (!in.checkpointing.enabled || i == blocks - 1 || i % interval != 0) continue;
      const auto keep = in.checkpointing.keep_per_block[static_cast<size_t>(i)];
      (keep == models::KeepProducts::all ? all : keep == models::KeepProducts::outputs ? outputs : none) += 1;
    }
    run.notes.push_back(cat("checkpoint_keep_products auto: all in ", all, " blocks, outputs in ", outputs,
                            ", none in ", none));
  }
  run.plan = train::plan_memory(in);
  return run;
}

std::string describe_plan(const PlannedRun& run, const std::vector<int64_t>& batches) {
  std::ostringstream out;
  const train::MemoryPlan& p = run.plan;
  out << "memory plan: " << p.image_tokens << " image + " << p.text_tokens << " text tokens ("
      << run.inputs.image_width << "x" << run.inputs.image_height << "), model from " << run.model_note << "\n";
  for (const auto& term : p.terms) {
    out << "  " << (term.per_image ? "per image  " : "fixed      ") << train::gigabytes(term.bytes) << "  " << term.name
        << "\n";
  }
  out << "  device memory: " << run.budget_note << "\n";
  out << "  | batch | predicted peak | fits |\n  |---|---|---|\n";
  for (int64_t b : batches) {
    const int64_t peak = p.peak(b);
    out << "  | " << b << " | " << train::gigabytes(peak) << " | "
        << (run.budget <= 0 ? "?" : peak <= run.budget ? "yes" : "no") << " |\n";
  }
  if (run.budget > 0) out << "  largest batch that fits: " << p.largest_batch(run.budget) << "\n";
  for (const auto& note : run.notes) out << "  " << note << "\n";
  return out.str();
}

std::string annotate_memory_plan(const ResolvedConfig& config) {
  const TrainSettings settings = config.bind<TrainSettings>();
  int batch = settings.dataset_fallbacks.batch_size.value_or(1);
  std::optional<data::DatasetGroupConfig> group;
  if (!settings.dataset_config.empty()) {
    data::ConfigOptions options;
    options.fallbacks = settings.dataset_fallbacks;
    try {
      group = data::load_dataset_config(settings.dataset_config, options);
    } catch (const Error&) {
      return "";  // the config's own errors are the train checks' to report
    }
    for (const auto& d : group->datasets)
      if (d.batch_size == data::kAutoBatchSize) batch = data::kAutoBatchSize;
  }
  const bool any_auto = batch == data::kAutoBatchSize || settings.keep_products_auto || settings.blocks_to_swap_auto;
  if (!any_auto) return "";
  const bool cpu = settings.compute.device == "cpu";
  if (!cpu && settings.vram_gb <= 0)
    return "# memory plan: the automatic choices are made at start from the device's free memory (give vram to see them)\n";
  const int64_t bytes = settings.compute.precision == Precision::fp32 ? 4
                        : settings.compute.precision == Precision::automatic && cpu ? 4
                                                                                    : 2;
  std::string note;
  const models::FluxConfig model = planned_model_config(settings, note);
  PlannedRun run = plan_run_memory(settings, model, !cpu, bytes, planned_resolution(settings, group ? &*group : nullptr),
                                   batch, std::nullopt, cpu ? "the CPU" : "the device");
  std::string out = "# memory plan (" + run.budget_note + "; model: " + note + "):\n";
  for (const auto& line : run.notes) out += "#   " + line + "\n";
  out += cat("#   predicted peak at batch ", run.batch, ": ", train::gigabytes(run.plan.peak(run.batch)), "\n");
  return out;
}

}  // namespace fluxtrain::app
