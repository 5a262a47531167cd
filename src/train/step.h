// One training step of a Flux LoRA (or any set of trainable parameters): for each micro-batch, noise
// the cached latents (rectified flow), run the transformer (optionally checkpointed), backpropagate
// loss / n; then clip the gradient norm, step the optimizer and clear the gradients.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

#include "models/flux/flux.h"
#include "train/checkpointing.h"
#include "train/data_source.h"
#include "train/flow_matching.h"

namespace fluxtrain::optim {
class Optimizer;
}

namespace fluxtrain::train {

class Parallel;

// The settings (train/options.h) with the checkpointing's generators and the compute dtype.
struct StepOptions {
  StepOptions() = default;
  explicit StepOptions(const StepSettings& settings)
      : objective(settings.objective), apply_t5_mask(settings.apply_t5_mask), max_grad_norm(settings.max_grad_norm) {
    static_cast<CheckpointSettings&>(checkpointing) = settings.checkpointing;
  }
  ObjectiveOptions objective;
  CheckpointOptions checkpointing;
  at::ScalarType compute_dtype = at::kFloat;
  bool apply_t5_mask = false;
  double max_grad_norm = 1.0;
  // Fills a batch's text embeddings from its captions when it has none (a trained text-encoder LoRA: the
  // text cache is off); with autograd on in training, off in the validation loss.
  std::function<void(LatentBatch&)> encode_text;
};

// One CPU generator per purpose, so a run is reproducible on any device and resumable exactly.
struct StepGenerators {
  at::Generator timesteps;
  at::Generator noise;
};

struct StepResult {
  double loss = 0;       // mean over the micro-batches
  double grad_norm = 0;  // total L2 norm before clipping
  bool skipped = false;  // the loss or the gradient norm was not finite: no optimizer step, gradients dropped
};

// The batch as a CUDA copy wants it, made in the loader's thread: the text embeddings in the compute
// dtype and every tensor batch_loss copies to the device in pinned (page-locked) host memory, so those
// copies run asynchronously (non_blocking) on the device's stream. The latents stay as they are: the
// noise is added to them on the CPU first. Only for a CUDA device (pinning needs the CUDA runtime).
LatentBatch pin_for_device(LatentBatch batch, at::ScalarType compute_dtype);

// The loss of one batch (of this rank's rows of it), with its autograd graph (no backward); undefined when
// the rank has no rows of the batch (the generators still advance as for the whole batch).
at::Tensor batch_loss(models::FluxTransformerImpl& model, const LatentBatch& batch, const StepOptions& options,
                      StepGenerators& generators);

// The loss of this rank's rows of a batch at the given sigmas [rows] and noise (the batch's latent shape).
at::Tensor noised_loss(models::FluxTransformerImpl& model, const LatentBatch& batch, const at::Tensor& sigmas,
                       const at::Tensor& noise, const StepOptions& options);

// The validation loss: the mean loss over every image of `data`'s first epoch at each of kValidationSigmas,
// with noise drawn from a generator seeded with `seed` at every call, so that the same weights give the
// same number (comparable across checkpoints, resumes and runs). No gradients.
inline constexpr double kValidationSigmas[] = {0.1, 0.3, 0.5, 0.7, 0.9};
double validation_loss(models::FluxTransformerImpl& model, DataSource& data, const StepOptions& options,
                       uint64_t seed);

// Forward and backward over the micro-batches, gradient clipping, the optimizer step. A NaN or infinite
// loss or gradient norm skips the optimizer step (the weights and the optimizer state stay as they were)
// and says so in StepResult::skipped. With `parallel`, each rank backpropagates its rows' share of the
// global batch's mean loss (rows / global rows), the gradients are summed over the ranks (bucketed,
// during the last micro-batch's backward) and the loss is summed for the result: every rank then holds
// the gradients of the global batch and takes the same optimizer step.
StepResult train_step(models::FluxTransformerImpl& model, optim::Optimizer& optimizer,
                      const std::vector<LatentBatch>& micro_batches, const StepOptions& options,
                      StepGenerators& generators, Parallel* parallel = nullptr,
                      const std::vector<bool>& owned = {});
// `owned` (ZeRO stage 1, when not empty): the optimizer steps only the tensors this rank owns (the others'
// gradients are dropped after the clipping, which needs them all); the caller then sends each owner's new
// values to the other ranks.

// torch.nn.utils.clip_grad_norm_ semantics: returns the total norm; scales the gradients by
// max_norm / (norm + 1e-6) when that is below 1. max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace fluxtrain::train
