// Training building blocks on a tiny Flux model: gradient checkpointing, the objective, mixed precision.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "lora/network.h"
#include "models/attention.h"
#include "models/flux/flux.h"
#include "models/linear.h"
#include "models/random_init.h"
#include "models/tiny.h"
#include "optim/optimizer.h"
#include "train/checkpointing.h"
#include "train/flow_matching.h"
#include "train/state.h"
#include "train/step.h"

namespace fluxtrain::train {
namespace {

models::FluxInputs tiny_inputs(const models::FluxConfig& c, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  models::FluxInputs in;
  in.img = at::randn({2, 15, c.in_channels}, g, at::kFloat);
  in.img_ids = models::make_img_ids(2, 5, 3, at::TensorOptions());
  in.txt = at::randn({2, 7, c.context_in_dim}, g, at::kFloat);
  in.txt_ids = at::zeros({2, 7, 3});
  in.timesteps = at::rand({2}, g, at::kFloat);
  in.y = at::randn({2, c.vec_in_dim}, g, at::kFloat);
  in.guidance = at::full({2}, 3.5);
  return in;
}

struct Grads {
  at::Tensor loss;
  std::vector<at::Tensor> lora;
  at::Tensor img;
};

struct RunOptions {
  bool masked = false;         // a text mask (the attention kernels take an additive mask)
  bool keep_attention = true;  // CheckpointOptions::keep_attention
  int64_t interval = 1;        // CheckpointOptions::interval
  models::KeepProducts keep_products = models::KeepProducts::outputs;
  models::Fp8Matmul fp8 = models::Fp8Matmul::off;  // other than off: fp8 block weights multiplied this way
};

Grads run(bool checkpointed, double rank_dropout, bool input_requires_grad = true, RunOptions ro = {}) {
  auto config = models::tiny_flux_config(false);
  models::ModelOptions model_options;
  model_options.fp8_base = ro.fp8 != models::Fp8Matmul::off;
  models::FluxTransformer model(config, model_options);
  models::init_random(*model, 1);
  if (model_options.fp8_base) {
    EXPECT_GT(models::set_fp8_matmul(*model, ro.fp8), 0);
  }
  for (auto& p : model->parameters()) p.requires_grad_(false);
  lora::LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 1.0;
  lo.split_qkv = true;
  lo.dropout.rank = rank_dropout;
  lo.dropout.module = rank_dropout > 0 ? 0.2 : 0.0;
  lora::LoraNetwork network(*model, lo, 7);
  {
    at::NoGradGuard no_grad;
    auto g = at::detail::createCPUGenerator(11);
    for (auto& m : network.modules()) {
      for (auto& part : m->parts()) part.up.copy_(at::randn(part.up.sizes(), g, at::kFloat) * 0.1);
    }
  }
  network.set_training(true);
  auto inputs = tiny_inputs(config, 3);
  inputs.img.requires_grad_(input_requires_grad);
  if (ro.masked) {
    inputs.txt_mask = at::ones({2, 7}, at::kBool);
    inputs.txt_mask.narrow(1, 4, 3).fill_(false);
    inputs.txt_mask[1].narrow(0, 2, 2).fill_(false);
  }
  CheckpointOptions options;
  options.enabled = checkpointed;
  options.keep_attention = ro.keep_attention;
  options.interval = ro.interval;
  options.keep_products = ro.keep_products;
  options.generators = {network.dropout_generator()};
  at::Tensor out = flux_forward(*model, inputs, options);
  at::Tensor loss = (out * out).mean();
  loss.backward();
  Grads grads{loss.detach(), {}, input_requires_grad ? inputs.img.grad() : at::zeros({1})};
  for (const auto& p : network.parameters())
    grads.lora.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  return grads;
}

TEST(Checkpointing, GradientsAreIdenticalWithAndWithout) {
  Grads plain = run(false, 0.0);
  Grads checkpointed = run(true, 0.0);
  EXPECT_TRUE(at::equal(plain.loss, checkpointed.loss));
  EXPECT_TRUE(at::equal(plain.img, checkpointed.img));
  ASSERT_EQ(plain.lora.size(), checkpointed.lora.size());
  int nonzero = 0;
  for (size_t i = 0; i < plain.lora.size(); ++i) {
    EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
    nonzero += plain.lora[i].abs().sum().item<double>() > 0;
  }
  EXPECT_GT(nonzero, static_cast<int>(plain.lora.size()) / 2);
}

TEST(Checkpointing, RecomputationTakesAttentionFromTheFirstRun) {
  // Every checkpointed block (all but the last) replays its kept attention instead of recomputing it,
  // and the gradients stay bit-identical; also with a text mask and with keep_attention off.
  auto config = models::tiny_flux_config(false);
  const int64_t checkpointed_blocks = config.depth + config.depth_single_blocks - 1;
  ASSERT_GT(checkpointed_blocks, 1);
  for (bool masked : {false, true}) {
    for (bool keep : {true, false}) {
      SCOPED_TRACE(std::string(masked ? "masked" : "unmasked") + (keep ? ", kept" : ", recomputed"));
      Grads plain = run(false, 0.0, true, {masked, keep});
      int64_t before = models::stashed_attention_replays();
      Grads checkpointed = run(true, 0.0, true, {masked, keep});
      EXPECT_EQ(models::stashed_attention_replays() - before, keep ? checkpointed_blocks : 0);
      EXPECT_TRUE(at::equal(plain.loss, checkpointed.loss));
      EXPECT_TRUE(at::equal(plain.img, checkpointed.img));
      for (size_t i = 0; i < plain.lora.size(); ++i) EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
    }
  }
}

TEST(Checkpointing, RecomputationTakesKeptProductsFromTheFirstRun) {
  // Each checkpointed block (all but the last, a single block) replays the frozen products it kept:
  // outputs = proj and MLP out per stream of a double block, linear2 of a single block; all = also qkv,
  // MLP in, linear1. Gradients stay bit-identical, with fp32 weights and with fp8 weights multiplied
  // in fp8 (the CPU does tensorwise).
  auto config = models::tiny_flux_config(false);
  ASSERT_GT(config.depth_single_blocks, 0);
  const int64_t doubles = config.depth, singles = config.depth_single_blocks - 1;
  using models::KeepProducts;
  for (models::Fp8Matmul fp8 : {models::Fp8Matmul::off, models::Fp8Matmul::tensorwise}) {
    RunOptions plain_options;
    plain_options.fp8 = fp8;
    Grads plain = run(false, 0.0, true, plain_options);
    for (KeepProducts keep : {KeepProducts::none, KeepProducts::outputs, KeepProducts::all}) {
      SCOPED_TRACE(std::string(name_of(fp8)) + ", keep " + std::string(name_of(keep)));
      RunOptions ro = plain_options;
      ro.keep_products = keep;
      int64_t before = models::kept_product_replays();
      Grads checkpointed = run(true, 0.0, true, ro);
      const int64_t expected = keep == KeepProducts::none      ? 0
                               : keep == KeepProducts::outputs ? 4 * doubles + singles
                                                               : 8 * doubles + 2 * singles;
      EXPECT_EQ(models::kept_product_replays() - before, expected);
      EXPECT_TRUE(at::equal(plain.loss, checkpointed.loss));
      EXPECT_TRUE(at::equal(plain.img, checkpointed.img));
      for (size_t i = 0; i < plain.lora.size(); ++i) EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
    }
  }
}

TEST(Checkpointing, KeepProductsParsesItsChoicesAndNamesTheOption) {
  EXPECT_EQ(parse_enum<models::KeepProducts>("all", "x"), models::KeepProducts::all);
  try {
    parse_enum<models::KeepProducts>("most", "checkpoint_keep_products");
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint_keep_products = 'most'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("none, outputs or all"), std::string::npos) << e.what();
  }
}

TEST(Checkpointing, AttentionStashSelfCheckOnTheCpu) {
  // The check the CUDA path runs before first use (and the GPU benchmark reports), on the CPU kernel:
  // exact in fp32, within bf16 rounding in bf16.
  EXPECT_EQ(models::attention_stash_self_check(at::kCPU, at::kFloat), 0.0);
  EXPECT_LE(models::attention_stash_self_check(at::kCPU, at::kBFloat16), 2e-2);
}

TEST(Checkpointing, IntervalCheckpointsEveryNthBlockWithTheSameGradients) {
  auto config = models::tiny_flux_config(false);
  const int64_t blocks = config.depth + config.depth_single_blocks;
  Grads plain = run(false, 0.0);
  for (int64_t interval : {int64_t{2}, int64_t{3}, blocks + 1}) {
    SCOPED_TRACE("interval " + std::to_string(interval));
    int64_t expected = 0;
    for (int64_t i = 0; i < blocks - 1; ++i) expected += i % interval == 0;
    int64_t before = models::stashed_attention_replays();
    Grads checkpointed = run(true, 0.0, true, {false, true, interval});
    EXPECT_EQ(models::stashed_attention_replays() - before, expected);
    EXPECT_TRUE(at::equal(plain.img, checkpointed.img));
    for (size_t i = 0; i < plain.lora.size(); ++i) EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
  }
}

TEST(Checkpointing, LoraGetsGradientsWhenNoBlockInputRequiresGrad) {
  // A frozen base feeds the blocks: only the LoRA weights inside them require grad.
  Grads plain = run(false, 0.0, false);
  Grads checkpointed = run(true, 0.0, false);
  int nonzero = 0;
  for (size_t i = 0; i < plain.lora.size(); ++i) {
    EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
    nonzero += checkpointed.lora[i].abs().sum().item<double>() > 0;
  }
  EXPECT_GT(nonzero, static_cast<int>(plain.lora.size()) / 2);
}

TEST(Checkpointing, DropoutMasksReplayInTheRecomputation) {
  Grads plain = run(false, 0.3);
  Grads checkpointed = run(true, 0.3);
  EXPECT_TRUE(at::equal(plain.loss, checkpointed.loss));
  for (size_t i = 0; i < plain.lora.size(); ++i) EXPECT_TRUE(at::equal(plain.lora[i], checkpointed.lora[i])) << i;
}

TEST(FlowMatching, NoiseTargetAndLoss) {
  at::Generator g = at::detail::createCPUGenerator(5);
  at::Tensor x0 = at::randn({2, 16, 4, 6}, g, at::kFloat);
  at::Tensor noise = sample_noise(x0.sizes(), 0.0, g);
  at::Tensor sigmas = at::tensor({0.25f, 1.0f});
  auto noised = add_noise(x0, noise, sigmas);
  EXPECT_TRUE(at::allclose(noised.noisy[0], 0.75 * x0[0] + 0.25 * noise[0]));
  EXPECT_TRUE(at::equal(noised.noisy[1], noise[1]));
  EXPECT_TRUE(at::equal(noised.target, noise - x0));
  ObjectiveOptions o;
  EXPECT_NEAR(flow_loss(noised.target, noised.target, o).item<double>(), 0.0, 0.0);
  at::Tensor pred = noised.target + 0.5;
  EXPECT_NEAR(flow_loss(pred, noised.target, o).item<double>(), 0.25, 1e-7);
  o.loss = LossType::l1;
  EXPECT_NEAR(flow_loss(pred, noised.target, o).item<double>(), 0.5, 1e-7);
}

TEST(FlowMatching, NoiseOffsetShiftsWholeChannels) {
  at::Generator a = at::detail::createCPUGenerator(9), b = at::detail::createCPUGenerator(9);
  at::Tensor plain = sample_noise({2, 16, 8, 8}, 0.0, a);
  at::Tensor offset = sample_noise({2, 16, 8, 8}, 0.1, b);
  at::Tensor delta = offset - plain;
  // The offset is constant over H x W within a (sample, channel) and differs between channels.
  EXPECT_TRUE(at::allclose(delta, delta.mean({2, 3}, true).expand_as(delta), 0, 1e-6));
  EXPECT_GT(delta.mean({2, 3}).std().item<double>(), 0.01);
}

TEST(FlowMatching, SigmaSamplersStayInRangeAndShiftMovesThemUp) {
  ObjectiveOptions o;
  for (auto s :
       {TimestepSampling::uniform, TimestepSampling::sigmoid, TimestepSampling::shift, TimestepSampling::flux_shift}) {
    o.sampling = s;
    at::Generator g = at::detail::createCPUGenerator(1);
    at::Tensor sig = sample_sigmas(4096, 4096, o, g);
    EXPECT_GT(sig.min().item<double>(), 0.0) << name_of(s);
    EXPECT_LT(sig.max().item<double>(), 1.0) << name_of(s);
  }
  at::Generator g1 = at::detail::createCPUGenerator(1), g2 = at::detail::createCPUGenerator(1);
  o.sampling = TimestepSampling::sigmoid;
  double plain = sample_sigmas(4096, 4096, o, g1).mean().item<double>();
  o.sampling = TimestepSampling::shift;
  o.discrete_flow_shift = 3.1582;
  double shifted = sample_sigmas(4096, 4096, o, g2).mean().item<double>();
  EXPECT_GT(shifted, plain + 0.1);
  EXPECT_THROW(parse_enum<TimestepSampling>("logit", "timestep_sampling"), std::exception);
}

// Mixed precision (issue item 8): a bf16 base with bf16 compute trains fp32 LoRA weights with fp32
// optimizer state, and its loss tracks the fp32 run's (bf16 has 8 bits of mantissa: a stated 5 % band
// on the per-step loss of a tiny model, whose activations are O(1)).
TEST(MixedPrecision, Bf16ComputeKeepsFp32LoraAndStateAndTracksFp32) {
  auto run_steps = [](at::ScalarType dtype, std::vector<double>* losses) {
    auto config = models::tiny_flux_config(false);
    models::ModelOptions mo;
    models::FluxTransformer model(config, mo);
    models::init_random(*model, 5);
    if (dtype != at::kFloat) model->to(dtype);
    for (auto& p : model->parameters()) p.requires_grad_(false);
    lora::LoraOptions lo;
    lo.rank = 4;
    lo.alpha = 4;
    lora::LoraNetwork network(*model, lo, 3);
    auto optimizer = optim::make_optimizer("AdamW", "", network.parameters(), 1e-2, 0.0);
    StepOptions options;
    options.compute_dtype = dtype;
    options.checkpointing.enabled = true;
    StepGenerators gens{at::detail::createCPUGenerator(8), at::detail::createCPUGenerator(9)};
    at::Generator g = at::detail::createCPUGenerator(4);
    LatentBatch batch;
    batch.latents = at::randn({2, 16, 8, 6}, g, at::kFloat);
    batch.t5 = at::randn({2, 5, config.context_in_dim}, g, at::kFloat);
    batch.clip_pooled = at::randn({2, config.vec_in_dim}, g, at::kFloat);
    network.set_training(true);
    for (int i = 0; i < 5; ++i) losses->push_back(train_step(*model, *optimizer, {batch}, options, gens).loss);
    for (const auto& p : network.parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
    for (const auto& [name, t] : optimizer->state_tensors()) EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
    EXPECT_FALSE(optimizer->state_tensors().empty());
    for (const auto& p : model->parameters()) EXPECT_EQ(p.scalar_type(), dtype);
  };
  std::vector<double> fp32, bf16;
  run_steps(at::kFloat, &fp32);
  run_steps(at::kBFloat16, &bf16);
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_TRUE(std::isfinite(bf16[i]));
    EXPECT_NEAR(bf16[i], fp32[i], 0.05 * fp32[i]) << "step " << i;
  }
}

// A state records its format; one of a newer format is refused with both versions named, one without
// the key (format 1) still loads.
TEST(State, RecordsItsFormatVersionAndRefusesANewerOne) {
  // A folder of this process's own, never removed: libtorch.so exports a std::filesystem::remove_all that
  // the test executable binds to (libtorch comes before libstdc++ among its libraries), and it crashes.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("fluxtrain_state_format_" + std::to_string(::getpid()));
  TrainingState state;
  state.trainable = {{"0", at::ones({2})}};
  state.info = {{"step", 3}};
  const std::filesystem::path saved = save_state(dir, 3, state);
  TrainingState loaded = load_state(saved);
  EXPECT_EQ(loaded.info.at("format_version"), kStateFormatVersion);
  EXPECT_EQ(loaded.info.at("step"), 3);

  EXPECT_EQ(verify_state(saved), "");
  std::ofstream(saved / "state.json", std::ios::app) << " ";
  EXPECT_NE(verify_state(saved).find("state.json has"), std::string::npos) << verify_state(saved);
  // A state as an older fluxtrain wrote it: COMPLETE holds the step number only.
  auto rewrite = [&](const nlohmann::json& info) {
    std::ofstream(saved / "state.json") << info.dump();
    std::ofstream(saved / "COMPLETE") << "3\n";
  };
  nlohmann::json older = loaded.info;
  older.erase("format_version");
  older.erase("_dir");
  rewrite(older);
  EXPECT_EQ(load_state(saved).info.at("step"), 3);
  older["format_version"] = kStateFormatVersion + 1;
  rewrite(older);
  try {
    load_state(saved);
    FAIL() << "a newer state loaded";
  } catch (const std::exception& e) {
    const std::string text = e.what();
    EXPECT_NE(text.find("format " + std::to_string(kStateFormatVersion + 1)), std::string::npos) << text;
    EXPECT_NE(text.find("up to " + std::to_string(kStateFormatVersion)), std::string::npos) << text;
  }
}

}  // namespace
}  // namespace fluxtrain::train
