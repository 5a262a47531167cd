#include "lora/convert.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "lora/keys.h"
#include "models/convert.h"
#include "models/flux/flux.h"

namespace fluxtrain::lora {
namespace {

// Where a module name of some layout lands in the BFL model.
struct Target {
  std::string module;
  int64_t row_offset = 0;
  int64_t rows = 0;
  int64_t in_features = 0;
  bool swap_halves = false;  // diffusers norm_out [scale, shift] -> BFL [shift, scale]
  const char* layout = "";
  bool whole = true;  // the whole Linear (not a row range of a fused one)
};

std::map<std::string, std::shared_ptr<models::LinearImpl>> linears_of(const models::FluxTransformerImpl& model) {
  std::map<std::string, std::shared_ptr<models::LinearImpl>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto linear = std::dynamic_pointer_cast<models::LinearImpl>(item.value())) out[item.key()] = linear;
  }
  return out;
}

// Every name a LoRA module may have for each Linear of the model, in every layout.
std::map<std::string, Target> target_table(const models::FluxTransformerImpl& model) {
  std::map<std::string, Target> table;
  const auto linears = linears_of(model);
  for (const auto& [path, linear] : linears) {
    Target t{path, 0, linear->out_features, linear->in_features, false, "comfyui"};
    table.emplace(path, t);
    t.layout = "kohya";
    table.emplace(keys::module_name(keys::kTransformerPrefix, path), t);
  }
  const auto& c = model.config;
  for (const auto& [canonical, source] : models::flux_diffusers_map(c)) {
    if (!canonical.ends_with(".weight")) continue;
    const std::string path = canonical.substr(0, canonical.size() - 7);
    auto linear = linears.find(path);
    if (linear == linears.end()) continue;  // the norms' scales
    const auto parts = keys::split_parts(path);
    int64_t offset = 0;
    for (size_t k = 0; k < source.keys.size(); ++k) {
      const std::string name = source.keys[k].substr(0, source.keys[k].size() - 7);
      // diffusers keeps the split parts of BFL's fused Linears apart, in BFL's row order.
      int64_t rows = linear->second->out_features;
      if (source.op == models::KeySource::Op::concat) {
        TORCH_CHECK(k < parts.size(), "the diffusers map concatenates more parts into ", path,
                    " than keys::split_parts");
        rows = parts[k].mlp_input ? c.mlp_hidden : c.hidden_size;
      }
      Target t{path,       offset, rows, linear->second->in_features, source.op == models::KeySource::Op::swap_halves,
               "diffusers", source.op != models::KeySource::Op::concat};
      table.emplace(name, t);
      t.layout = "kohya";
      table.emplace(keys::module_name(keys::kDiffusersTransformerPrefix, name), t);
      table.emplace(keys::module_name(keys::kTransformerPrefix, name), t);
      offset += rows;
    }
  }
  return table;
}

// The layouts read_lora accepts, as an error message names them.
std::string accepted_layouts() {
  return cat("kohya ", keys::kTransformerPrefix, "*, diffusers/PEFT transformer.*", keys::kPeftDown, "/", keys::kPeftUp,
             ", ComfyUI diffusion_model.*");
}

struct Group {
  at::Tensor down, up, alpha;
  std::string down_key, up_key;
  PartTensors lycoris;  // every part, when one of them is LyCORIS's
  std::string lycoris_key;
};

}  // namespace

