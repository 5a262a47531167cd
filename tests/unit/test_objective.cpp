// Value tests of the rectified-flow objective (train/flow_matching.h, train/step.h) against the formulas of
// kohya-ss/sd-scripts (not on PyPI, so transcribed; flux_train_utils.py read at commit 5dff02a6):
//   library/flux_train_utils.py get_noisy_model_input_and_timesteps, time_shift, get_lin_function:
//     shift:      sigmas = sigmoid(sigmoid_scale * randn); sigmas = (sigmas * shift) / (1 + (shift - 1) * sigmas)
//     flux_shift: mu = get_lin_function(y1=0.5, y2=1.15)((h // 2) * (w // 2)), the line through (256, 0.5)
//                 and (4096, 1.15); sigmas = time_shift(mu, 1.0, t) = e^mu / (e^mu + (1 / t - 1) ** 1.0)
//   library/train_util.py conditional_loss (reduction "none", constant huber_c):
//     huber:      2 * huber_c * (sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
//     smooth_l1:  2 * (sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
//   library/custom_train_functions.py apply_masked_loss + train_network.py: loss * mask, then the mean over
//     every element of a sample (kohya divides by the element count; fluxtrain divides by the mask's sum,
//     so the masked-out part does not scale the loss: documented in docs/data.md, checked below).
// tests/parity/test_objective.py checks the same functions against diffusers' FlowMatchEulerDiscreteScheduler
// and torch's mse_loss / l1_loss where those libraries have the formula.
// The expected values are computed here in double precision from those formulas (a few also as literals
// worked out by hand); the code under test computes in fp32, hence the stated tolerances.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "models/flux/flux.h"
#include "models/random_init.h"
#include "models/tiny.h"
#include "train/flow_matching.h"
#include "train/step.h"

