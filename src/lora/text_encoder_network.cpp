#include "lora/text_encoder_network.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "lora/keys.h"
#include "models/clip/clip_text.h"
#include "models/linear.h"
#include "models/t5/t5_encoder.h"

namespace fluxtrain::lora {
namespace {

using Targets = std::vector<std::pair<std::string, std::shared_ptr<models::LinearImpl>>>;

// Every Linear below `model` whose path contains `inside` (the encoder layers: no embedding or projection
// is a Linear there, so these are exactly the attention and MLP layers kohya adapts).
Targets linears_inside(torch::nn::Module& model, std::string_view inside) {
  Targets out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    auto linear = std::dynamic_pointer_cast<models::LinearImpl>(item.value());
    if (linear && item.key().find(inside) != std::string::npos) out.emplace_back(item.key(), linear);
  }
  return out;
}

}  // namespace

Targets clip_lora_targets(models::ClipTextModelImpl& clip) {
  return linears_inside(clip, "encoder.layers.");
}

Targets t5_lora_targets(models::T5EncoderImpl& t5) {
  return linears_inside(t5, "encoder.block.");
}

TextEncoderNetwork::TextEncoderNetwork(models::ClipTextModelImpl* clip, models::T5EncoderImpl* t5,
                                       const LoraOptions& options, uint64_t seed, at::Generator dropout) {
  if (clip == nullptr && t5 == nullptr) fail("internal: a text-encoder LoRA network without an encoder");
  at::Generator generator = at::detail::createCPUGenerator(seed);
  auto add = [&](const Targets& targets, std::string_view prefix) {
    for (const auto& [path, linear] : targets) {
      const double alpha = options.alpha == 0 ? static_cast<double>(options.rank) : options.alpha;
      auto module = std::make_shared<LoraModule>(keys::module_name(prefix, path), linear->in_features,
                                                 std::vector<int64_t>{linear->out_features}, options.rank, alpha,
                                                 linear->weight.device(), generator);
      module->set_dropout(options.dropout, dropout);
      linear->adapter = module;
      modules_.push_back(module);
      targets_.push_back(linear);
    }
  };
  if (clip != nullptr) add(clip_lora_targets(*clip), keys::kClipPrefix);
  clip_modules_ = modules_.size();
  if (t5 != nullptr) add(t5_lora_targets(*t5), keys::kT5Prefix);
  if (modules_.empty()) fail("internal: the text encoders have no Linear layers to adapt");
}

TextEncoderNetwork::~TextEncoderNetwork() {
  for (auto& target : targets_) target->adapter.reset();
}

std::vector<at::Tensor> TextEncoderNetwork::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& m : modules_) {
    out.push_back(m->parts()[0].down);
    out.push_back(m->parts()[0].up);
  }
  return out;
}

void TextEncoderNetwork::set_training(bool training) {
  for (auto& m : modules_) m->set_training(training);
}

void TextEncoderNetwork::set_multiplier(double multiplier) {
  for (auto& m : modules_) m->set_multiplier(multiplier);
}

std::vector<std::pair<std::string, at::Tensor>> TextEncoderNetwork::kohya_state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  at::NoGradGuard no_grad;
  for (const auto& m : modules_) {
    const LoraPart& part = m->parts()[0];
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::alpha), at::scalar_tensor(m->alpha(), at::kFloat));
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::down), part.down.detach().to(at::kCPU).clone());
    out.emplace_back(keys::tensor_key(m->name(), keys::Part::up), part.up.detach().to(at::kCPU).clone());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void TextEncoderNetwork::load_kohya(const std::map<std::string, at::Tensor>& tensors, const std::string& file) {
  at::NoGradGuard no_grad;
  std::set<std::string> used;
  std::vector<std::string> problems;
  for (auto& m : modules_) {
    auto get = [&](keys::Part part) { return take_part(tensors, m->name(), part, used); };
    const at::Tensor* down = get(keys::Part::down);
    const at::Tensor* up = get(keys::Part::up);
    const at::Tensor* alpha = get(keys::Part::alpha);
    LoraPart& part = m->parts()[0];
    if (down == nullptr || up == nullptr) {
      problems.push_back(cat(m->name(), ": missing from the file"));
      continue;
    }
    if (down->sizes() != part.down.sizes() || up->sizes() != part.up.sizes()) {
      problems.push_back(cat(m->name(), ": down ", down->sizes(), " / up ", up->sizes(), ", expected down ",
                             part.down.sizes(), " / up ", part.up.sizes(), " (rank ", m->rank(), ")"));
      continue;
    }
    part.down.copy_(*down);
    part.up.copy_(*up);
    if (alpha != nullptr) m->set_alpha(alpha->item<double>());
  }
  std::vector<std::string> extra;
  for (const auto& [name, t] : tensors) {
    const auto parsed = keys::parse(name);
    if (keys::is_text_encoder(parsed ? parsed->module : name) && !used.count(name)) extra.push_back(name);
  }
  if (!extra.empty())
    problems.push_back(cat(extra.size(), " text-encoder tensors of the file belong to no module of this network, e.g. ",
                           extra.front()));
  if (!problems.empty()) {
    std::string message = cat(file, ": its text-encoder LoRA does not fit this run's (", problems.size(), " problems):");
    for (size_t i = 0; i < problems.size() && i < 10; ++i) message += "\n  " + problems[i];
    message += "\n fix: use the network_dim and train_t5xxl the file was trained with";
    throw Error(message);
  }
}

