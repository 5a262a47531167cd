// Block swapping (train/block_swap.h) on a tiny Flux model: the swapped run's loss, input gradient and
// LoRA gradients equal the unswapped run's bit for bit, on the CPU and (when there is one) on a CUDA
// device. The suite is named block_swap so `ctest -R block_swap` selects it.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <memory>
#include <string>

#include "core/error.h"
#include "lora/network.h"
#include "models/flux/flux.h"
#include "models/linear.h"
#include "models/random_init.h"
#include "models/tiny.h"
#include "train/block_swap.h"
#include "train/checkpointing.h"

namespace fluxtrain::train {
namespace {

struct Case {
  int64_t blocks = 0;  // blocks_to_swap
  bool checkpointing = true;
  int64_t interval = 1;
  models::KeepProducts keep_products = models::KeepProducts::outputs;
  bool keep_attention = true;
  bool offload = false;
  bool fp8 = false;  // fp8 weight storage (upcast when multiplying)
  std::string describe() const {
    return "blocks " + std::to_string(blocks) + ", checkpointing " + std::to_string(checkpointing) + ", interval " +
           std::to_string(interval) + ", keep_products " + std::to_string(static_cast<int>(keep_products)) +
           ", keep_attention " + std::to_string(keep_attention) + ", offload " + std::to_string(offload) + ", fp8 " +
           std::to_string(fp8);
  }
};

struct Result {
  at::Tensor loss, img_grad, sampled;
  std::vector<at::Tensor> lora;
  int64_t copies = 0;
  bool swapped_weights_on_host = true;  // after the run, every swapped block's members are the host tensors
};

Result run(const Case& c, at::Device device) {
  auto config = models::tiny_flux_config(false);
  models::ModelOptions model_options;
  model_options.fp8_base = c.fp8;
  model_options.device = device;
  model_options.host_blocks = c.blocks;  // as the trainer builds it: swapped weights in host memory from the start
  models::FluxTransformer model(config, model_options);
  models::init_random(*model, 1);
  for (auto& p : model->parameters()) p.requires_grad_(false);
  std::unique_ptr<BlockSwap> swap;
  if (c.blocks > 0) swap = std::make_unique<BlockSwap>(*model, c.blocks);
  lora::LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 1.0;
  lo.split_qkv = true;
  lo.dropout.rank = 0.2;  // the recomputation must replay the dropout masks
  lora::LoraNetwork network(*model, lo, 7);
  {
    at::NoGradGuard no_grad;
    auto g = at::detail::createCPUGenerator(11);
    for (auto& m : network.modules()) {
      for (auto& part : m->parts()) part.up.copy_((at::randn(part.up.sizes(), g, at::kFloat) * 0.1).to(device));
    }
  }
  network.set_training(true);
  at::Generator g = at::detail::createCPUGenerator(3);
  models::FluxInputs in;
  in.img = at::randn({2, 15, config.in_channels}, g, at::kFloat).to(device).requires_grad_(true);
  in.img_ids = models::make_img_ids(2, 5, 3, at::TensorOptions().device(device));
  in.txt = at::randn({2, 7, config.context_in_dim}, g, at::kFloat).to(device);
  in.txt_ids = at::zeros({2, 7, 3}, at::TensorOptions().device(device));
  in.timesteps = at::rand({2}, g, at::kFloat).to(device);
  in.y = at::randn({2, config.vec_in_dim}, g, at::kFloat).to(device);
  in.guidance = at::full({2}, 3.5, at::TensorOptions().device(device));

  CheckpointOptions options;
  options.enabled = c.checkpointing;
  options.interval = c.interval;
  options.keep_products = c.keep_products;
  options.keep_attention = c.keep_attention;
  options.offload_inputs = c.offload;
  options.generators = {network.dropout_generator()};
  Result r;
  for (int step = 0; step < 2; ++step) {  // twice: the second forward starts after a backward
    at::Tensor out = flux_forward(*model, in, options);
    at::Tensor loss = (out * out).mean();
    loss.backward();
    r.loss = loss.detach().cpu();
  }
  r.img_grad = in.img.grad().cpu();
  for (const auto& p : network.parameters()) r.lora.push_back(p.grad().defined() ? p.grad().cpu() : at::zeros({0}));
  {
    at::NoGradGuard no_grad;  // the sampler's path: the model's own forward
    network.set_training(false);
    in.img = in.img.detach();
    r.sampled = model->forward(in).cpu();
  }
  if (swap) {
    r.copies = swap->copies();
    const int64_t total = config.depth + config.depth_single_blocks;
    for (int64_t i = total - c.blocks; i < total; ++i) {
      torch::nn::Module& block = i < config.depth ? *model->double_blocks->ptr(static_cast<size_t>(i))
                                                  : *model->single_blocks->ptr(static_cast<size_t>(i - config.depth));
      for (const auto& p : block.named_parameters()) {
        if (p.key().find("weight") != std::string::npos && p.value().dim() == 2 && !p.value().device().is_cpu())
          r.swapped_weights_on_host = false;
      }
    }
  }
  return r;
}

void expect_same(const Result& plain, const Result& swapped, const std::string& what) {
  EXPECT_TRUE(at::equal(plain.loss, swapped.loss)) << what;
  EXPECT_TRUE(at::equal(plain.img_grad, swapped.img_grad)) << what;
  EXPECT_TRUE(at::equal(plain.sampled, swapped.sampled)) << what;
  ASSERT_EQ(plain.lora.size(), swapped.lora.size()) << what;
  for (size_t i = 0; i < plain.lora.size(); ++i)
    EXPECT_TRUE(at::equal(plain.lora[i], swapped.lora[i])) << what << ", " << i;
}

void gradients_match(at::Device device) {
  const auto config = models::tiny_flux_config(false);
  const int64_t most = max_blocks_to_swap(config);  // 4 of 2 double + 3 single: both kinds swapped
  ASSERT_EQ(most, config.depth + config.depth_single_blocks - 1);
  std::vector<Case> cases;
  for (int64_t blocks : {int64_t{1}, int64_t{3}, most}) {
    Case c;
    c.blocks = blocks;
    cases.push_back(c);
  }
  Case off;  // no gradient checkpointing: the swapped blocks are checkpointed all the same
  off.blocks = most;
  off.checkpointing = false;
  cases.push_back(off);
  Case interval;
  interval.blocks = most;
  interval.interval = 2;
  cases.push_back(interval);
  Case all;  // kept products: their backward node computes g W with the swapped weight
  all.blocks = most;
  all.keep_products = models::KeepProducts::all;
  all.keep_attention = false;
  all.offload = !device.is_cpu();
  cases.push_back(all);
  Case fp8;
  fp8.blocks = most;
  fp8.fp8 = true;
  cases.push_back(fp8);
  for (const Case& c : cases) {
    Case plain_case = c;
    plain_case.blocks = 0;
    Result plain = run(plain_case, device);
    Result swapped = run(c, device);
    expect_same(plain, swapped, c.describe());
    EXPECT_TRUE(swapped.swapped_weights_on_host) << c.describe();
    // Per training step the forward pass copies each swapped block once and the backward pass each
    // recomputed one (all but the last) once: 2N - 1, when every copy ahead went to the right block.
    // The sampling forward copies N more and one ahead for the next forward.
    EXPECT_EQ(swapped.copies, 2 * (2 * c.blocks - 1) + c.blocks + (c.blocks > 1 ? 1 : 0)) << c.describe();
  }
}

TEST(block_swap, GradientsAreIdenticalWithAndWithoutOnTheCpu) {
  gradients_match(at::kCPU);
}

TEST(block_swap, GradientsAreIdenticalWithAndWithoutOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
  gradients_match(at::Device(at::kCUDA, 0));
}

TEST(block_swap, RefusesMoreBlocksThanTheModelCanSwapNamingTheOption) {
  const auto config = models::tiny_flux_config(false);
  const int64_t total = config.depth + config.depth_single_blocks;
  check_blocks_to_swap(total - 1, config);
  for (int64_t n : {total, int64_t{-1}}) {
    try {
      check_blocks_to_swap(n, config);
      ADD_FAILURE() << n << " was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("blocks_to_swap = " + std::to_string(n)), std::string::npos) << m;
      EXPECT_NE(m.find("has " + std::to_string(total) + " transformer blocks"), std::string::npos) << m;
      EXPECT_NE(m.find("at most " + std::to_string(total - 1)), std::string::npos) << m;
    }
  }
  EXPECT_EQ(max_blocks_to_swap(models::FluxConfig::dev()), 56);
}

}  // namespace
}  // namespace fluxtrain::train
