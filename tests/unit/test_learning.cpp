// A tiny Flux model learns through a LoRA: on a fixed set of cached latents and text embeddings, 200
// optimizer steps lower a fixed-noise evaluation loss by a clear margin (stated below), the frozen base
// stays bit-identical, and the same seed gives a byte-identical LoRA.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "lora/network.h"
#include "models/random_init.h"
#include "models/tiny.h"
#include "optim/optimizer.h"
#include "train/step.h"

namespace fluxtrain::train {
namespace {

struct Setup {
  models::FluxTransformer model{nullptr};
  std::vector<LatentBatch> data;
};

Setup make_setup() {
  Setup s;
  const models::FluxConfig config = models::tiny_flux_config(false);
  s.model = models::FluxTransformer(config, models::ModelOptions{});
  models::init_random(*s.model, 21);
  for (auto& p : s.model->parameters()) p.requires_grad_(false);
  at::Generator g = at::detail::createCPUGenerator(77);
  // Four "images": smooth latent patterns (what an AE gives), with their own text embeddings.
  for (int i = 0; i < 4; ++i) {
    at::Tensor yy = at::linspace(-1, 1, 8).view({1, 1, 8, 1});
    at::Tensor xx = at::linspace(-1, 1, 12).view({1, 1, 1, 12});
    at::Tensor phase = at::randn({1, 16, 1, 1}, g, at::kFloat);
    LatentBatch b;
    b.latents = at::sin(3 * xx * phase + 2 * yy + i);
    b.t5 = at::randn({1, 6, config.context_in_dim}, g, at::kFloat);
    b.clip_pooled = at::randn({1, config.vec_in_dim}, g, at::kFloat);
    s.data.push_back(b);
  }
  return s;
}

double eval_loss(models::FluxTransformerImpl& model, const std::vector<LatentBatch>& data, const StepOptions& options) {
  at::NoGradGuard no_grad;
  StepGenerators fixed{at::detail::createCPUGenerator(1000), at::detail::createCPUGenerator(1001)};
  double total = 0;
  for (int repeat = 0; repeat < 4; ++repeat) {
    for (const auto& b : data) total += batch_loss(model, b, options, fixed).item<double>();
  }
  return total / (4.0 * data.size());
}

std::vector<std::pair<std::string, at::Tensor>> train(int steps, uint64_t seed, double* before, double* after,
                                                      bool* base_unchanged) {
  Setup s = make_setup();
  std::vector<at::Tensor> base;
  for (const auto& p : s.model->parameters()) base.push_back(p.clone());
  lora::LoraOptions lo;
  lo.rank = 8;
  lo.alpha = 8;
  lora::LoraNetwork network(*s.model, lo, seed);
  auto optimizer = optim::make_optimizer("AdamW", "", network.parameters(), 2e-3, 0.0);
  StepOptions options;
  options.checkpointing.enabled = true;
  StepGenerators gens{at::detail::createCPUGenerator(seed + 10), at::detail::createCPUGenerator(seed + 11)};
  if (before) *before = eval_loss(*s.model, s.data, options);
  network.set_training(true);
  for (int step = 0; step < steps; ++step) {
    train_step(*s.model, *optimizer, {s.data[static_cast<size_t>(step) % s.data.size()]}, options, gens);
  }
  network.set_training(false);
  if (after) *after = eval_loss(*s.model, s.data, options);
  if (base_unchanged) {
    *base_unchanged = true;
    auto params = s.model->parameters();
    for (size_t i = 0; i < params.size(); ++i) *base_unchanged = *base_unchanged && at::equal(params[i], base[i]);
  }
  return network.kohya_state();
}

TEST(Learning, TwoHundredStepsLowerTheLossAndLeaveTheBaseUntouched) {
  double before = 0, after = 0;
  bool base_unchanged = false;
  train(200, 5, &before, &after, &base_unchanged);
  std::cout << "evaluation loss before " << before << ", after 200 steps " << after << " (ratio " << after / before << ")\n";
  // Stated margin: the LoRA must remove at least 30% of the evaluation loss.
  EXPECT_LT(after, 0.7 * before);
  EXPECT_TRUE(base_unchanged);
}

TEST(Learning, SameSeedGivesAByteIdenticalLora) {
  auto a = train(12, 3, nullptr, nullptr, nullptr);
  auto b = train(12, 3, nullptr, nullptr, nullptr);
  auto c = train(12, 4, nullptr, nullptr, nullptr);
  ASSERT_EQ(a.size(), b.size());
  bool all_equal = true, any_differs_from_c = false;
  for (size_t i = 0; i < a.size(); ++i) {
    all_equal = all_equal && a[i].first == b[i].first && at::equal(a[i].second, b[i].second);
    any_differs_from_c = any_differs_from_c || !at::equal(a[i].second, c[i].second);
  }
  EXPECT_TRUE(all_equal);
  EXPECT_TRUE(any_differs_from_c);
}

}  // namespace
}  // namespace fluxtrain::train
