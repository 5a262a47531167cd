#include "train/flow_matching.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"

namespace fluxtrain::train {

namespace {

// The training steps of kohya's noise scheduler (diffusers' FlowMatchEulerDiscreteScheduler defaults).
constexpr int64_t kTrainTimesteps = 1000;

}  // namespace

at::Tensor timestep_density(int64_t batch, const ObjectiveOptions& o, at::Generator& generator) {
  if (o.weighting == WeightingScheme::logit_normal)
    return at::sigmoid(at::normal(o.logit_mean, o.logit_std, {batch}, generator));
  at::Tensor u = at::rand({batch}, generator, at::kFloat);
  if (o.weighting == WeightingScheme::mode) u = 1 - u - o.mode_scale * (at::cos(M_PI * u / 2).pow(2) - 1 + u);
  return u;
}

at::Tensor sample_sigmas(int64_t batch, int64_t image_tokens, const ObjectiveOptions& o, at::Generator& generator) {
  if (o.sampling == TimestepSampling::uniform) return at::rand({batch}, generator, at::kFloat);
  if (o.sampling == TimestepSampling::sigma) {
    // The scheduler's sigmas in its fp32 arithmetic: v = 1000..1 / 1000, shifted.
    const at::Tensor v = at::arange(kTrainTimesteps, 0, -1, at::kFloat) / static_cast<double>(kTrainTimesteps);
    const double s = o.discrete_flow_shift;
    const at::Tensor scheduler = s * v / (1 + (s - 1) * v);
    // floor(u * 1000) as kohya's .long(); mode's u reaches 1 at its edge, which kohya would index past the end.
    const at::Tensor index = (timestep_density(batch, o, generator) * static_cast<double>(kTrainTimesteps))
                                 .to(at::kLong)
                                 .clamp(0, kTrainTimesteps - 1);
    return scheduler.index_select(0, index);
  }
  at::Tensor t = at::sigmoid(at::randn({batch}, generator, at::kFloat) * o.sigmoid_scale);
  if (o.sampling == TimestepSampling::shift) {
    double s = o.discrete_flow_shift;
    return (t * s) / (1 + (s - 1) * t);
  }
  if (o.sampling == TimestepSampling::flux_shift) {
    double mu = 0.5 + (1.15 - 0.5) / (4096.0 - 256.0) * (static_cast<double>(image_tokens) - 256.0);
    return std::exp(mu) / (std::exp(mu) + (1.0 / t - 1.0));
  }
  return t;
}

at::Tensor sample_noise(at::IntArrayRef shape, double noise_offset, at::Generator& generator) {
  at::Tensor noise = at::randn(shape, generator, at::kFloat);
  if (noise_offset != 0) {
    noise = noise + noise_offset * at::randn({shape[0], shape[1], 1, 1}, generator, at::kFloat);
  }
  return noise;
}

at::Tensor loss_weighting(WeightingScheme scheme, const at::Tensor& sigmas) {
  const at::Tensor s = sigmas.to(at::kFloat);
  if (scheme == WeightingScheme::sigma_sqrt) return s.pow(-2.0);
  if (scheme == WeightingScheme::cosmap) return 2 / (M_PI * (1 - 2 * s + 2 * s.pow(2)));
  return at::ones_like(s);
}

at::Tensor apply_prediction_type(PredictionType type, const at::Tensor& pred, const at::Tensor& noisy,
                                 const at::Tensor& sigmas) {
  if (type == PredictionType::raw) return pred;
  std::vector<int64_t> view(static_cast<size_t>(pred.dim()), 1);
  view[0] = sigmas.size(0);
  const at::Tensor x = noisy.to(pred.device(), pred.scalar_type());
  if (type == PredictionType::additive) return pred + x;
  return x - pred * sigmas.to(pred.device(), pred.scalar_type()).view(view);
}

NoisedLatents add_noise(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& sigmas) {
  std::vector<int64_t> view(static_cast<size_t>(latents.dim()), 1);
  view[0] = sigmas.size(0);
  at::Tensor s = sigmas.to(latents.scalar_type()).view(view);
  return {(1 - s) * latents + s * noise, noise - latents};
}

at::Tensor flow_loss(const at::Tensor& pred, const at::Tensor& target, const ObjectiveOptions& o, const at::Tensor& mask,
                     const at::Tensor& weights) {
  at::Tensor diff = pred.to(at::kFloat) - target.to(at::kFloat);
  at::Tensor elementwise;
  switch (o.loss) {
    case LossType::l2: elementwise = diff.pow(2); break;
    case LossType::l1: elementwise = diff.abs(); break;
    // kohya's pseudo-Huber forms (library/train_util.py conditional_loss), constant huber_c.
    case LossType::huber: elementwise = 2 * o.huber_c * (at::sqrt(diff.pow(2) + o.huber_c * o.huber_c) - o.huber_c); break;
    case LossType::smooth_l1: elementwise = 2 * (at::sqrt(diff.pow(2) + o.huber_c * o.huber_c) - o.huber_c); break;
  }
  at::Tensor flat = elementwise.flatten(1);
  at::Tensor per_sample;
  if (mask.defined()) {
    at::Tensor m = mask.to(at::kFloat).expand_as(elementwise).flatten(1);
    per_sample = (flat * m).sum(1) / m.sum(1).clamp_min(1e-8);
  } else {
    per_sample = flat.mean(1);
  }
  if (weights.defined()) per_sample = per_sample * weights.to(per_sample.device(), at::kFloat);
  return per_sample.mean();
}

}  // namespace fluxtrain::train