LoraContents read_lora(const std::string& path, const models::FluxTransformerImpl& model) {
  safetensors::Reader reader(path);
  const auto table = target_table(model);
  LoraContents out;
  out.path = path;

  std::map<std::string, Group> groups;  // by the file's module name
  std::map<std::string_view, std::vector<std::string>> unsupported;
  std::vector<std::string> unknown_suffix;
  std::set<std::string> text_encoder;
  for (const auto& info : reader.header().tensors) {
    const std::string& key = info.name;
    if (auto adapter = keys::unsupported_adapter(key)) {
      unsupported[adapter->name].push_back(key);
      continue;
    }
    const auto parsed = keys::parse(key);
    if (!parsed) {
      unknown_suffix.push_back(key);
      continue;
    }
    if (keys::is_text_encoder(parsed->module)) {
      text_encoder.insert(parsed->module);
      continue;
    }
    Group& g = groups[parsed->module];
    at::Tensor t = reader.tensor(info).to(at::kFloat).clone();
    if (!keys::lycoris_type(parsed->part).empty()) g.lycoris_key = key;
    g.lycoris[parsed->part] = t;
    if (parsed->part == keys::Part::down) {
      g.down = t;
      g.down_key = key;
    } else if (parsed->part == keys::Part::up) {
      g.up = t;
      g.up_key = key;
    } else if (parsed->part == keys::Part::alpha) {
      g.alpha = t;
    }
  }
  if (!unsupported.empty()) {
    std::string types;
    for (const auto& [type, keys] : unsupported)
      types += cat(types.empty() ? "" : ", ", type, " (", keys.size(), " tensors, e.g. ", keys.front(), ")");
    fail(path, ": holds adapter types that fluxtrain cannot apply: ", types, "; supported are plain LoRA (",
         keys::part_label(keys::Part::down), " / ", keys::part_label(keys::Part::up),
         " pairs) and LyCORIS's LoKr, LoHa and DoRA without Tucker cores. Fix: convert it to a plain LoRA (e.g. "
         "with kohya's extract/resize tools) or use a tool that supports it");
  }

  std::vector<std::string> problems, unmatched;
  std::set<std::string> layouts;
  for (const auto& [module, g] : groups) {
    const Target* target = nullptr;
    auto it = table.find(module);
    if (it != table.end()) target = &it->second;
    for (std::string_view prefix : keys::container_prefixes()) {
      if (target != nullptr) break;
      if (!module.starts_with(prefix)) continue;
      it = table.find(module.substr(prefix.size()));
      if (it != table.end()) target = &it->second;
    }
    if (target == nullptr) {
      unmatched.push_back(!g.lycoris_key.empty() ? g.lycoris_key
                          : g.down_key.empty()
                              ? (g.up_key.empty() ? keys::tensor_key(module, keys::Part::alpha) : g.up_key)
                              : g.down_key);
      continue;
    }
    if (!g.lycoris_key.empty()) {
      // LyCORIS: the whole layer's ΔW (kohya / ComfyUI names of BFL's Linears).
      std::string problem;
      if (!target->whole || target->swap_halves)
        problem = cat("a ", adapter_type(g.lycoris), " module on a diffusers layer that is part of BFL's ",
                      target->module, " is not supported; LyCORIS files use kohya names (", keys::kTransformerPrefix,
                      "<BFL path>)");
      if (problem.empty()) problem = check_adapter(g.lycoris, target->rows, target->in_features);
      if (!problem.empty()) {
        problems.push_back(cat(module, ": ", problem, " for ", target->module));
        continue;
      }
      LoraDelta d;
      d.module = target->module;
      d.adapter = std::make_shared<const PartTensors>(g.lycoris);
      d.scale = adapter_scale(g.lycoris);
      d.source = module;
      layouts.insert(target->layout);
      out.deltas.push_back(std::move(d));
      continue;
    }
    if (!g.down.defined() || !g.up.defined()) {
      const keys::Part present = g.down.defined() ? keys::Part::down : keys::Part::up;
      const keys::Part missing = g.down.defined() ? keys::Part::up : keys::Part::down;
      problems.push_back(cat(module, ": has ", present == keys::Part::down ? "a " : "an ", keys::part_label(present),
                             " weight but no ", keys::part_label(missing), " weight"));
      continue;
    }
    const int64_t rank = g.down.dim() == 2 ? g.down.size(0) : -1;
    if (g.down.dim() != 2 || g.up.dim() != 2 || g.up.size(1) != rank || g.down.size(1) != target->in_features ||
        g.up.size(0) != target->rows) {
      problems.push_back(cat(module, ": down ", g.down.sizes(), " / up ", g.up.sizes(), ", expected down [rank, ",
                             target->in_features, "] / up [", target->rows, ", rank] for ", target->module,
                             target->row_offset > 0 ? cat(" (rows from ", target->row_offset, ")") : "",
                             "; a LoRA for a Flux model of another size?"));
      continue;
    }
    if (g.alpha.defined() && g.alpha.numel() != 1) {
      problems.push_back(cat(module, ": alpha has shape ", g.alpha.sizes(), ", expected a single number"));
      continue;
    }
    LoraDelta d;
    d.module = target->module;
    d.row_offset = target->row_offset;
    d.down = g.down;
    d.up = g.up;
    if (target->swap_halves) {
      const int64_t half = g.up.size(0) / 2;
      d.up = at::cat({g.up.narrow(0, half, half), g.up.narrow(0, 0, half)}, 0);
    }
    d.scale = g.alpha.defined() ? g.alpha.item<double>() / static_cast<double>(rank) : 1.0;
    d.source = module;
    layouts.insert(target->layout);
    out.deltas.push_back(std::move(d));
  }
  for (const auto& key : unknown_suffix) unmatched.push_back(key);
  if (!unmatched.empty()) {
    std::string list;
    for (size_t i = 0; i < unmatched.size() && i < 8; ++i) list += "\n  " + unmatched[i];
    if (unmatched.size() > 8) list += cat("\n  ... and ", unmatched.size() - 8, " more");
    const auto& c = model.config;
    problems.insert(problems.begin(), cat(unmatched.size(), " tensors fit no layer of this Flux transformer (", c.depth,
                                          " double / ", c.depth_single_blocks, " single blocks, hidden ", c.hidden_size,
                                          "); accepted: ", accepted_layouts(),
                                          ". Is it a LoRA for another model (SD 1.5, SDXL, SD3)?", list));
  }
  if (!problems.empty()) {
    std::string message = cat(path, ": not a usable Flux LoRA (", problems.size(), " problems):");
    for (size_t i = 0; i < problems.size() && i < 10; ++i) message += "\n " + problems[i];
    throw Error(message);
  }
  if (out.deltas.empty() && text_encoder.empty())
    fail(path, ": holds no LoRA tensors (", reader.header().tensors.size(),
         " tensors, none of them a LoRA down/up pair)");
  out.text_encoder_modules = text_encoder.size();
  out.layout = layouts.size() == 1 ? *layouts.begin() : layouts.empty() ? "none" : "mixed";
  return out;
}

void merge_lora(models::FluxTransformerImpl& model, const LoraContents& lora, double strength) {
  at::NoGradGuard no_grad;
  const auto linears = linears_of(model);
  for (const auto& d : lora.deltas) {
    auto it = linears.find(d.module);
    TORCH_CHECK(it != linears.end(), "merge_lora: no Linear ", d.module);
    at::Tensor& weight = it->second->weight;
    if (d.adapter) {
      weight.copy_(apply_adapter(weight.to(at::kFloat), *d.adapter, strength));
      continue;
    }
    at::Tensor delta = at::mm(d.up.to(weight.device()), d.down.to(weight.device())) * (strength * d.scale);
    at::Tensor rows = weight.narrow(0, d.row_offset, d.up.size(0));
    rows.copy_(rows.to(at::kFloat) + delta);
  }
}

}  // namespace fluxtrain::lora
