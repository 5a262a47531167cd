// fluxtrain_bench: times fluxtrain's LoRA training step (train::train_step: noise, forward, backward,
// gradient clipping, AdamW step, zero grad) on a Flux checkpoint, and measures its peak memory. One
// batch size per process, or several one after the other (--batches; each from the same LoRA, a new
// optimizer and freshly seeded generators); bench/train_step.py runs it against the same step in
// PyTorch eager Python (bench/baseline_diffusers.py) and prints the comparison. Prints one JSON object
// per batch on stdout (on CUDA a batch that runs out of memory prints {"oom": true, ...} and the larger
// ones are not tried), then one with the attention stash's self-check.
//
// Memory, defined identically in baseline_diffusers.py:
//   CPU   peak_bytes = VmHWM over the warm-up + timed steps (the high-water mark is reset with
//         /proc/self/clear_refs after set-up) - VmRSS at start (libraries loaded, nothing else): every
//         byte the model, the LoRA, the optimizer state and the activations kept resident at the peak.
//   CUDA  peak_bytes = the caching allocator's peak allocated bytes over the same steps
//         (torch.cuda.max_memory_allocated after reset_peak_memory_stats), weights included.
#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app/knob_options.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "core/safetensors.h"
#include "lora/network.h"
#include "models/attention.h"
#include "models/convert.h"
#include "models/linear.h"
#include "optim/optimizer.h"
#include "train/cpu_allocator.h"
#include "train/device_memory.h"
#include "train/step.h"

namespace fluxtrain::bench {
namespace {

struct Options {
  std::string model, inputs, lora_in, write_lora, save_lora;
  bool fp8_base = false;
  std::string fp8_matmul = "off";
  int64_t batch = 1;
  std::string batches;  // "1,2,4": measured one after the other in this process (overrides batch)
  int steps = 5, warmup = 1;
  bool checkpointing = true;
  bool keep_attention = true;
  std::string keep_products = "outputs";
  std::string device = "cpu", precision = "fp32";
  int64_t rank = 16;
  double alpha = 16;
  bool split_qkv = true;
  double lr = 1e-4;
  uint64_t seed = 0;
  int threads = 0;
};

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); -1 where the kernel gives none.
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream value(line.substr(field.size() + 1));
      int64_t kib = -1;
      value >> kib;
      return kib * 1024;
    }
  }
  return -1;
}

// Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// The first `batch` samples, copied into CPU memory as the latent and text caches hold them (batch_loss
// moves them to the model's device).
train::LatentBatch read_batch(const std::string& path, int64_t batch) {
  safetensors::Reader reader(path);
  auto take = [&](const char* name) {
    at::Tensor t = reader.tensor(name);
    if (t.size(0) < batch) {
      fail(path, ": tensor '", name, "' holds ", t.size(0), " samples but --batch is ", batch,
           "; write the inputs for the largest batch (bench/train_step.py does)");
    }
    return t.narrow(0, 0, batch).to(at::kFloat).clone();
  };
  train::LatentBatch b;
  b.latents = take("latents");
  b.t5 = take("t5");
  b.clip_pooled = take("clip_pooled");
  return b;
}

// CPU time of the whole process (all threads), in ms.
double process_cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void measure_batch(const Options& o, int64_t batch, at::Device device, models::FluxTransformerImpl& model,
                   lora::LoraNetwork& network, const train::StepOptions& step_options, nlohmann::json& out);
void print_checks(at::Device device, at::ScalarType dtype);

