#include "train/flow_matching.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"

namespace fluxtrain::train {

at::Tensor sample_sigmas(int64_t batch, int64_t image_tokens, const ObjectiveOptions& o, at::Generator& generator) {
  if (o.sampling == TimestepSampling::uniform) return at::rand({batch}, generator, at::kFloat);
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

NoisedLatents add_noise(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& sigmas) {
  std::vector<int64_t> view(static_cast<size_t>(latents.dim()), 1);
  view[0] = sigmas.size(0);
  at::Tensor s = sigmas.to(latents.scalar_type()).view(view);
  return {(1 - s) * latents + s * noise, noise - latents};
}

at::Tensor flow_loss(const at::Tensor& pred, const at::Tensor& target, const ObjectiveOptions& o, const at::Tensor& mask) {
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
  if (mask.defined()) {
    at::Tensor m = mask.to(at::kFloat).expand_as(elementwise).flatten(1);
    return ((flat * m).sum(1) / m.sum(1).clamp_min(1e-8)).mean();
  }
  return flat.mean(1).mean();
}

}  // namespace fluxtrain::train
