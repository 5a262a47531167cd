#include "data/bucket_image.h"

namespace fluxtrain::data {

Image scale_for_bucket(const Image& decoded, const BucketCrop& crop) {
  if (decoded.width == crop.resized.width && decoded.height == crop.resized.height) return decoded;
  return resize_image(decoded, crop.resized.width, crop.resized.height);
}

Image cut_for_bucket(const Image& scaled, const BucketCrop& crop) {
  if (scaled.width == crop.bucket.width && scaled.height == crop.bucket.height) return scaled;
  return crop_image(scaled, crop.left, crop.top, crop.bucket.width, crop.bucket.height);
}

Image bucket_pixels(const std::filesystem::path& path, const BucketCrop& crop, bool flip, bool keep_alpha) {
  Image image = cut_for_bucket(scale_for_bucket(load_image(path, keep_alpha), crop), crop);
  return flip ? flip_horizontal(image) : image;
}

}  // namespace fluxtrain::data
