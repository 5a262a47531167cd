#include "train/ae_trainer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <numeric>

#include "core/error.h"
#include "core/log.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"

namespace fluxtrain::train {

AeTrainingResult train_autoencoder(models::AutoEncoderImpl& ae, const std::function<at::Tensor(int64_t)>& batch,
                                   const AeTrainingOptions& options) {
  if (options.steps <= 0) fail("autoencoder training: steps must be positive, got ", options.steps);
  std::vector<at::Tensor> params;
  for (auto& p : ae.parameters()) {
    if (p.scalar_type() != at::kFloat) fail("autoencoder training needs fp32 weights, got ", c10::toString(p.scalar_type()));
    p.requires_grad_(true);
    params.push_back(p);
  }
  auto optimizer = optim::make_optimizer("AdamW", "", params, options.learning_rate, 0.0);
  optim::ScheduleOptions schedule_options;
  schedule_options.name = "cosine";
  schedule_options.warmup = static_cast<double>(std::min(options.warmup_steps, options.steps - 1));
  schedule_options.num_training_steps = options.steps;
  const optim::LrSchedule schedule(schedule_options, options.learning_rate);

  const double scale = ae.config.scale_factor, shift = ae.config.shift_factor;
  at::Generator generator = at::detail::createCPUGenerator(options.seed);

  AeTrainingResult result;
  const auto started = std::chrono::steady_clock::now();
  std::deque<double> recent;
  for (int64_t step = 0; step < options.steps; ++step) {
    const at::Tensor pixels = batch(step);
    const std::vector<at::Tensor> moments = ae.moments(pixels).chunk(2, 1);
    const at::Tensor mean = moments[0];
    const at::Tensor logvar = moments[1].clamp(-30.0, 20.0);
    // The posterior sample, in the transformer's units (scale * (z - shift)).
    const at::Tensor noise = at::randn(mean.sizes(), generator, mean.options().device(at::kCPU)).to(mean.device());
    const at::Tensor mean_scaled = (mean - shift) * scale;
    const at::Tensor std_scaled = (0.5 * logvar).exp() * scale;
    const at::Tensor decoded = ae.decode(mean_scaled + std_scaled * noise);
    const at::Tensor l1 = (decoded - pixels).abs().mean();
    const at::Tensor var_scaled = std_scaled.square();
    const at::Tensor kl = 0.5 * (mean_scaled.square() + var_scaled - 1.0 - var_scaled.log()).mean();
    const at::Tensor loss = l1 + options.kl_weight * kl;
    optimizer->set_lr(schedule.lr(step));
    optimizer->zero_grad();
    loss.backward();
    optimizer->step();

    const double l1_value = l1.item<double>();
    if (step == 0) result.first_loss = l1_value;
    recent.push_back(l1_value);
    if (static_cast<int64_t>(recent.size()) > std::max<int64_t>(1, options.log_every)) recent.pop_front();
    if (options.log_every > 0 && ((step + 1) % options.log_every == 0 || step + 1 == options.steps)) {
      const double smoothed = std::accumulate(recent.begin(), recent.end(), 0.0) / static_cast<double>(recent.size());
      log::info("autoencoder step ", step + 1, "/", options.steps, ": L1 ", smoothed, ", KL ", kl.item<double>(),
                ", lr ", schedule.lr(step), ", ",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() / (step + 1),
                " s/step");
    }
    if (step + 1 == options.steps) {
      result.last_loss = std::accumulate(recent.begin(), recent.end(), 0.0) / static_cast<double>(recent.size());
      result.latent_mean = mean_scaled.mean().item<double>();
      result.latent_std = mean_scaled.std().item<double>();
    }
  }
  for (auto& p : params) p.requires_grad_(false);
  return result;
}

}  // namespace fluxtrain::train
