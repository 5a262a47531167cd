// The training data of `fluxtrain train`: the dataset plan (src/data) turned into batches of cached
// latents and text embeddings. The deterministic variants (every image at its centre crop, flipped too
// with flip_aug; every caption as written) are encoded once into the disk caches before training, and
// the encoders are freed. Variants that change per epoch (random_crop, shuffled or dropped caption tags)
// are encoded when their batch comes, with the encoder they need kept loaded; caption_dropout's empty
// caption is cached like any other.
#pragma once

#include <memory>
#include <string>

#include "data/dataset.h"
#include "models/convert.h"
#include "train/cache.h"
#include "train/data_source.h"

namespace fluxtrain::train {

struct EncoderFiles {
  std::string ae;
  std::string clip_l;
  std::string t5xxl;
};

struct DatasetSourceOptions {
  std::filesystem::path cache_dir;
  models::ModelOptions encoders;  // device / dtype the encoders run in
  sample::TextEncoderOptions text;
  int encode_batch_size = 4;
  // kohya's cache_text_encoder_outputs: false (a trained text encoder) leaves the text cache alone and gives
  // batches their captions only (LatentBatch::captions; the step encodes them).
  bool cache_text = true;
  uint64_t seed = 42;
  // Data parallelism: the plan's batches are global batches (per-device batch_size x world), and
  // batch() returns rank `rank`'s contiguous share of each (LatentBatch::global_rows).
  int rank = 0;
  int world_size = 1;
};

class DatasetSource : public DataSource {
 public:
  DatasetSource(std::shared_ptr<const data::DatasetPlan> plan, EncoderFiles files, DatasetSourceOptions options);
  ~DatasetSource() override;

  // Fills the caches (what is not there yet) and frees the encoders that training will not need.
  // Returns a one-line report ("latents: 398 reused, 2 encoded; text: ..."). With shards > 1 only every
  // shards-th entry from `shard` on: the ranks of a machine fill the caches together, then meet at a
  // barrier (the caller's) before training reads them. `also`: another plan over the same files and caches
  // (the validation images) whose entries are filled in the same pass, with the encoders loaded once.
  std::string prepare(int shard = 0, int shards = 1, const data::DatasetPlan* also = nullptr);

  int64_t batches_per_epoch() const override;
  int64_t images_per_epoch() const override;
  LatentBatch batch(int64_t epoch, int64_t index) override;

  const data::DatasetPlan& plan() const { return *plan_; }

 private:
  PreparedImage prepared(const data::PlannedSample& sample) const { return prepared(*plan_, sample); }
  static PreparedImage prepared(const data::DatasetPlan& plan, const data::PlannedSample& sample);
  sample::TextEncoders& encoders();

  std::shared_ptr<const data::DatasetPlan> plan_;
  EncoderFiles files_;
  DatasetSourceOptions options_;
  std::unique_ptr<LatentCache> latents_;
  std::unique_ptr<TextCache> text_;
  std::unique_ptr<sample::TextEncoders> encoders_;
  models::LoadedAe ae_;
};

}  // namespace fluxtrain::train
