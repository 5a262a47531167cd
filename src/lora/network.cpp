#include "lora/network.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "lora/keys.h"
#include "lora/selection.h"
#include "models/flux/flux.h"

namespace fluxtrain::lora {
LoraNetwork::LoraNetwork(models::FluxTransformerImpl& model, const LoraOptions& options, uint64_t seed)
    : options_(options) {
  std::map<std::string, AdapterTarget> targets;
  for (auto& target : adapter_targets(model.config, options)) targets.emplace(target.path, std::move(target));
  // The model's device (a block's weights may wait in host memory: block swapping, train/block_swap.h).
  const at::Device device = model.img_in->weight.device();
  at::Generator generator = at::detail::createCPUGenerator(seed);
  dropout_generator_ = at::detail::createCPUGenerator(seed + 1);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto linear = std::dynamic_pointer_cast<models::LinearImpl>(item.value());
    if (!linear) continue;
    const std::string& path = item.key();
    auto target = targets.find(path);
    if (target == targets.end()) continue;
    const int64_t rank = target->second.rank;
    double alpha = options.alpha == 0 ? static_cast<double>(rank) : options.alpha;
    if (options.lycoris()) {
      auto module = std::make_shared<LycorisModule>(keys::module_name(keys::kTransformerPrefix, path), *linear, options,
                                                    rank, alpha, device, generator);
      linear->adapter = module;
      lycoris_.push_back(module);
      targets_.push_back(linear);
      target_paths_.push_back(path);
      continue;
    }
    auto module = std::make_shared<LoraModule>(keys::module_name(keys::kTransformerPrefix, path), linear->in_features,
                                               target->second.outs, rank, alpha, device, generator);
    module->set_dropout(options.dropout, dropout_generator_);
    linear->adapter = module;
    modules_.push_back(module);
    targets_.push_back(linear);
    target_paths_.push_back(path);
  }
  if (modules_.empty() && lycoris_.empty())
    fail("the LoRA network has no modules: train_blocks / block indices / per-layer ranks select nothing");
}

LoraNetwork::~LoraNetwork() {
  for (auto& target : targets_) target->adapter.reset();
}

std::vector<at::Tensor> LoraNetwork::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& m : modules_) {
    for (const auto& part : m->parts()) {
      out.push_back(part.down);
      out.push_back(part.up);
    }
  }
  for (const auto& m : lycoris_) {
    for (const auto& p : m->parameters()) out.push_back(p);
  }
  return out;
}

int64_t LoraNetwork::parameter_count() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

void LoraNetwork::set_training(bool training) {
  for (auto& m : modules_) m->set_training(training);
  for (auto& m : lycoris_) m->set_training(training);
}

void LoraNetwork::set_multiplier(double multiplier) {
  for (auto& m : modules_) m->set_multiplier(multiplier);
  for (auto& m : lycoris_) m->set_multiplier(multiplier);
}

