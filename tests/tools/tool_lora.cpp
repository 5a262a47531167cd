// LoRA commands of fluxtrain_test_tool.
//   lora-make MODEL OUT [network flags] [--seed N] [--random-up 1] [--forward INPUTS OUT2]
//                                          create a network, save kohya format (and run a forward with it)
//   lora-forward MODEL LORA INPUTS OUT [network flags]               model + LoRA forward
//   lora-apply MODEL LORA INPUTS OUT [--strength S]     forward after read_lora + merge_lora (`sample`'s way)
// network flags: --rank R --alpha A --split-qkv 0|1 --train-blocks all|single|double
//                --double-indices S --single-indices S --network-type lora|lokr|loha --factor F
//                --decompose-both 0|1 --full-matrix 0|1 --dora-wd 0|1
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <iostream>

#include "core/safetensors.h"
#include "lora/convert.h"
#include "lora/lora_file.h"
#include "lora/network.h"
#include "models/convert.h"
#include "tool.h"

namespace fluxtrain::tool {
namespace {

lora::LoraOptions network_options(const Args& args) {
  lora::LoraOptions o;
  o.rank = std::stoll(option(args, "--rank", "4"));
  o.alpha = std::stod(option(args, "--alpha", "1"));
  o.split_qkv = option(args, "--split-qkv", "0") == "1";
  o.train_blocks = parse_enum<lora::TrainBlocks>(option(args, "--train-blocks", "all"), "--train-blocks");
  o.train_double_block_indices = option(args, "--double-indices", "all");
  o.train_single_block_indices = option(args, "--single-indices", "all");
  o.type = parse_enum<lora::NetworkType>(option(args, "--network-type", "lora"), "--network-type");
  o.factor = std::stoll(option(args, "--factor", "-1"));
  o.decompose_both = option(args, "--decompose-both", "0") == "1";
  o.full_matrix = option(args, "--full-matrix", "0") == "1";
  o.dora_wd = option(args, "--dora-wd", "0") == "1";
  return o;
}

at::Tensor forward_with(models::FluxTransformerImpl& model, const std::string& inputs_path);

int lora_make(const Args& args) {
  auto loaded = models::load_flux(args.at(0), {});
  lora::LoraNetwork network(*loaded.model, network_options(args), std::stoull(option(args, "--seed", "0")));
  if (option(args, "--random-up", "0") == "1") {
    at::NoGradGuard no_grad;
    auto g = at::detail::createCPUGenerator(std::stoull(option(args, "--seed", "0")) + 1);
    for (auto& m : network.modules()) {
      for (auto& part : m->parts()) part.up.copy_(at::randn(part.up.sizes(), g, at::kFloat) * 0.05);
    }
    // LyCORIS: every factor random (the zero-initialised one too), DoRA's magnitude moved off ‖W‖.
    for (auto& m : network.lycoris_modules()) {
      for (auto& p : m->parameters()) {
        if (p.dim() == 1) {
          p.mul_(1 + at::rand(p.sizes(), g, at::kFloat) * 0.2);
        } else {
          p.copy_(at::randn(p.sizes(), g, at::kFloat) * 0.1);
        }
      }
    }
  }
  lora::LoraFileInfo info;
  info.title = "interop";
  info.trigger_phrase = "ohwx";
  info.training = {{"ss_steps", "0"}};
  lora::save_lora_file(args.at(1), network, info);
  if (std::string params = option(args, "--params", ""); !params.empty()) {
    // DoRA's trained magnitudes (the file holds dora_scale, their ComfyUI form), by module name.
    std::map<std::string, at::Tensor> magnitudes;
    for (auto& m : network.lycoris_modules()) {
      if (m->type() == "DoRA") magnitudes[m->name() + ".magnitude"] = m->parameters().back().detach();
    }
    save_tensors(params, magnitudes);
  }
  std::string inputs = option(args, "--forward", "");
  if (!inputs.empty()) {
    // Through the file just written, as a user would load it.
    lora::LoraNetwork reloaded_check(*loaded.model, network_options(args), 99);
    reloaded_check.load_kohya(lora::read_lora_file(args.at(1)), args.at(1));
    auto at_flag = std::find(args.begin(), args.end(), "--forward");
    save_tensors(*(at_flag + 2), {{"out", forward_with(*loaded.model, inputs)}});
  }
  std::cout << nlohmann::json{{"modules", network.modules().size() + network.lycoris_modules().size()},
                              {"parameters", network.parameter_count()}}
                   .dump()
            << "\n";
  return 0;
}

int lora_forward(const Args& args) {
  auto loaded = models::load_flux(args.at(0), {});
  lora::LoraNetwork network(*loaded.model, network_options(args), 0);
  network.load_kohya(lora::read_lora_file(args.at(1)), args.at(1));
  save_tensors(args.at(3), {{"out", forward_with(*loaded.model, args.at(2))}});
  return 0;
}

// LoKr's factor pairs: DIM:FACTOR ... -> "MxN" per line.
int lokr_factorization(const Args& args) {
  for (const std::string& arg : args) {
    const auto colon = arg.find(':');
    const auto [m, n] = lora::factorization(std::stoll(arg.substr(0, colon)), std::stoll(arg.substr(colon + 1)));
    std::cout << m << "x" << n << "\n";
  }
  return 0;
}

int lora_apply(const Args& args) {
  auto loaded = models::load_flux(args.at(0), {});
  auto contents = lora::read_lora(args.at(1), *loaded.model);
  lora::merge_lora(*loaded.model, contents, std::stod(option(args, "--strength", "1")));
  save_tensors(args.at(3), {{"out", forward_with(*loaded.model, args.at(2))}});
  return 0;
}

at::Tensor forward_with(models::FluxTransformerImpl& model, const std::string& inputs_path) {
  auto t = load_tensors(inputs_path);
  models::FluxInputs in;
  in.img = t.at("img");
  in.img_ids = t.at("img_ids");
  in.txt = t.at("txt");
  in.txt_ids = t.at("txt_ids");
  in.timesteps = t.at("timesteps");
  in.y = t.at("y");
  if (t.count("guidance")) in.guidance = t.at("guidance");
  at::NoGradGuard no_grad;
  return model.forward(in);
}

const ToolCommand kMake("lora-make", "MODEL OUT [network flags] [--seed N] [--random-up 1]", lora_make);
const ToolCommand kFactorization("lokr-factorization", "DIM:FACTOR ...", lokr_factorization);
const ToolCommand kApply("lora-apply", "MODEL LORA INPUTS OUT [--strength S]", lora_apply);
const ToolCommand kForward("lora-forward", "MODEL LORA INPUTS OUT [network flags]", lora_forward);

}  // namespace
}  // namespace fluxtrain::tool
