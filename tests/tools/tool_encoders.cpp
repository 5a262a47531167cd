// Encoder commands of fluxtrain_test_tool (AE, CLIP-L, T5). INPUTS and OUT are safetensors files.
//   ae-encode MODEL INPUTS OUT [--dtype fp32|bf16|fp16]   INPUTS: pixels [B,3,H,W]; OUT: latents (scaled)
//   ae-decode MODEL INPUTS OUT [--dtype ...]              INPUTS: latents [B,z,h,w]; OUT: pixels
//   clip-forward MODEL INPUTS OUT [--dtype ...]           INPUTS: ids [B,L]; OUT: last_hidden_state, pooled
//   t5-forward MODEL INPUTS OUT [--dtype ...] [--fp8 1]   INPUTS: ids [B,L] (+ mask [B,L]); OUT: hidden
//     both with [--lora FILE [--lora-mode adapter|merge] [--rank R]]: the file's text-encoder LoRA applied as
//     training runs it (adapter: lora::TextEncoderNetwork of rank R, loaded from the file) or as `sample`
//     does (merge: lora::merge_text_encoder_lora into the weights)
//   t5-buckets LENGTH OUT                                 OUT: buckets [L, L] of (key - query), 32 / 128
//   encoders-keys ae|clip|t5                              full-size model on the meta device: JSON {name: shape}
// Every forward command prints one JSON line: prefix, unused tensor count, and the parameter dtypes seen.
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <set>

#include "lora/keys.h"
#include "lora/network.h"
#include "lora/text_encoder_network.h"
#include "models/convert.h"
#include "tool.h"

namespace fluxtrain::tool {
namespace {

models::ModelOptions model_options(const Args& args) {
  models::ModelOptions options;
  const std::string dtype = option(args, "--dtype", "fp32");
  if (dtype == "fp32")
    options.dtype = at::kFloat;
  else if (dtype == "bf16")
    options.dtype = at::kBFloat16;
  else if (dtype == "fp16")
    options.dtype = at::kHalf;
  else
    throw std::runtime_error("unknown dtype " + dtype);
  options.fp8_base = option(args, "--fp8", "0") == "1";
  return options;
}

template <typename Loaded>
void report(const Loaded& loaded) {
  std::set<std::string> dtypes;
  for (const auto& p : loaded.model->named_parameters()) dtypes.insert(c10::toString(p.value().scalar_type()));
  std::cout << nlohmann::json{{"prefix", loaded.prefix},
                              {"loaded", loaded.report.loaded},
                              {"unused", loaded.report.unused.size()},
                              {"dtypes", dtypes}}
                   .dump()
            << "\n";
}

int ae_run(const Args& args, bool encode) {
  auto options = model_options(args);
  auto loaded = models::load_ae(args.at(0), options);
  at::NoGradGuard no_grad;
  auto in = load_tensors(args.at(1));
  at::Tensor out = encode ? loaded.model->encode(in.at("pixels").to(options.dtype))
                          : loaded.model->decode(in.at("latents").to(options.dtype));
  save_tensors(args.at(2), {{encode ? "latents" : "pixels", out.to(at::kFloat)}});
  report(loaded);
  return 0;
}

// --lora FILE: applies the file's text-encoder LoRA to `clip` or `t5` (the other is null); the adapters are
// returned (kept alive for the forward).
std::unique_ptr<lora::TextEncoderNetwork> apply_lora(const Args& args, models::ClipTextModelImpl* clip,
                                                     models::T5EncoderImpl* t5) {
  const std::string file = option(args, "--lora", "");
  if (file.empty()) return nullptr;
  if (option(args, "--lora-mode", "adapter") == "merge") {
    lora::merge_text_encoder_lora(file, clip, t5, 1.0);
    return nullptr;
  }
  lora::LoraOptions options;
  options.rank = std::stoll(option(args, "--rank", "4"));
  auto network = std::make_unique<lora::TextEncoderNetwork>(clip, t5, options, 0, at::detail::createCPUGenerator(1));
  // This encoder's modules only (a file may hold both encoders').
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, t] : lora::read_lora_file(file))
    if (name.starts_with(clip != nullptr ? lora::keys::kClipPrefix : lora::keys::kT5Prefix)) tensors[name] = t;
  network->load_kohya(tensors, file);
  return network;
}

int clip_forward(const Args& args) {
  auto options = model_options(args);
  auto loaded = models::load_clip(args.at(0), options);
  auto adapters = apply_lora(args, loaded.model.get(), nullptr);
  at::NoGradGuard no_grad;
  auto out = loaded.model->forward(load_tensors(args.at(1)).at("ids"));
  save_tensors(args.at(2),
               {{"last_hidden_state", out.last_hidden_state.to(at::kFloat)}, {"pooled", out.pooled.to(at::kFloat)}});
  report(loaded);
  return 0;
}

int t5_forward(const Args& args) {
  auto options = model_options(args);
  auto loaded = models::load_t5(args.at(0), options);
  auto adapters = apply_lora(args, nullptr, loaded.model.get());
  at::NoGradGuard no_grad;
  auto in = load_tensors(args.at(1));
  at::Tensor mask = in.count("mask") ? in.at("mask") : at::Tensor();
  at::Tensor out = loaded.model->forward(in.at("ids"), mask);
  save_tensors(args.at(2), {{"hidden", out.to(at::kFloat)}});
  report(loaded);
  return 0;
}

int t5_buckets(const Args& args) {
  int64_t length = std::stoll(args.at(0));
  at::Tensor query = at::arange(length, at::kLong).unsqueeze(1);
  at::Tensor key = at::arange(length, at::kLong).unsqueeze(0);
  save_tensors(args.at(1), {{"buckets", models::t5_relative_position_bucket(key - query)}});
  return 0;
}

int encoders_keys(const Args& args) {
  models::ModelOptions options;
  options.device = at::kMeta;
  options.dtype = at::kBFloat16;
  std::shared_ptr<torch::nn::Module> model;
  const std::string& which = args.at(0);
  if (which == "ae")
    model = models::AutoEncoder(models::AeConfig::flux(), options).ptr();
  else if (which == "clip")
    model = models::ClipTextModel(models::ClipConfig::clip_l(), options).ptr();
  else if (which == "t5")
    model = models::T5Encoder(models::T5Config::xxl(), options).ptr();
  else
    throw std::runtime_error("encoders-keys takes ae, clip or t5; got " + which);
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().sizes().vec();
  std::cout << out.dump() << "\n";
  return 0;
}

const ToolCommand kAeEncode("ae-encode", "MODEL INPUTS OUT [--dtype fp32|bf16|fp16]",
                            [](const Args& a) { return ae_run(a, true); });
const ToolCommand kAeDecode("ae-decode", "MODEL INPUTS OUT [--dtype fp32|bf16|fp16]",
                            [](const Args& a) { return ae_run(a, false); });
const ToolCommand kClipForward("clip-forward",
                               "MODEL INPUTS OUT [--dtype fp32|bf16|fp16] [--lora FILE [--lora-mode adapter|merge] "
                               "[--rank R]]",
                               clip_forward);
const ToolCommand kT5Forward("t5-forward",
                             "MODEL INPUTS OUT [--dtype fp32|bf16|fp16] [--fp8 1] [--lora FILE [--lora-mode "
                             "adapter|merge] [--rank R]]",
                             t5_forward);
const ToolCommand kBuckets("t5-buckets", "LENGTH OUT", t5_buckets);
const ToolCommand kKeys("encoders-keys", "ae|clip|t5", encoders_keys);

}  // namespace
}  // namespace fluxtrain::tool