int run(const Options& o) {
  if (o.threads > 0) at::set_num_threads(o.threads);
  const int64_t runtime_rss = proc_status_bytes("VmRSS");
  at::Device device(o.device == "cuda" ? at::kCUDA : at::kCPU);
  if (device.is_cpu()) {
    // As fluxtrain's commands do, with FLUXTRAIN_CPU_CACHE_MB read by their option.
    std::vector<app::OptionSpec> specs;
    for (const auto& o : app::engine_options(app::kCpuCacheKnob)) specs.push_back(o);
    const app::OptionTable table("bench", "", {{"engine", "engine"}}, specs);
    const auto engine = app::resolve(table, {{}, app::environment()}).bind<app::EngineSettings>();
    fluxtrain::train::use_caching_cpu_allocator(engine.cpu_cache_mb << 20);
  }
  if (device.is_cuda() && !at::hasCUDA()) fail("--device cuda: this libtorch sees no CUDA device");
  if (o.precision != "fp32" && o.precision != "bf16") fail("--precision: '", o.precision, "'; expected fp32 or bf16");
  const at::ScalarType dtype = o.precision == "bf16" ? at::kBFloat16 : at::kFloat;

  models::ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.device = device;
  // The model layer's fp8 settings as they are, without the train option's device rules (fluxtrain train
  // refuses fp8 compute on the CPU; bench/fp8_compute_curve.py measures its numbers there, tensorwise).
  model_options.fp8_base = o.fp8_base;
  model_options.fp8_matmul = parse_enum<models::Fp8Matmul>(o.fp8_matmul, "--fp8-matmul");
  if (model_options.fp8_matmul != models::Fp8Matmul::off) {
    if (!o.fp8_base) fail("--fp8-matmul ", o.fp8_matmul, " needs --fp8-base 1");
    if (!models::fp8_matmul_supported(device, model_options.fp8_matmul, dtype))
      fail("--fp8-matmul ", o.fp8_matmul, ": _scaled_mm does not run on ", device.str(), " in ", o.precision, ": ",
           models::fp8_matmul_failure(device, model_options.fp8_matmul, dtype));
  }
  auto loaded = models::load_flux(o.model, model_options);
  models::FluxTransformerImpl& model = *loaded.model;
  for (auto& p : model.parameters()) p.requires_grad_(false);

  lora::LoraOptions lora_options;
  lora_options.rank = o.rank;
  lora_options.alpha = o.alpha;
  lora_options.split_qkv = o.split_qkv;
  lora::LoraNetwork network(model, lora_options, o.seed);
  if (!o.write_lora.empty()) {
    safetensors::write(o.write_lora, network.kohya_state(), {{"ss_network_module", "networks.lora_flux"}});
    std::cout << nlohmann::json{{"lora", o.write_lora},
                                {"modules", network.modules().size()},
                                {"parameters", network.parameter_count()}}
                     .dump()
              << "\n";
    return 0;
  }
  if (!o.lora_in.empty()) network.load_kohya(lora::read_lora_file(o.lora_in), o.lora_in);
  network.set_training(true);
  // Every batch starts from these LoRA values, a new optimizer and freshly seeded generators: what a
  // process of its own for that batch would measure.
  std::vector<at::Tensor> initial;
  for (const auto& p : network.parameters()) initial.push_back(p.detach().clone());

  train::StepOptions step_options;
  step_options.checkpointing.enabled = o.checkpointing;
  step_options.checkpointing.keep_attention = o.keep_attention;
  step_options.checkpointing.keep_products = parse_enum<models::KeepProducts>(o.keep_products, "--keep-products");
  step_options.compute_dtype = dtype;
  step_options.max_grad_norm = 1.0;
  step_options.objective.noise_offset = 0.0;  // the eager reference step draws plain noise

  std::vector<int64_t> batches{o.batch};
  if (!o.batches.empty()) {
    batches.clear();
    std::stringstream list(o.batches);
    std::string item;
    while (std::getline(list, item, ',')) {
      if (item.empty()) continue;
      try {
        batches.push_back(std::stoll(item));
      } catch (const std::exception&) {
        batches.push_back(0);
      }
      if (batches.back() < 1) fail("--batches '", o.batches, "': expected positive batch sizes, e.g. 1,2,4");
    }
  }

  bool out_of_memory = false;
  for (const int64_t batch : batches) {
    nlohmann::json out;
    out["side"] = "fluxtrain";
    out["batch"] = batch;
    if (out_of_memory) {  // a larger batch than one that did not fit
      out["oom"] = true;
      out["error"] = "a smaller batch ran out of memory";
      std::cout << out.dump() << "\n" << std::flush;
      continue;
    }
    try {
      {
        at::NoGradGuard no_grad;
        auto params = network.parameters();
        for (size_t i = 0; i < params.size(); ++i) params[i].detach().copy_(initial[i]);
      }
      measure_batch(o, batch, device, model, network, step_options, out);
      out["runtime_rss"] = runtime_rss;
      if (!device.is_cuda()) out["peak_bytes"] = out["peak_rss"].get<int64_t>() - runtime_rss;
    } catch (const c10::OutOfMemoryError& e) {
      out_of_memory = true;
      out["oom"] = true;
      out["error"] = std::string(e.what()).substr(0, 300);
      for (auto& p : network.parameters()) p.mutable_grad() = at::Tensor();
    }
    std::cout << out.dump() << "\n" << std::flush;
  }
  print_checks(device, dtype);
  return 0;
}

