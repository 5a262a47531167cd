// What a training state costs at Flux.1 dev's real size (docs/training.md, "What a state costs"):
//
//   fluxtrain_state_cost --rank 32 [--rank 128] [--dir DIR] [--shapes-only]
//
// For each rank: the LoRA's tensors come from Flux.1 dev built on the meta device (its real shapes, no
// weights), with the network the trainer builds (lora::LoraNetwork, default targets). Then, unless
// --shapes-only, they are made real on the CPU (down matrices random, up matrices zero, as a fresh LoRA),
// the seed's Prodigy (decouple, betas 0.9/0.999, no bias correction, no safeguard warmup, d_coef 2,
// weight decay 0.1) takes one step on random gradients so that every slot exists, and the state is saved,
// verified and loaded with the trainer's own functions (train::save_state, verify_state, load_state) in
// DIR (default: a folder under the system's temporary folder, removed afterwards). Prints one markdown row
// per rank: parameters, LoRA bytes, optimizer bytes, the state's bytes on disk, and the seconds to save
// (write + SHA-256 + fsync + rename), verify and load it.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/strings.h"
#include "lora/network.h"
#include "models/flux/flux.h"
#include "optim/optimizer.h"
#include "train/state.h"

namespace fs = std::filesystem;
using namespace fluxtrain;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t bytes_of(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  int64_t total = 0;
  for (const auto& [name, t] : tensors) total += static_cast<int64_t>(t.nbytes());
  return total;
}

struct Row {
  int64_t rank = 0, parameters = 0, lora_bytes = 0, optimizer_bytes = -1, disk_bytes = -1;
  double save_s = -1, verify_s = -1, load_s = -1;
};

Row measure(int64_t rank, const fs::path& dir, bool shapes_only) {
  Row row;
  row.rank = rank;
  std::vector<std::vector<int64_t>> shapes;
  {
    models::ModelOptions meta;
    meta.device = at::kMeta;
    meta.dtype = at::kBFloat16;
    models::FluxTransformer model(models::FluxConfig::dev(), meta);
    lora::LoraOptions options;
    options.rank = rank;
    options.alpha = 4;  // the seed's PARAMS_NETWORK_ALPHA; it does not change any size
    lora::LoraNetwork network(*model, options, 42);
    for (const at::Tensor& p : network.parameters()) shapes.push_back(p.sizes().vec());
  }
  for (const auto& s : shapes) row.parameters += c10::multiply_integers(s);
  row.lora_bytes = row.parameters * 4;  // fp32, as trained and saved in a state
  if (shapes_only) return row;

  // Real tensors of those shapes: LoraNetwork::parameters() lists each part's down, then up matrix.
  std::vector<at::Tensor> params;
  for (size_t i = 0; i < shapes.size(); ++i)
    params.push_back(i % 2 == 0 ? at::randn(shapes[i]).mul_(0.01) : at::zeros(shapes[i]));
  optim::OptimizerSettings settings;
  settings.type = "Prodigy";
  settings.args = "decouple=True betas=0.9,0.999 use_bias_correction=False safeguard_warmup=False";
  settings.weight_decay = 0.1;
  settings.d_coef = 2;
  auto optimizer = optim::make_optimizer(settings, params);
  for (auto& p : params) p.mutable_grad() = at::randn_like(p).mul_(1e-3);
  optimizer->step();
  optimizer->zero_grad();

  train::TrainingState state;
  for (size_t i = 0; i < params.size(); ++i) state.trainable.emplace_back(std::to_string(i), params[i]);
  state.optimizer_tensors = optimizer->state_tensors();
  state.info["step"] = 1;
  state.info["optimizer"] = optimizer->state_scalars();
  row.optimizer_bytes = bytes_of(state.optimizer_tensors);

  auto start = std::chrono::steady_clock::now();
  const fs::path saved = train::save_state(dir, 1, state);
  row.save_s = seconds_since(start);
  row.disk_bytes = 0;
  for (const auto& entry : fs::directory_iterator(saved)) row.disk_bytes += static_cast<int64_t>(entry.file_size());
  const size_t count = params.size();
  state = {};  // the memory back before the state is read (rank 128: about 10 GiB)
  optimizer.reset();
  params.clear();
  start = std::chrono::steady_clock::now();
  if (const std::string wrong = train::verify_state(saved); !wrong.empty()) fail(saved.string(), ": ", wrong);
  row.verify_s = seconds_since(start);
  start = std::chrono::steady_clock::now();
  train::TrainingState loaded = train::load_state(saved, /*verified=*/true);  // as a resume does after verify
  row.load_s = seconds_since(start);
  if (loaded.trainable.size() != count)
    fail(saved.string(), ": the state read back holds ", loaded.trainable.size(), " tensors, not ", count);
  return row;
}

std::string gib(int64_t bytes) {
  if (bytes < 0) return "-";
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return text;
}

std::string secs(double s) {
  if (s < 0) return "-";
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f s", s);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<int64_t> ranks;
    fs::path dir;
    bool shapes_only = false;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--rank" && i + 1 < argc) {
        ranks.push_back(std::stoll(argv[++i]));
      } else if (arg == "--dir" && i + 1 < argc) {
        dir = argv[++i];
      } else if (arg == "--shapes-only") {
        shapes_only = true;
      } else {
        std::cerr << "usage: fluxtrain_state_cost --rank N [--rank N ...] [--dir DIR] [--shapes-only]\n"
                  << "unknown argument: " << arg << "\n";
        return 2;
      }
    }
    if (ranks.empty()) ranks = {32, 128};
    const bool own_dir = dir.empty();
    if (own_dir) dir = fs::temp_directory_path() / ("fluxtrain-state-cost-" + std::to_string(::getpid()));
    std::cout << "| rank | parameters | LoRA (fp32) | Prodigy state | state on disk | save | verify | load |\n"
              << "|---|---|---|---|---|---|---|---|\n";
    for (int64_t rank : ranks) {
      const fs::path run = dir / ("rank-" + std::to_string(rank));
      Row r = measure(rank, run, shapes_only);
      std::cout << "| " << r.rank << " | " << r.parameters << " | " << gib(r.lora_bytes) << " | "
                << gib(r.optimizer_bytes) << " | " << gib(r.disk_bytes) << " | " << secs(r.save_s) << " | "
                << secs(r.verify_s) << " | " << secs(r.load_s) << " |" << std::endl;
      if (own_dir) fs::remove_all(run);
    }
    if (own_dir) fs::remove_all(dir);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "fluxtrain_state_cost: " << e.what() << "\n";
    return 1;
  }
}
