// The dataset plan: the images of a resolved dataset config (scanned, captioned, sized, bucketed), and the
// epoch plan built from them — which batches, from which bucket, in which order, with which crops, flips
// and captions — addressable by (seed, epoch, step) so that a resumed run continues at any position.
//
// Follows kohya-ss/sd-scripts (library/train_util.py: DreamBoothDataset, BaseDataset.make_buckets,
// shuffle_buckets, DatasetGroup): every image appears num_repeats times per epoch; a batch holds images of
// one bucket of one dataset; regularisation images (is_reg) are repeated so that their count matches the
// training images of their dataset; datasets are concatenated. The shuffles use data/rng.h, not Python's
// random, so the orders differ from kohya's while following the same rules.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/buckets.h"
#include "data/dataset_config.h"
#include "data/label_files.h"

namespace fluxtrain::data {

// Reads an image's width and height (after EXIF orientation) from its header; throws fluxtrain::Error
// naming the file when it cannot (the scan then skips the file with that message).
using ImageProbe = std::function<Resolution(const std::filesystem::path&)>;

// probe_image (data/image.h): the size after EXIF orientation, from the file's headers.
ImageProbe default_image_probe();

// Which images of the subsets a plan holds: those that train, or those held out for the validation loss
// (SubsetConfig::validation_split; every image once, without flips, crops or caption changes).
enum class DatasetPart { training, validation };

struct ScanOptions {
  ImageProbe probe;  // required
  DatasetPart part = DatasetPart::training;
  uint64_t seed = 42;  // the run's seed: the held-out images of subsets without a validation_seed
};

// The images of a subset's listing held out for validation: round(n x validation_split) of them (at least
// one and not all of them for a fraction below 1), ranked by a hash of (validation seed, the path relative
// to the subset's folder), so the choice does not move when other images come or go. Sorted.
std::vector<std::filesystem::path> held_out_images(const std::vector<std::filesystem::path>& files,
                                                   const SubsetConfig& subset, uint64_t run_seed);

struct DatasetImage {
  std::filesystem::path path;
  int dataset = 0;
  int subset = 0;
  Resolution size;  // as probed
  BucketFit fit;    // bucket, resized size, centre crop
  // The caption file's first line, or (without one) the class tokens, else the default caption (before per-step
  // edits). A caption file of labels (data/label_files.h) is not a caption.
  std::string caption;
  bool caption_from_file = false;
  // The caption file held labels (YOLO numbers, COCO JSON), not a caption: what kind and which file. The image
  // is then captionless (its caption is the class tokens, else the default caption, else "").
  LabelKind caption_label = LabelKind::none;
  std::filesystem::path label_file;
  int num_repeats = 1;  // per epoch, after kohya's balancing of regularisation images (0: unused)
  bool is_reg = false;
  std::filesystem::path mask;  // its mask picture (the subset's conditioning_data_dir), or empty
};

struct SkippedImage {
  std::filesystem::path path;
  std::string reason;
};

struct PlanBucket {
  int dataset = 0;
  Resolution resolution;
  std::vector<int> images;  // indices into DatasetPlan::images(), each once
  int64_t samples = 0;      // images counted with their repeats
  int64_t batches = 0;      // ceil(samples / batch_size)
};

struct PlannedSample {
  int image = 0;   // index into DatasetPlan::images()
  int repeat = 0;  // which of the image's repeats in this epoch
  bool flipped = false;
  int crop_left = 0;  // in the resized image
  int crop_top = 0;
  std::string caption;  // after process_caption
};

struct PlannedBatch {
  int bucket = 0;  // index into DatasetPlan::buckets()
  std::vector<PlannedSample> samples;
};

struct SubsetStats {
  int images = 0;
  int missing_captions = 0;  // no caption (no file, an empty one or a label file): class tokens, default caption or ""
  int skipped = 0;
  int label_captions = 0;     // images whose caption file holds labels (YOLO numbers): counted in missing_captions
  int label_files = 0;        // label files ignored as not captions, those beside images included
  int annotation_images = 0;  // images in labels/, masks/, annotations/ folders of a recursive scan: not used
};

class DatasetPlan {
 public:
  // Scans every subset's folder (with its sub-folders when the subset is recursive, except hidden ones and
  // the images of labels/, masks/, annotations/ folders; .jpg .jpeg .png .webp .bmp in any letter case,
  // hidden files excluded, sorted by path), reads captions (a label file is not one; other label files in
  // the folder are counted), probes sizes, skips unreadable images with a warning,
  // assigns buckets and balances regularisation images. Throws Error when no image can be used. With
  // options.part = validation: the held-out images only (an empty plan when there are none).
  static DatasetPlan build(DatasetGroupConfig config, const ScanOptions& options);

  const DatasetGroupConfig& config() const { return config_; }
  const std::vector<DatasetImage>& images() const { return images_; }
  const std::vector<SkippedImage>& skipped() const { return skipped_; }
  const std::vector<PlanBucket>& buckets() const { return buckets_; }
  // [dataset][subset]
  const std::vector<std::vector<SubsetStats>>& subset_stats() const { return stats_; }

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t train_samples() const { return train_samples_; }  // training images x repeats, per epoch
  int64_t reg_samples() const { return reg_samples_; }      // regularisation images x repeats, as used
  int captionless_images() const;   // images without a caption (SubsetStats::missing_captions, summed)
  int label_files_ignored() const;  // label files not taken as captions (SubsetStats::label_files, summed)

  // Epoch `epoch` (0-based): steps_per_epoch() batches. Each bucket's samples are shuffled and cut into
  // batches of the dataset's batch_size (the last one may be smaller); then all batches are shuffled.
  // The same (seed, epoch) gives the same plan; each sample's flip, random crop and caption edits are
  // drawn from its own stream keyed by (seed, epoch, image, repeat).
  std::vector<PlannedBatch> epoch(uint64_t seed, int64_t epoch) const;
  // One batch of the epoch plan, 0 <= step < steps_per_epoch() (for a resume in mid-epoch).
  PlannedBatch batch(uint64_t seed, int64_t epoch, int64_t step) const;

  // "loaded 398 images (12 regularisation), 3 without a caption, 400 label files ignored (not captions),
  // skipped 2: a.jpg (truncated JPEG), b.png (...)".
  std::string summary() const;

 private:
  std::vector<PlannedBatch> epoch_order(uint64_t seed, int64_t epoch) const;
  void realise(PlannedSample& sample, uint64_t seed, int64_t epoch) const;

  DatasetGroupConfig config_;
  std::vector<DatasetImage> images_;
  std::vector<SkippedImage> skipped_;
  std::vector<PlanBucket> buckets_;
  std::vector<std::vector<SubsetStats>> stats_;
  int64_t steps_per_epoch_ = 0;
  int64_t train_samples_ = 0;
  int64_t reg_samples_ = 0;
};

}  // namespace fluxtrain::data