void measure_batch(const Options& o, int64_t batch, at::Device device, models::FluxTransformerImpl& model,
                   lora::LoraNetwork& network, const train::StepOptions& step_options, nlohmann::json& out) {
  auto optimizer = optim::make_optimizer("AdamW", "", network.parameters(), o.lr, 0.01);
  train::StepGenerators generators{at::detail::createCPUGenerator(o.seed + 100),
                                   at::detail::createCPUGenerator(o.seed + 101)};
  std::vector<train::LatentBatch> micro_batches{read_batch(o.inputs, batch)};

  const int64_t setup_rss = proc_status_bytes("VmRSS");
  bool hwm_reset = false;
  if (device.is_cuda()) {
    at::accelerator::synchronizeDevice(device.index() < 0 ? 0 : device.index());
    fluxtrain::train::reset_device_peak_memory(device);
  } else {
    hwm_reset = reset_peak_rss();
    fluxtrain::train::reset_cpu_peak();
  }

  std::vector<double> step_ms, step_cpu_ms, losses, grad_norms;
  for (int i = 0; i < o.warmup + o.steps; ++i) {
    auto start = std::chrono::steady_clock::now();
    const double cpu_start = process_cpu_ms();
    train::StepResult r = train::train_step(model, *optimizer, micro_batches, step_options, generators);
    if (device.is_cuda()) at::accelerator::synchronizeDevice(device.index() < 0 ? 0 : device.index());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (i >= o.warmup) {
      step_ms.push_back(ms);
      step_cpu_ms.push_back(process_cpu_ms() - cpu_start);
    }
    losses.push_back(r.loss);
    grad_norms.push_back(r.grad_norm);
  }

  out["device"] = device.str();
  out["precision"] = o.precision;
  out["fp8_base"] = o.fp8_base;
  out["fp8_matmul"] = o.fp8_matmul;
  out["checkpointing"] = o.checkpointing;
  out["keep_attention"] = o.keep_attention;
  out["keep_products"] = o.keep_products;
  out["threads"] = at::get_num_threads();
  const char* thp = std::getenv("THP_MEM_ALLOC_ENABLE");  // libc10's switch, read by both sides
  out["thp"] = thp ? thp : "";
  out["lora_parameters"] = network.parameter_count();
  out["step_ms"] = step_ms;
  out["median_ms"] = median(step_ms);
  out["step_cpu_ms"] = step_cpu_ms;
  out["median_cpu_ms"] = median(step_cpu_ms);
  out["fp8_base"] = o.fp8_base;
  out["fp8_matmul"] = o.fp8_matmul;
  out["losses"] = losses;
  out["grad_norms"] = grad_norms;
  out["setup_rss"] = setup_rss;
  if (device.is_cuda()) {
    out["peak_bytes"] = fluxtrain::train::device_peak_allocated_bytes(device);
  } else {
    out["peak_rss"] = proc_status_bytes("VmHWM");
    out["hwm_reset"] = hwm_reset;
    const auto cache = fluxtrain::train::cpu_cache_stats();
    out["cpu_cache"] = {{"hits", cache.hits},
                        {"misses", cache.misses},
                        {"cached_bytes", cache.cached_bytes},
                        {"peak_live_bytes", cache.peak_live_bytes}};
    out["peak_tensor_bytes"] = cache.peak_tensor_bytes;  // what the memory planner predicts
  }
  if (!o.save_lora.empty()) {
    std::vector<std::pair<std::string, at::Tensor>> state;
    for (const auto& [name, tensor] : network.kohya_state()) state.emplace_back(name, tensor.to(at::kFloat));
    safetensors::write(o.save_lora, state, {{"ss_network_module", "networks.lora_flux"}});
    out["saved_lora"] = o.save_lora;
  }
}

