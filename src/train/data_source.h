// The training data as the training loop sees it: batches of cached latents and text embeddings,
// addressed by position. train/dataset_source.h implements it over the dataset plan and the caches,
// train/prefetch.h computes its batches ahead in a background thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fluxtrain::train {

// What the caches hold for a batch (one bucket: same latent size for every sample).
struct LatentBatch {
  at::Tensor latents;      // [B, 16, h, w], AE latents already scaled and shifted
  at::Tensor t5;           // [B, L, context_in_dim]
  at::Tensor t5_mask;      // [B, L] (1 = token) or undefined
  at::Tensor clip_pooled;  // [B, vec_in_dim]
  at::Tensor loss_mask;    // [B, h, w] in [0, 1] (alpha_mask training) or undefined
  // The captions of the rows. Without the text cache (a trained text encoder) t5 / t5_mask / clip_pooled
  // are undefined and the step encodes these (StepOptions::encode_text).
  std::vector<std::string> captions;
  // Data parallelism: this rank's rows [first_row, first_row + B) of a global batch of global_rows
  // images (0: the batch is whole). The random draws of a step (timesteps, noise) are made for the
  // global batch on every rank and sliced, so N ranks see what one process would. A rank may get no
  // rows (a global batch smaller than the world): then latents is undefined and global_shape says the
  // global latents' shape.
  int64_t global_rows = 0;
  int64_t first_row = 0;
  std::vector<int64_t> global_shape;
  int64_t rows() const { return latents.defined() ? latents.size(0) : 0; }
};

// Batches by position. batch(epoch, i) must be a pure function of its arguments (and the source's
// seed), so that a resumed run sees exactly the batches the uninterrupted run would have.
class DataSource {
 public:
  virtual ~DataSource() = default;
  virtual int64_t batches_per_epoch() const = 0;
  virtual LatentBatch batch(int64_t epoch, int64_t index) = 0;
  // Images in one epoch (with repeats), for the metadata.
  virtual int64_t images_per_epoch() const = 0;
};

}  // namespace fluxtrain::train