namespace fluxtrain::train {
namespace {

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

// kohya's formulas, transcribed from the files named above.
double kohya_shift(double t, double shift) {
  return (t * shift) / (1 + (shift - 1) * t);
}
double kohya_mu(int64_t tokens) {
  const double m = (1.15 - 0.5) / (4096.0 - 256.0), b = 0.5 - m * 256.0;
  return m * static_cast<double>(tokens) + b;
}
double kohya_time_shift(double mu, double t) {
  return std::exp(mu) / (std::exp(mu) + (1.0 / t - 1.0));
}
double kohya_loss(LossType type, double d, double c) {
  switch (type) {
    case LossType::l2: return d * d;
    case LossType::l1: return std::abs(d);
    case LossType::huber: return 2 * c * (std::sqrt(d * d + c * c) - c);
    case LossType::smooth_l1: return 2 * (std::sqrt(d * d + c * c) - c);
  }
  return 0;
}

// fp32 sigmas against double-precision formulas: the last bits of exp/sigmoid in fp32.
constexpr double kSigmaTolerance = 1e-6;
// fp32 loss (elementwise, then sums of up to a few hundred terms) against double: relative.
constexpr double kLossRelTolerance = 1e-5;

TEST(Objective, SigmaFormulasAtTheMidpointMatchHandComputedValues) {
  // sigmoid_scale 1e-12 makes every draw t = sigmoid(~1e-12) = 0.5 exactly in fp32, so the values can be
  // worked out by hand: shift s: 0.5 s / (1 + 0.5 (s - 1)); flux_shift: e^mu / (e^mu + 1) = sigmoid(mu).
  struct Case {
    TimestepSampling sampling;
    double shift;
    int64_t tokens;
    double expected;
  };
  const std::vector<Case> cases = {
      {TimestepSampling::sigmoid, 3.0, 1024, 0.5},
      {TimestepSampling::shift, 3.0, 1024, 0.75},               // 1.5 / 2
      {TimestepSampling::shift, 3.1582, 1024, 0.7595113270},    // 1.5791 / 2.0791
      {TimestepSampling::flux_shift, 3.0, 256, 0.6224593312},   // mu 0.5: sigmoid(0.5)
      {TimestepSampling::flux_shift, 3.0, 1024, 0.6524894622},  // mu 0.5 + 0.65 * 768 / 3840 = 0.63
      {TimestepSampling::flux_shift, 3.0, 4096, 0.7595109169},  // mu 1.15: sigmoid(1.15)
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(name_of(c.sampling)) + " shift " + std::to_string(c.shift) + " tokens " +
                 std::to_string(c.tokens));
    ObjectiveOptions o;
    o.sampling = c.sampling;
    o.sigmoid_scale = 1e-12;
    o.discrete_flow_shift = c.shift;
    at::Generator g = at::detail::createCPUGenerator(3);
    at::Tensor sigmas = sample_sigmas(8, c.tokens, o, g);
    for (int64_t i = 0; i < sigmas.size(0); ++i) EXPECT_NEAR(sigmas[i].item<double>(), c.expected, kSigmaTolerance);
  }
}

TEST(Objective, SigmaFormulasMatchKohyaOnTheSameDraws) {
  // The same normal draws as the code under test (a generator with the same seed), pushed through kohya's
  // formulas in double precision.
  struct Case {
    TimestepSampling sampling;
    double scale;
    double shift;
    int64_t tokens;
  };
  const std::vector<Case> cases = {
      {TimestepSampling::sigmoid, 1.0, 3.0, 1024},    {TimestepSampling::sigmoid, 1.7, 3.0, 1024},
      {TimestepSampling::shift, 1.0, 3.1582, 1024},   {TimestepSampling::shift, 0.6, 1.5, 1024},
      {TimestepSampling::flux_shift, 1.0, 3.0, 1024}, {TimestepSampling::flux_shift, 1.3, 3.0, 4096},
      {TimestepSampling::flux_shift, 1.0, 3.0, 6144},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(name_of(c.sampling)) + " scale " + std::to_string(c.scale) + " shift " +
                 std::to_string(c.shift) + " tokens " + std::to_string(c.tokens));
    ObjectiveOptions o;
    o.sampling = c.sampling;
    o.sigmoid_scale = c.scale;
    o.discrete_flow_shift = c.shift;
    at::Generator g = at::detail::createCPUGenerator(11), same = at::detail::createCPUGenerator(11);
    at::Tensor sigmas = sample_sigmas(256, c.tokens, o, g);
    at::Tensor normal = at::randn({256}, same, at::kFloat);
    for (int64_t i = 0; i < sigmas.size(0); ++i) {
      const double t = sigmoid(c.scale * normal[i].item<double>());
      const double expected = c.sampling == TimestepSampling::sigmoid ? t
                              : c.sampling == TimestepSampling::shift ? kohya_shift(t, c.shift)
                                                                      : kohya_time_shift(kohya_mu(c.tokens), t);
      ASSERT_NEAR(sigmas[i].item<double>(), expected, kSigmaTolerance) << "draw " << i;
    }
  }
  // uniform: torch.rand itself.
  ObjectiveOptions o;
  o.sampling = TimestepSampling::uniform;
  at::Generator g = at::detail::createCPUGenerator(11), same = at::detail::createCPUGenerator(11);
  EXPECT_TRUE(at::equal(sample_sigmas(64, 1024, o, g), at::rand({64}, same, at::kFloat)));
}

TEST(Objective, LossesMatchKohyaConditionalLoss) {
  // Differences from 0 to far beyond huber_c, both signs; two samples of 2 tokens x 4 channels.
  const std::vector<float> diffs = {0.0f,  0.05f,  -0.1f, 0.3f, -0.7f,  1.0f, -2.5f, 10.0f,
                                    0.01f, -0.02f, 0.2f,  4.0f, -0.15f, 0.5f, -1.0f, 3.0f};
  at::Tensor target = at::linspace(-1, 1, 16, at::kFloat).view({2, 2, 4});
  at::Tensor pred = target + at::tensor(diffs).view({2, 2, 4});
  for (LossType type : {LossType::l2, LossType::l1, LossType::huber, LossType::smooth_l1}) {
    for (double c : {0.1, 0.03, 1.0}) {
      SCOPED_TRACE(std::string(name_of(type)) + " huber_c " + std::to_string(c));
      ObjectiveOptions o;
      o.loss = type;
      o.huber_c = c;
      // The difference fp32 sees (pred was rounded when target + diff was stored).
      at::Tensor d = (pred.to(at::kDouble) - target.to(at::kDouble)).flatten();
      double sum = 0;
      for (int64_t i = 0; i < d.size(0); ++i) sum += kohya_loss(type, d[i].item<double>(), c);
      const double expected = sum / static_cast<double>(d.size(0));
      EXPECT_NEAR(flow_loss(pred, target, o).item<double>(), expected, kLossRelTolerance * expected);
    }
  }
  // One element worked out by hand: d = 0.3, c = 0.1: sqrt(0.09 + 0.01) = 0.316227766. Tolerance 1e-7:
  // 0.3f itself is 0.300000012 (fp32 spacing 3e-8 at 0.3), and each fp32 operation adds about as much.
  ObjectiveOptions o;
  o.huber_c = 0.1;
  at::Tensor p = at::full({1, 1, 1}, 0.3f), zero = at::zeros({1, 1, 1});
  o.loss = LossType::huber;
  EXPECT_NEAR(flow_loss(p, zero, o).item<double>(), 0.0432455532, 1e-7);  // 0.2 * 0.216227766
  o.loss = LossType::smooth_l1;
  EXPECT_NEAR(flow_loss(p, zero, o).item<double>(), 0.4324555320, 1e-7);  // 2 * 0.216227766
  o.loss = LossType::l2;
  EXPECT_NEAR(flow_loss(p, zero, o).item<double>(), 0.09, 1e-7);
  o.loss = LossType::l1;
  EXPECT_NEAR(flow_loss(p, zero, o).item<double>(), 0.3, 1e-7);
}

