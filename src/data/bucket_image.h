// The pixels of one image at its bucket, as the trainer takes them (torch-free): the decode scaled to the
// bucket fit's covering size, then the bucket cut out at a crop offset, then mirrored when flipped. The latent
// cache (train/cache.cpp prepare_pixels) and the crop previews of `fluxtrain dataset --lint` (data/lint.cpp)
// both go through these functions, so a preview shows the very crop that is trained on.
#pragma once

#include <filesystem>

#include "data/buckets.h"
#include "data/image.h"

namespace fluxtrain::data {

// Where one image is cut: scaled to `resized`, then the `bucket` rectangle at (left, top) of that.
struct BucketCrop {
  Resolution bucket;
  Resolution resized;
  int left = 0;
  int top = 0;
};

// `decoded` scaled to crop.resized (unchanged when it already has that size).
Image scale_for_bucket(const Image& decoded, const BucketCrop& crop);
// The bucket rectangle of an image scale_for_bucket made (unchanged when it is the bucket's size).
Image cut_for_bucket(const Image& scaled, const BucketCrop& crop);
// load_image, scale_for_bucket, cut_for_bucket and a left-right mirror when `flip`.
Image bucket_pixels(const std::filesystem::path& path, const BucketCrop& crop, bool flip, bool keep_alpha);

}  // namespace fluxtrain::data
