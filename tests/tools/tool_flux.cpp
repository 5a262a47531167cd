// Flux transformer commands of fluxtrain_test_tool.
//   flux-forward MODEL INPUTS OUT [--dtype fp32|bf16] [--fp8 1] [--fp8-matmul off|tensorwise|rowwise]
//   flux-grad MODEL INPUTS OUT    gradients of sum(out * cotangent) w.r.t. img and some block weights
//   flux-keys dev|schnell         the full-size model's parameters built on the meta device, as JSON
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include <fstream>
#include <iostream>

#include "models/convert.h"
#include "tool.h"

namespace fluxtrain::tool {
namespace {

using models::FluxInputs;

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32") return at::kFloat;
  if (name == "bf16") return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  throw std::runtime_error("unknown dtype " + name);
}

FluxInputs read_inputs(const std::string& path, at::ScalarType dtype) {
  auto t = load_tensors(path);
  FluxInputs in;
  in.img = t.at("img").to(dtype);
  in.img_ids = t.at("img_ids");
  in.txt = t.at("txt").to(dtype);
  in.txt_ids = t.at("txt_ids");
  in.timesteps = t.at("timesteps");
  in.y = t.at("y").to(dtype);
  if (t.count("guidance")) in.guidance = t.at("guidance");
  if (t.count("txt_mask")) in.txt_mask = t.at("txt_mask");
  return in;
}

int flux_forward(const Args& args) {
  models::ModelOptions options;
  options.dtype = parse_dtype(option(args, "--dtype", "fp32"));
  options.fp8_base = option(args, "--fp8", "0") == "1";
  options.fp8_matmul = parse_enum<models::Fp8Matmul>(option(args, "--fp8-matmul", "off"), "--fp8-matmul");
  auto loaded = models::load_flux(args.at(0), options);
  at::NoGradGuard no_grad;
  at::Tensor out = loaded.model->forward(read_inputs(args.at(1), options.dtype));
  save_tensors(args.at(2), {{"out", out.to(at::kFloat)}});
  std::cout << nlohmann::json{{"layout", loaded.layout}, {"prefix", loaded.prefix}, {"unused", loaded.report.unused.size()}}.dump()
            << "\n";
  return 0;
}

int flux_grad(const Args& args) {
  auto loaded = models::load_flux(args.at(0), {});
  FluxInputs in = read_inputs(args.at(1), at::kFloat);
  at::Tensor cotangent = load_tensors(args.at(1)).at("cotangent");
  in.img.requires_grad_(true);
  at::Tensor out = loaded.model->forward(in);
  (out * cotangent).sum().backward();
  std::map<std::string, at::Tensor> grads = {{"img", in.img.grad()}};
  for (const auto& p : loaded.model->named_parameters()) {
    if (p.value().grad().defined()) grads["param." + p.key()] = p.value().grad();
  }
  save_tensors(args.at(2), grads);
  return 0;
}

int flux_keys(const Args& args) {
  models::ModelOptions options;
  options.device = at::kMeta;
  options.dtype = at::kBFloat16;
  auto config = args.at(0) == "schnell" ? models::FluxConfig::schnell() : models::FluxConfig::dev();
  models::FluxTransformer model(config, options);
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& p : model->named_parameters()) out[p.key()] = p.value().sizes().vec();
  std::cout << out.dump() << "\n";
  return 0;
}

const ToolCommand kForward("flux-forward", "MODEL INPUTS OUT [--dtype fp32|bf16] [--fp8 1] [--fp8-matmul MODE]", flux_forward);
const ToolCommand kGrad("flux-grad", "MODEL INPUTS OUT", flux_grad);
const ToolCommand kKeys("flux-keys", "dev|schnell", flux_keys);

}  // namespace
}  // namespace fluxtrain::tool

namespace fluxtrain::tool {
namespace {

// Resident set size figures of this process, from /proc/self/status (kB -> bytes).
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

// flux-load-rss MODEL [--dtype bf16]: loads the model and reports RSS before, peak, and the model's size.
int flux_load_rss(const Args& args) {
  models::ModelOptions options;
  options.dtype = parse_dtype(option(args, "--dtype", "bf16"));
  int64_t before = proc_status_bytes("VmRSS");
  auto loaded = models::load_flux(args.at(0), options);
  int64_t peak = proc_status_bytes("VmHWM");
  int64_t model_bytes = 0;
  for (const auto& p : loaded.model->parameters()) model_bytes += p.nbytes();
  std::cout << nlohmann::json{{"rss_before", before}, {"peak", peak}, {"model_bytes", model_bytes}}.dump() << "\n";
  return 0;
}

const ToolCommand kLoadRss("flux-load-rss", "MODEL [--dtype bf16]", flux_load_rss);

}  // namespace
}  // namespace fluxtrain::tool
