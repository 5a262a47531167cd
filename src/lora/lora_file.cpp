#include "lora/lora_file.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <chrono>
#include <ctime>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/version.h"
#include "lora/network.h"
#include "lora/text_encoder_network.h"

namespace fluxtrain::lora {
namespace {

std::string number(double value) {
  std::ostringstream out;
  out.precision(17);
  out << value;
  return out.str();
}

}  // namespace

std::string iso_date(std::optional<int64_t> seconds) {
  std::time_t now = seconds ? static_cast<std::time_t>(*seconds)
                            : std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  return text;
}

safetensors::Metadata lora_metadata(const LoraNetwork& network, const LoraFileInfo& info) {
  const LoraOptions& o = network.options();
  safetensors::Metadata m = info.training;
  // What kohya's flux_train_network writes about the network itself; loaders (and Civitai's pages)
  // read ss_network_dim / ss_network_alpha / ss_network_module / ss_base_model_version.
  // LyCORIS's kohya wrapper names itself and its algorithm (network_args as a user passes them).
  m["ss_network_module"] = o.lycoris() ? "lycoris.kohya" : "networks.lora_flux";
  m["ss_network_dim"] = std::to_string(o.rank);
  m["ss_network_alpha"] = number(o.alpha > 0 ? o.alpha : static_cast<double>(o.rank));
  m["ss_network_dropout"] = number(o.dropout.neuron);
  nlohmann::ordered_json args = nlohmann::ordered_json::object();
  if (o.lycoris()) {
    args["algo"] = o.type == NetworkType::lora ? "lora" : std::string(name_of(o.type));
    if (o.type == NetworkType::lokr) {
      args["factor"] = std::to_string(o.factor);
      if (o.decompose_both) args["decompose_both"] = "True";
      if (o.full_matrix) args["full_matrix"] = "True";
    }
    if (o.dora_wd) {
      args["dora_wd"] = "True";
      args["wd_on_out"] = "True";
    }
  }
  args["train_blocks"] = std::string(name_of(o.train_blocks));
  if (o.train_double_block_indices != "all") args["train_double_block_indices"] = o.train_double_block_indices;
  if (o.train_single_block_indices != "all") args["train_single_block_indices"] = o.train_single_block_indices;
  if (o.split_qkv) args["split_qkv"] = "True";
  if (o.dropout.rank > 0) args["rank_dropout"] = number(o.dropout.rank);
  if (o.dropout.module > 0) args["module_dropout"] = number(o.dropout.module);
  for (const auto& [type, dim] : o.type_dims) args[type + "_dim"] = std::to_string(dim);
  m["ss_network_args"] = args.dump();
  m["ss_base_model_version"] = info.architecture == "flux-1-schnell" ? "flux1_schnell" : "flux1";
  m["ss_v2"] = "False";
  if (!info.title.empty()) m["ss_output_name"] = info.title;
  m["ss_resolution"] = cat("(", info.width, ", ", info.height, ")");
  m["ss_training_comment"] = cat("fluxtrain ", kVersion);

  m["modelspec.sai_model_spec"] = "1.0.1";
  m["modelspec.architecture"] = info.architecture + "/lora";
  m["modelspec.implementation"] = "https://github.com/black-forest-labs/flux";
  m["modelspec.implementation_version"] = cat("fluxtrain/", kVersion);
  m["modelspec.title"] = info.title.empty() ? "LoRA" : info.title;
  m["modelspec.resolution"] = cat(info.width, "x", info.height);
  m["modelspec.date"] = iso_date(info.created_at);
  if (!info.trigger_phrase.empty()) m["modelspec.trigger_phrase"] = info.trigger_phrase;
  return m;
}

void save_lora_file(const std::string& path, const LoraNetwork& network, const LoraFileInfo& info,
                    const TextEncoderNetwork* text_encoders) {
  auto tensors = network.kohya_state();
  if (text_encoders != nullptr) {
    auto more = text_encoders->kohya_state();
    tensors.insert(tensors.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  const at::ScalarType dtype = info.precision == SavePrecision::bf16   ? at::kBFloat16
                               : info.precision == SavePrecision::fp16 ? at::kHalf
                                                                       : at::kFloat;
  for (auto& [name, tensor] : tensors) tensor = tensor.to(dtype);
  safetensors::Metadata metadata = lora_metadata(network, info);
  if (text_encoders != nullptr && text_encoders->t5_modules() > 0) {
    // kohya's network argument that made the T5 modules (its loaders read it to build them).
    nlohmann::ordered_json args = nlohmann::ordered_json::parse(metadata["ss_network_args"]);
    args["train_t5xxl"] = "True";
    metadata["ss_network_args"] = args.dump();
  }
  // kohya: sha256 of the data area; A1111/Forge show its first 10 hex digits as the LoRA's hash.
  metadata["sshs_model_hash"] = safetensors::data_sha256(tensors);
  safetensors::write(path, tensors, metadata);
}

}  // namespace fluxtrain::lora