TEST(Objective, MaskWeightsElementsAndDividesByItsSum) {
  // Worked by hand (l2, target 0): sample 0 has tokens (1, 2) and (3, 4) with mask 1 and 0 -> (1 + 4) / 2
  // = 2.5; sample 1 has (1, 1) and (3, 3) with mask 0.5 everywhere -> 0.5 * 20 / (0.5 * 4) = 5. Loss 3.75.
  // kohya (mean of loss * mask over the elements) gives (1 + 4) / 4 = 1.25 and 10 / 4 = 2.5: 1.875.
  at::Tensor pred = at::tensor({1.0f, 2.0f, 3.0f, 4.0f, 1.0f, 1.0f, 3.0f, 3.0f}).view({2, 2, 2});
  at::Tensor target = at::zeros({2, 2, 2});
  at::Tensor mask = at::tensor({1.0f, 0.0f, 0.5f, 0.5f}).view({2, 2, 1});
  ObjectiveOptions o;
  EXPECT_NEAR(flow_loss(pred, target, o, mask).item<double>(), 3.75, 1e-6);
  // An all-ones mask is no mask; a uniform mask of any strength gives the unmasked loss (divided by its sum).
  EXPECT_NEAR(flow_loss(pred, target, o, at::ones({2, 2, 1})).item<double>(), flow_loss(pred, target, o).item<double>(),
              1e-6);
  EXPECT_NEAR(flow_loss(pred, target, o, at::full({2, 2, 1}, 0.25f)).item<double>(),
              flow_loss(pred, target, o).item<double>(), 1e-6);
}

// The loss as the trainer computes it (batch_loss: noise, packing, the transformer, the mask's layout), with
// the transformer's last Linear zeroed so that its prediction is exactly 0: the per-element difference is then
// the target noise - x0, known from a generator with the noise generator's state, in the unpacked layout
// [B, C, h, w] where the mask [B, h, w] applies to every channel.
// A tiny transformer whose prediction is exactly 0 (its last Linear zeroed) and a random batch of `b` latents
// [b, C, 4, 6] with text inputs, drawn from generator `g` (which the caller may draw on from).
struct ZeroPrediction {
  models::FluxConfig config = models::tiny_flux_config(false);
  models::FluxTransformer model{config, models::ModelOptions{}};
  LatentBatch batch;
  int64_t c = config.in_channels / 4, h = 4, w = 6;
  ZeroPrediction(int64_t b, at::Generator& g) {
    models::init_random(*model, 2);
    {
      at::NoGradGuard no_grad;
      model->final_layer->linear->weight.zero_();
      model->final_layer->linear->bias.zero_();
    }
    batch.latents = at::randn({b, c, h, w}, g, at::kFloat);
    batch.t5 = at::randn({b, 5, config.context_in_dim}, g, at::kFloat);
    batch.clip_pooled = at::randn({b, config.vec_in_dim}, g, at::kFloat);
  }
};

