#include "train/step.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "optim/optimizer.h"
#include "train/parallel.h"

namespace fluxtrain::train {

namespace {

at::Tensor pinned(const at::Tensor& t, at::ScalarType dtype) {
  if (!t.defined()) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(dtype).pinned_memory(true));
  out.copy_(t);
  return out;
}

}  // namespace

LatentBatch pin_for_device(LatentBatch batch, at::ScalarType compute_dtype) {
  batch.t5 = pinned(batch.t5, compute_dtype);
  batch.clip_pooled = pinned(batch.clip_pooled, compute_dtype);
  if (batch.t5_mask.defined()) batch.t5_mask = pinned(batch.t5_mask, batch.t5_mask.scalar_type());
  if (batch.loss_mask.defined()) batch.loss_mask = pinned(batch.loss_mask, at::kFloat);
  return batch;
}

at::Tensor batch_loss(models::FluxTransformerImpl& model, const LatentBatch& batch, const StepOptions& options,
                      StepGenerators& generators) {
  const std::vector<int64_t> shape = batch.global_rows > 0 ? batch.global_shape : batch.latents.sizes().vec();
  const int64_t tokens = (shape.at(2) / 2) * (shape.at(3) / 2);
  at::Tensor sigmas = sample_sigmas(shape[0], tokens, options.objective, generators.timesteps);
  at::Tensor noise = sample_noise(shape, options.objective.noise_offset, generators.noise);
  const int64_t b = batch.rows();
  if (b == 0) return {};
  if (batch.global_rows > 0) {
    sigmas = sigmas.narrow(0, batch.first_row, b);
    noise = noise.narrow(0, batch.first_row, b);
  }
  return noised_loss(model, batch, sigmas, noise, options);
}

namespace {

// The batch with its text embeddings: as cached, or encoded now (StepOptions::encode_text).
const LatentBatch& with_text(const LatentBatch& batch, const StepOptions& options, LatentBatch& encoded) {
  if (batch.t5.defined() || !options.encode_text) return batch;
  encoded = batch;
  options.encode_text(encoded);
  return encoded;
}

}  // namespace

at::Tensor noised_loss(models::FluxTransformerImpl& model, const LatentBatch& batch_in, const at::Tensor& sigmas,
                       const at::Tensor& noise, const StepOptions& options) {
  const at::Device device = model.img_in->weight.device();
  const at::ScalarType dtype = options.compute_dtype;
  const int64_t b = batch_in.rows();
  const int64_t h = batch_in.latents.size(2), w = batch_in.latents.size(3);
  LatentBatch encoded;
  const LatentBatch& batch = with_text(batch_in, options, encoded);
  NoisedLatents noised = add_noise(batch.latents.to(at::kFloat).cpu(), noise, sigmas);

  models::FluxInputs in;
  in.img = models::pack_latents(noised.noisy).to(device, dtype);
  in.img_ids = models::make_img_ids(b, h / 2, w / 2, at::TensorOptions().device(device));
  // non_blocking: asynchronous from pinned memory (pin_for_device), an ordinary copy otherwise.
  in.txt = batch.t5.to(device, dtype, /*non_blocking=*/true);
  in.txt_ids = at::zeros({b, batch.t5.size(1), 3}, at::TensorOptions().device(device));
  in.timesteps = sigmas.to(device);
  in.y = batch.clip_pooled.to(device, dtype, /*non_blocking=*/true);
  if (model.config.guidance_embed) in.guidance = at::full({b}, options.objective.guidance_scale, at::TensorOptions().device(device));
  if (options.apply_t5_mask && batch.t5_mask.defined()) in.txt_mask = batch.t5_mask.to(device, /*non_blocking=*/true);

  at::Tensor pred = flux_forward(model, in, options.checkpointing);
  if (options.objective.prediction != PredictionType::raw)
    pred = apply_prediction_type(options.objective.prediction, pred.to(at::kFloat),
                                 models::pack_latents(noised.noisy).to(device), sigmas);
  at::Tensor target = models::pack_latents(noised.target).to(device);
  at::Tensor mask;
  if (batch.loss_mask.defined()) {
    // [B, h, w] -> the packed layout of the prediction, every latent channel weighted alike.
    mask = models::pack_latents(
        batch.loss_mask.to(device, at::kFloat, /*non_blocking=*/true).unsqueeze(1).expand({b, batch.latents.size(1), h, w}));
  }
  at::Tensor weights;
  if (options.objective.weighting == WeightingScheme::sigma_sqrt || options.objective.weighting == WeightingScheme::cosmap)
    weights = loss_weighting(options.objective.weighting, sigmas);
  return flow_loss(pred, target, options.objective, mask, weights);
}

double validation_loss(models::FluxTransformerImpl& model, DataSource& data, const StepOptions& options,
                       uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator generator = at::detail::createCPUGenerator(seed);
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < data.batches_per_epoch(); ++i) {
    const LatentBatch batch = data.batch(0, i);
    const int64_t b = batch.rows();
    if (b == 0) continue;
    for (double sigma : kValidationSigmas) {
      const at::Tensor noise = sample_noise(batch.latents.sizes(), options.objective.noise_offset, generator);
      const at::Tensor sigmas = at::full({b}, sigma, at::TensorOptions().dtype(at::kFloat));
      sum += noised_loss(model, batch, sigmas, noise, options).item<double>() * static_cast<double>(b);
      count += b;
    }
  }
  return count > 0 ? sum / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(at::kFloat).norm().pow(2));
  }
  if (norms.empty()) return 0;
  double total = std::sqrt(at::stack(norms).sum().item<double>());
  if (max_norm > 0) {
    double coef = max_norm / (total + 1e-6);
    if (coef < 1) {
      for (const auto& p : params) {
        if (p.grad().defined()) p.grad().mul_(coef);
      }
    }
  }
  return total;
}

StepResult train_step(models::FluxTransformerImpl& model, optim::Optimizer& optimizer,
                      const std::vector<LatentBatch>& micro_batches, const StepOptions& options,
                      StepGenerators& generators, Parallel* parallel, const std::vector<bool>& owned) {
  StepResult result;
  const double n = static_cast<double>(micro_batches.size());
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const LatentBatch& batch = micro_batches[i];
    if (parallel && i + 1 == micro_batches.size()) parallel->before_last_backward();
    at::Tensor loss = batch_loss(model, batch, options, generators);
    if (!loss.defined()) continue;
    if (batch.global_rows > 0) {
      // This rank's share of the global batch's mean: summed over the ranks, the mean of every row.
      const double share = static_cast<double>(batch.rows()) / static_cast<double>(batch.global_rows);
      (loss * (share / n)).backward();
      result.loss += loss.item<double>() * share / n;
    } else {
      (loss / n).backward();
      result.loss += loss.item<double>() / n;
    }
  }
  if (parallel) {
    parallel->finish_gradients();
    result.loss = parallel->sum({result.loss}, "the loss all-reduce")[0];
  }
  result.grad_norm = clip_grad_norm(optimizer.params(), options.max_grad_norm);
  result.skipped = !std::isfinite(result.loss) || !std::isfinite(result.grad_norm);
  if (!result.skipped) {
    if (!owned.empty()) {
      const std::vector<at::Tensor>& params = optimizer.params();
      for (size_t i = 0; i < params.size(); ++i)
        if (!owned[i]) params[i].mutable_grad().reset();
    }
    optimizer.step();
  }
  optimizer.zero_grad();
  return result;
}

}  // namespace fluxtrain::train
