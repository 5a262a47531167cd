#include "lora/start_weights.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "lora/convert.h"
#include "lora/keys.h"
#include "models/flux/flux.h"

namespace fluxtrain::lora {

StartWeights read_start_weights(const std::string& path, const models::FluxTransformerImpl& model, bool split_qkv) {
  const LoraContents contents = read_lora(path, model);
  std::map<std::string, int64_t> out_features;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto linear = std::dynamic_pointer_cast<models::LinearImpl>(item.value()))
      out_features[item.key()] = linear->out_features;
  }
  std::map<std::string, std::vector<const LoraDelta*>> by_module;
  for (const auto& d : contents.deltas) by_module[d.module].push_back(&d);

  StartWeights out;
  out.layout = contents.layout;
  out.text_encoder_modules = contents.text_encoder_modules;
  std::vector<std::string> problems;
  for (auto& [module, deltas] : by_module) {
    std::sort(deltas.begin(), deltas.end(), [](auto* a, auto* b) { return a->row_offset < b->row_offset; });
    const int64_t rows = out_features.at(module);
    const auto parts = keys::split_parts(module);
    const bool split = split_qkv && !parts.empty();
    const int64_t k = split ? static_cast<int64_t>(parts.size()) : 1;
    const std::string name = keys::module_name(keys::kTransformerPrefix, module);
    at::Tensor down, up;
    double alpha = 0;
    int64_t rank = 0;
    if (deltas.size() == 1 && deltas[0]->row_offset == 0 && deltas[0]->up.size(0) == rows) {
      // One module for the whole Linear (kohya, ComfyUI; a split network's fused form).
      const LoraDelta& d = *deltas[0];
      down = d.down;
      up = d.up;
      alpha = d.scale * static_cast<double>(d.down.size(0));
      rank = d.down.size(0) / k;
    } else {
      // The parts of a fused Linear (diffusers/PEFT): together they must cover its rows, at one rank.
      int64_t next = 0;
      bool tiles = true, same_rank = true, same_down = true;
      for (const LoraDelta* d : deltas) {
        tiles = tiles && d->row_offset == next;
        next = d->row_offset + d->up.size(0);
        same_rank = same_rank && d->down.size(0) == deltas[0]->down.size(0);
        same_down = same_down && d->down.sizes() == deltas[0]->down.sizes() && at::equal(d->down, deltas[0]->down);
      }
      if (!tiles || next != rows) {
        problems.push_back(cat(module, ": the file's parts (", deltas.size(), ", e.g. ", deltas[0]->source,
                               ") do not cover its ", rows, " output rows; the file misses a part of ",
                               keys::split_parts_text(module)));
        continue;
      }
      if (!same_rank) {
        problems.push_back(cat(module, ": the file's parts of ", keys::split_parts_text(module),
                               " have different ranks (e.g. ", deltas[0]->source, " ", deltas[0]->down.size(0), ", ",
                               deltas.back()->source, " ", deltas.back()->down.size(0),
                               "); fluxtrain trains one rank "
                               "per module"));
        continue;
      }
      const int64_t r = deltas[0]->down.size(0);
      // Each part's scale relative to the first part's goes into its up matrix (none when they agree).
      const double scale = deltas[0]->scale;
      std::vector<at::Tensor> ups;
      for (const LoraDelta* d : deltas) ups.push_back(d->scale == scale ? d->up : d->up * (d->scale / scale));
      if (split) {
        if (static_cast<int64_t>(deltas.size()) != k) {
          problems.push_back(cat(module, ": the file has ", deltas.size(), " parts, split_qkv trains ", k, " (",
                                 keys::split_parts_text(module), ")"));
          continue;
        }
        std::vector<at::Tensor> downs;
        for (const LoraDelta* d : deltas) downs.push_back(d->down);
        down = at::cat(downs, 0);
        up = at::zeros({rows, k * r}, at::kFloat);
        for (int64_t j = 0; j < k; ++j) {
          const LoraDelta& d = *deltas[static_cast<size_t>(j)];
          up.narrow(0, d.row_offset, d.up.size(0)).narrow(1, j * r, r).copy_(ups[static_cast<size_t>(j)]);
        }
        alpha = scale * static_cast<double>(k * r);
      } else {
        if (!same_down) {
          problems.push_back(cat(module, ": the file trains ", keys::split_parts_text(module), " with separate down (",
                                 keys::part_label(keys::Part::down), ") matrices, e.g. ", deltas[0]->source,
                                 "; one module of rank ", r, " cannot hold them. Fix: set split_qkv = true"));
          continue;
        }
        down = deltas[0]->down;
        up = at::cat(ups, 0);
        alpha = scale * static_cast<double>(r);
      }
      rank = r;
    }
    out.tensors[keys::tensor_key(name, keys::Part::down)] = down.contiguous();
    out.tensors[keys::tensor_key(name, keys::Part::up)] = up.contiguous();
    out.tensors[keys::tensor_key(name, keys::Part::alpha)] = at::scalar_tensor(alpha, at::kFloat);
    out.module_dims[module] = rank;
  }
  if (!problems.empty()) {
    std::string message = cat(path, ": cannot start the LoRA from it (", problems.size(), " problems):");
    for (size_t i = 0; i < problems.size() && i < 10; ++i) message += "\n  " + problems[i];
    throw Error(message);
  }
  if (out.tensors.empty())
    fail(path, ": holds no LoRA modules of the Flux transformer (text-encoder modules only?): nothing to start from");
  return out;
}

}  // namespace fluxtrain::lora