// The last line: checks that run after every measurement (so they touch none of the peaks above).
void print_checks(at::Device device, at::ScalarType dtype) {
  nlohmann::json out;
  out["side"] = "fluxtrain";
  // The attention kept for the recomputation (models/attention.h): its gradients against autograd's on
  // this device and dtype (after the measurement, so it does not touch the peaks above).
  try {
    out["attention_stash_check"] = models::attention_stash_self_check(device, dtype);
  } catch (const std::exception& e) {
    out["attention_stash_check"] = std::string(e.what()).substr(0, 300);
  }
  std::cout << out.dump() << "\n";
}

}  // namespace
}  // namespace fluxtrain::bench

int main(int argc, char** argv) {
  fluxtrain::core::prefer_huge_pages_for_tensors();  // as the fluxtrain executable does
  using fluxtrain::bench::Options;
  Options o;
  CLI::App app{"fluxtrain_bench: time and measure fluxtrain's LoRA training step (see bench/train_step.py)",
               "fluxtrain_bench"};
  app.add_option("--model", o.model, "Flux transformer checkpoint (BFL layout)")->required();
  app.add_option("--inputs", o.inputs, "safetensors with latents [N,16,H,W], t5 [N,L,C], clip_pooled [N,V]");
  app.add_option("--batch", o.batch, "samples per step (the first B of the inputs)")->check(CLI::PositiveNumber);
  app.add_option("--batches", o.batches,
                 "comma-separated batch sizes measured one after the other (each from the same LoRA, a new optimizer "
                 "and freshly seeded generators; one JSON line each); overrides --batch");
  app.add_option("--fp8-base", o.fp8_base, "store the blocks' Linear weights in fp8 e4m3fn (kohya --fp8_base) (0/1)");
  app.add_option("--fp8-matmul", o.fp8_matmul, "with --fp8-base: off (upcast), tensorwise or rowwise")
      ->check(CLI::IsMember({"off", "tensorwise", "rowwise"}));
  app.add_option("--steps", o.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--checkpointing", o.checkpointing, "gradient checkpointing per block (0/1)");
  app.add_option("--keep-attention", o.keep_attention, "checkpointed blocks keep their attention output (0/1)");
  app.add_option("--keep-products", o.keep_products, "frozen products checkpointed blocks keep: none, outputs, all");
  app.add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--precision", o.precision, "fp32 or bf16 (weights and compute; LoRA masters stay fp32)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--rank", o.rank, "LoRA rank")->check(CLI::PositiveNumber);
  app.add_option("--alpha", o.alpha, "LoRA alpha");
  app.add_option("--split-qkv", o.split_qkv, "separate LoRA pairs for q, k, v (and single blocks' MLP input) (0/1)");
  app.add_option("--lr", o.lr, "AdamW learning rate (weight decay 0.01)");
  app.add_option("--seed", o.seed, "seed of the LoRA initialisation and of the timestep/noise generators");
  app.add_option("--threads", o.threads, "intra-op threads (0: libtorch's default)");
  app.add_option("--lora", o.lora_in, "start from this kohya-format LoRA instead of the seeded initialisation");
  app.add_option("--write-lora", o.write_lora, "only write the seeded initial LoRA (kohya format) here and exit");
  app.add_option("--save-lora", o.save_lora, "after the steps, write the trained LoRA (kohya format, fp32) here");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (o.write_lora.empty() && o.inputs.empty()) fluxtrain::fail("--inputs is required (unless --write-lora)");
    return fluxtrain::bench::run(o);
  } catch (const std::exception& e) {
    std::cerr << "fluxtrain_bench: error: " << e.what() << "\n";
    return 1;
  }
}