bool has_text_encoder_modules(const std::string& path) {
  safetensors::Reader reader(path);
  for (const auto& info : reader.header().tensors) {
    const auto parsed = keys::parse(info.name);
    if (keys::is_text_encoder(parsed ? parsed->module : info.name)) return true;
  }
  return false;
}

TextEncoderMergeReport merge_text_encoder_lora(const std::string& path, models::ClipTextModelImpl* clip,
                                               models::T5EncoderImpl* t5, double strength) {
  // Every name a file may give each adapted layer: kohya's, and diffusers/PEFT's (text_encoder. for CLIP-L,
  // with or without transformers' text_model. level; text_encoder_2. for T5).
  struct Target {
    std::shared_ptr<models::LinearImpl> linear;
    bool t5 = false;
  };
  std::map<std::string, Target> table;
  if (clip != nullptr) {
    for (const auto& [p, linear] : clip_lora_targets(*clip)) {
      table[keys::module_name(keys::kClipPrefix, p)] = {linear, false};
      table[cat(keys::kDiffusersClipPrefix, p)] = {linear, false};
      if (p.starts_with("text_model.")) table[cat(keys::kDiffusersClipPrefix, p.substr(11))] = {linear, false};
    }
  }
  if (t5 != nullptr) {
    for (const auto& [p, linear] : t5_lora_targets(*t5)) {
      table[keys::module_name(keys::kT5Prefix, p)] = {linear, true};
      table[cat(keys::kDiffusersT5Prefix, p)] = {linear, true};
    }
  }
  safetensors::Reader reader(path);
  struct Group {
    at::Tensor down, up, alpha;
  };
  std::map<std::string, Group> groups;
  std::vector<std::string> problems;
  for (const auto& info : reader.header().tensors) {
    const auto parsed = keys::parse(info.name);
    const std::string module = parsed ? parsed->module : info.name;
    if (!keys::is_text_encoder(module)) continue;
    if (auto adapter = keys::unsupported_adapter(info.name)) {
      problems.push_back(cat(info.name, ": a ", adapter->name, " tensor; text encoders take plain LoRA only"));
      continue;
    }
    if (!parsed) {
      problems.push_back(cat(info.name, ": not a LoRA down / up / alpha tensor"));
      continue;
    }
    Group& g = groups[module];
    at::Tensor t = reader.tensor(info).to(at::kFloat);
    (parsed->part == keys::Part::down ? g.down : parsed->part == keys::Part::up ? g.up : g.alpha) = t;
  }
  TextEncoderMergeReport report;
  std::vector<std::pair<Target, at::Tensor>> deltas;
  for (const auto& [module, g] : groups) {
    auto it = table.find(module);
    if (it == table.end()) {
      const bool t5_name = module.starts_with(keys::kT5Prefix) || module.starts_with(keys::kDiffusersT5Prefix);
      if ((t5_name ? static_cast<void*>(t5) : static_cast<void*>(clip)) == nullptr) {
        ++report.skipped;  // an encoder the caller did not give
        continue;
      }
      problems.push_back(cat(module, ": fits no adapted layer of ", t5_name ? "T5-XXL" : "CLIP-L",
                             "; a text-encoder LoRA for another model?"));
      continue;
    }
    const auto& linear = it->second.linear;
    if (!g.down.defined() || !g.up.defined()) {
      problems.push_back(cat(module, ": has only one of its ", keys::part_label(keys::Part::down), " / ",
                             keys::part_label(keys::Part::up), " weights"));
      continue;
    }
    if (g.down.dim() != 2 || g.up.dim() != 2 || g.up.size(1) != g.down.size(0) ||
        g.down.size(1) != linear->in_features || g.up.size(0) != linear->out_features) {
      problems.push_back(cat(module, ": down ", g.down.sizes(), " / up ", g.up.sizes(), ", expected down [rank, ",
                             linear->in_features, "] / up [", linear->out_features, ", rank]"));
      continue;
    }
    const double scale = g.alpha.defined() ? g.alpha.item<double>() / static_cast<double>(g.down.size(0)) : 1.0;
    deltas.emplace_back(it->second, at::mm(g.up, g.down) * (strength * scale));
    ++(it->second.t5 ? report.t5_modules : report.clip_modules);
  }
  if (!problems.empty()) {
    std::string message = cat(path, ": its text-encoder LoRA cannot be applied (", problems.size(), " problems):");
    for (size_t i = 0; i < problems.size() && i < 10; ++i) message += "\n  " + problems[i];
    throw Error(message);
  }
  at::NoGradGuard no_grad;
  for (const auto& [target, delta] : deltas) {
    at::Tensor& weight = target.linear->weight;
    weight.copy_(weight.to(at::kFloat) + delta.to(weight.device()));
  }
  return report;
}

}  // namespace fluxtrain::lora