std::vector<std::pair<std::string, at::Tensor>> LoraNetwork::kohya_state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  at::NoGradGuard no_grad;
  for (const auto& m : modules_) {
    const auto& parts = m->parts();
    const int64_t k = static_cast<int64_t>(parts.size());
    at::Tensor down, up;
    if (k == 1) {
      down = parts[0].down.detach().to(at::kCPU).clone();
      up = parts[0].up.detach().to(at::kCPU).clone();
    } else {
      std::vector<at::Tensor> downs;
      int64_t rows = 0;
      for (const auto& p : parts) {
        downs.push_back(p.down.detach().to(at::kCPU));
        rows += p.up.size(0);
      }
      down = at::cat(downs, 0);
      up = at::zeros({rows, k * m->rank()}, at::kFloat);
      int64_t row = 0;
      for (int64_t j = 0; j < k; ++j) {
        const at::Tensor& u = parts[static_cast<size_t>(j)].up;
        up.narrow(0, row, u.size(0)).narrow(1, j * m->rank(), m->rank()).copy_(u.detach());
        row += u.size(0);
      }
    }
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::alpha),
                     at::scalar_tensor(m->alpha() * static_cast<double>(k), at::kFloat));
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::down), down.contiguous());
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::up), up.contiguous());
  }
  for (const auto& m : lycoris_) m->append_state(out);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void LoraNetwork::load_kohya(const std::map<std::string, at::Tensor>& tensors, const std::string& file) {
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  std::vector<std::string> problems;
  for (size_t i = 0; i < modules_.size(); ++i) {
    auto& m = modules_[i];
    auto& parts = m->parts();
    const int64_t k = static_cast<int64_t>(parts.size()), r = m->rank();
    auto get = [&](keys::Part part) { return take_part(tensors, m->name(), part, used); };
    const at::Tensor* down = get(keys::Part::down);
    const at::Tensor* up = get(keys::Part::up);
    const at::Tensor* alpha = get(keys::Part::alpha);
    if (down == nullptr || up == nullptr) {
      problems.push_back(cat(m->name(), ": missing from the file"));
      continue;
    }
    int64_t rows = 0;
    for (const auto& p : parts) rows += p.up.size(0);
    if (down->dim() != 2 || down->size(0) != k * r || down->size(1) != parts[0].down.size(1) || up->dim() != 2 ||
        up->size(0) != rows || up->size(1) != k * r) {
      problems.push_back(cat(m->name(), ": down ", down->sizes(), " / up ", up->sizes(), ", expected down [", k * r,
                             ", ", parts[0].down.size(1), "] / up [", rows, ", ", k * r, "] (rank ", r,
                             k > 1 ? ", split_qkv" : "", ")"));
      continue;
    }
    int64_t row = 0;
    bool block_diagonal_reported = false;
    for (int64_t j = 0; j < k; ++j) {
      auto& part = parts[static_cast<size_t>(j)];
      part.down.copy_(down->narrow(0, j * r, r));
      at::Tensor block = up->narrow(0, row, part.up.size(0));
      part.up.copy_(block.narrow(1, j * r, r));
      // A fused up must be block-diagonal to be split exactly (only split modules need the check).
      if (k > 1 && !block_diagonal_reported) {
        at::Tensor off_diagonal = block.clone();
        off_diagonal.narrow(1, j * r, r).zero_();
        if (off_diagonal.count_nonzero().item<int64_t>() != 0) {
          problems.push_back(cat(m->name(), ": the fused up weight is not block-diagonal, so it cannot be split into ",
                                 keys::split_parts_text(target_paths_[i]), "; load it without split_qkv"));
          block_diagonal_reported = true;
        }
      }
      row += part.up.size(0);
    }
    if (alpha != nullptr) {
      double file_alpha = alpha->item<double>() / static_cast<double>(k);
      if (std::abs(file_alpha - m->alpha()) > 1e-6 * std::max(1.0, std::abs(m->alpha()))) {
        log::warn(file, ": ", m->name(), " has alpha ", file_alpha, " (per part), the network was set up with ",
                  m->alpha(), "; the file's value is kept");
      }
      m->set_alpha(file_alpha);
    }
  }
  for (auto& m : lycoris_) m->load(tensors, used, problems);
  std::vector<std::string> extra;
  for (const auto& [name, t] : tensors) {
    if (!used.count(name)) extra.push_back(name);
  }
  if (!extra.empty())
    problems.push_back(
        cat(extra.size(), " tensors of the file belong to no module of this network, e.g. ", extra.front()));
  if (!problems.empty()) {
    std::string message = cat(file, ": does not fit the LoRA network (", problems.size(), " problems):");
    for (size_t i = 0; i < problems.size() && i < 10; ++i) message += "\n  " + problems[i];
    message +=
        "\n fix: use the network_type / network_dim / network_alpha / split_qkv / train_blocks (LoKr: factor, "
        "decompose_both, full_matrix; DoRA: dora_wd) the file was trained with, or set dim_from_weights = true to "
        "build the network from the file";
    throw Error(message);
  }
}

std::map<std::string, at::Tensor> read_lora_file(const std::string& path) {
  safetensors::Reader reader(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& info : reader.header().tensors) out[info.name] = reader.tensor(info).to(at::kFloat).clone();
  return out;
}

}  // namespace fluxtrain::lora