TEST(Objective, TrainerLossPathMatchesTheFormulasWithAndWithoutAMask) {
  at::Generator g = at::detail::createCPUGenerator(4);
  const int64_t b = 2;
  ZeroPrediction setup(b, g);
  auto& model = setup.model;
  const LatentBatch& batch = setup.batch;
  const int64_t c = setup.c, h = setup.h, w = setup.w;
  at::Tensor mask = at::rand({b, h, w}, g, at::kFloat);
  mask.index_put_({0, at::indexing::Slice(0, 2)}, 0.0);  // a masked-out region of sample 0
  at::Tensor x0 = batch.latents.to(at::kDouble);
  for (bool masked : {false, true}) {
    for (LossType type : {LossType::l2, LossType::l1, LossType::huber, LossType::smooth_l1}) {
      const double huber_c = type == LossType::smooth_l1 ? 0.3 : 0.1;
      SCOPED_TRACE(std::string(name_of(type)) + (masked ? ", masked" : ""));
      StepOptions options;
      options.checkpointing.enabled = false;
      options.objective.loss = type;
      options.objective.huber_c = huber_c;
      options.objective.noise_offset = 0.0;  // the expected noise below is the plain draw (offset: its own test)
      StepGenerators gens{at::detail::createCPUGenerator(8), at::detail::createCPUGenerator(9)};
      at::Generator noise_copy = at::detail::createCPUGenerator(9);
      LatentBatch in = batch;
      if (masked) in.loss_mask = mask;
      const double loss = batch_loss(*model, in, options, gens).item<double>();

      at::Tensor d = (at::randn({b, c, h, w}, noise_copy, at::kFloat).to(at::kDouble) - x0).contiguous();
      double expected = 0;
      for (int64_t s = 0; s < b; ++s) {
        double weighted = 0, weights = 0;
        for (int64_t ch = 0; ch < c; ++ch) {
          for (int64_t y = 0; y < h; ++y) {
            for (int64_t x = 0; x < w; ++x) {
              const double m = masked ? mask[s][y][x].item<double>() : 1.0;
              weighted += m * kohya_loss(type, d[s][ch][y][x].item<double>(), huber_c);
              weights += m;
            }
          }
        }
        expected += weighted / weights / static_cast<double>(b);
      }
      EXPECT_NEAR(loss, expected, kLossRelTolerance * expected);
    }
  }
}

// The trainer's loss path applies model_prediction_type and the loss weighting: with the prediction exactly 0
// (the last Linear zeroed) additive and sigma_scaled both predict the noisy input x_t = (1 - s) x0 + s n, so
// the l2 loss is mean((x_t - (n - x0))^2) per sample, times 1 / s^2 (sigma_sqrt) or cosmap's weight, with s
// and n drawn from copies of the trainer's generators.
TEST(Objective, TrainerLossPathAppliesThePredictionTypeAndTheWeighting) {
  at::Generator g = at::detail::createCPUGenerator(4);
  const int64_t b = 3;
  ZeroPrediction setup(b, g);
  auto& model = setup.model;
  const LatentBatch& batch = setup.batch;
  const int64_t c = setup.c, h = setup.h, w = setup.w;
  const at::Tensor x0 = batch.latents.to(at::kDouble);
  for (PredictionType prediction : {PredictionType::raw, PredictionType::additive, PredictionType::sigma_scaled}) {
    for (WeightingScheme weighting : {WeightingScheme::none, WeightingScheme::sigma_sqrt, WeightingScheme::cosmap}) {
      SCOPED_TRACE(std::string(name_of(prediction)) + ", " + std::string(name_of(weighting)));
      StepOptions options;
      options.checkpointing.enabled = false;
      options.objective.noise_offset = 0.0;
      options.objective.sampling = TimestepSampling::sigma;
      options.objective.prediction = prediction;
      options.objective.weighting = weighting;
      StepGenerators gens{at::detail::createCPUGenerator(8), at::detail::createCPUGenerator(9)};
      at::Generator sigma_copy = at::detail::createCPUGenerator(8), noise_copy = at::detail::createCPUGenerator(9);
      const double loss = batch_loss(*model, batch, options, gens).item<double>();

      const at::Tensor s = sample_sigmas(b, (h / 2) * (w / 2), options.objective, sigma_copy).to(at::kDouble);
      const at::Tensor n = at::randn({b, c, h, w}, noise_copy, at::kFloat).to(at::kDouble);
      const at::Tensor sv = s.view({b, 1, 1, 1});
      const at::Tensor pred = prediction == PredictionType::raw ? at::zeros_like(x0) : (1 - sv) * x0 + sv * n;
      at::Tensor per_sample = (pred - (n - x0)).pow(2).flatten(1).mean(1);
      if (weighting == WeightingScheme::sigma_sqrt) per_sample = per_sample / s.pow(2);
      if (weighting == WeightingScheme::cosmap) per_sample = per_sample * 2 / (M_PI * (1 - 2 * s + 2 * s.pow(2)));
      const double expected = per_sample.mean().item<double>();
      EXPECT_NEAR(loss, expected, kLossRelTolerance * expected);
    }
  }
}

}  // namespace
}  // namespace fluxtrain::train
