// Aspect-ratio buckets, as kohya-ss/sd-scripts makes them (library/model_util.py
// make_bucket_resolutions, library/train_util.py BucketManager.select_bucket, trim_and_resize_if_required):
// the list of bucket resolutions, the bucket an image goes to, the size it is resized to, and where the
// overflow is cropped.
#pragma once

#include <compare>
#include <string>
#include <vector>

namespace fluxtrain::data {

class DataRng;

struct Resolution {
  int width = 0;
  int height = 0;
  friend auto operator<=>(const Resolution&, const Resolution&) = default;
};
std::string to_string(Resolution r);  // "1280x768"

// kohya's make_bucket_resolutions: area A = max_reso.width * max_reso.height; the square
// floor(sqrt(A) / step) * step; then for width = min_size, min_size + step, ... <= max_size:
// height = min(max_size, floor(A / width / step) * step), and if height >= min_size both (width, height)
// and (height, width). Sorted by (width, height), no duplicates.
std::vector<Resolution> make_bucket_resolutions(Resolution max_reso, int min_size, int max_size, int step);

// What the dataset's bucket keys resolve to (see dataset_config.h).
struct BucketSettings {
  Resolution resolution{1024, 1024};
  bool enable_bucket = false;
  int min_bucket_reso = 256;
  int max_bucket_reso = 1024;
  int bucket_reso_steps = 64;
  bool bucket_no_upscale = false;
};

// Where one image goes: scaled to `resized` (covering the bucket), then cropped to `bucket`.
// crop_left/crop_top is the centre crop; a random crop draws each offset in [0, resized - bucket].
struct BucketFit {
  Resolution bucket;
  Resolution resized;
  int crop_left = 0;
  int crop_top = 0;
  double aspect_error = 0;  // bucket aspect ratio - image aspect ratio
};

class BucketPlanner {
 public:
  // enable_bucket false: one bucket, the resolution itself (kohya's fixed-size mode: cover and crop).
  // enable_bucket true, bucket_no_upscale false: kohya's predefined list (make_bucket_resolutions).
  // bucket_no_upscale true: a bucket per image size (kohya ignores min/max_bucket_reso there).
  explicit BucketPlanner(const BucketSettings& settings);

  // The bucket for an image of width x height (both > 0). Throws Error when the image is too small for
  // any bucket (bucket_no_upscale with a side shorter than bucket_reso_steps).
  BucketFit fit(int width, int height) const;

  // The predefined bucket list (empty with bucket_no_upscale, where buckets follow the images).
  const std::vector<Resolution>& predefined() const { return predefined_; }

 private:
  BucketSettings settings_;
  std::vector<Resolution> predefined_;
};

// Crop offsets for one draw: centre when !random, else uniform integers in [0, overflow] per axis (x first,
// then y, as kohya's trim_and_resize_if_required draws them).
void crop_offset(const BucketFit& fit, bool random, DataRng& rng, int& left, int& top);

}  // namespace fluxtrain::data
