// Disk caches of what the frozen encoders make of the dataset (spec/training.md, DESIGN "Caches"):
//   latents/<key>.safetensors  AE latents of one prepared image ("latents" [16, h/8, w/8], fp32; "mask"
//                              [h/8, w/8] with alpha_mask or a mask picture), key = sha256(image bytes, AE
//                              identity, bucket, resize, crop, flip, alpha_mask, the mask picture's bytes,
//                              format version)
//   text/<key>.safetensors     "t5" [L, 4096], "t5_mask" [L], "clip_pooled" [768] of one caption, key =
//                              sha256(caption, CLIP and T5 identities, T5 length and mask setting)
// A model's identity is the SHA-256 of its file(s), remembered in hashes.json by path, size and mtime,
// so a 10 GB T5 is hashed once. Entries are reused across runs and recomputed when anything in the key
// changes; an unreadable entry is recomputed with a warning. Encoders run batched and are dropped
// before training starts.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "models/options.h"
#include "sample/text_encoding.h"

namespace fluxtrain::train {

// One image as the dataset plan prepares it for its bucket.
struct PreparedImage {
  std::string path;
  int bucket_width = 0, bucket_height = 0;  // final pixel size (multiple of 16)
  int resize_width = 0, resize_height = 0;  // scaled size before the crop
  int crop_left = 0, crop_top = 0;
  bool flip = false;
  bool alpha_mask = false;
  std::string mask_path;  // a mask picture (conditioning_data_dir): its red channel is the mask; wins over the alpha
  bool has_mask() const { return alpha_mask || !mask_path.empty(); }
};

// The SHA-256 of a model file (or of every .safetensors in a folder), memoized in `cache_dir`/hashes.json.
std::string model_identity(const std::filesystem::path& model, const std::filesystem::path& cache_dir);

// Pixels of a prepared image: [3, H, W] in [-1, 1] (and its mask [H, W] in [0, 1]: the alpha with alpha_mask,
// the red channel of its mask picture).
struct PreparedPixels {
  at::Tensor pixels;
  at::Tensor alpha;
};
PreparedPixels prepare_pixels(const PreparedImage& image);

struct CacheStats {
  int64_t reused = 0;
  int64_t computed = 0;
  int64_t corrupt = 0;  // unreadable entries that were recomputed
};

class LatentCache {
 public:
  LatentCache(std::filesystem::path cache_dir, std::string ae_identity);
  std::filesystem::path entry(const PreparedImage& image) const;
  // Encodes every image that has no valid entry, `batch_size` images of one bucket at a time, loading
  // the AE only if something is missing. Returns what was reused and computed.
  CacheStats ensure(const std::vector<PreparedImage>& images, const std::string& ae_path,
                    const models::ModelOptions& options, int batch_size);
  // "latents" [16, h, w] fp32 and "mask" [h, w] (undefined without alpha_mask).
  std::pair<at::Tensor, at::Tensor> load(const PreparedImage& image) const;

 private:
  std::filesystem::path dir_;
  std::string ae_identity_;
  mutable std::map<std::string, std::string> content_hashes_;
  std::string content_hash(const std::string& path) const;
};

class TextCache {
 public:
  TextCache(std::filesystem::path cache_dir, std::string encoders_identity, sample::TextEncoderOptions options);
  std::filesystem::path entry(const std::string& caption) const;
  // Encodes every caption without a valid entry; `make_encoders` is called only if one is missing.
  CacheStats ensure(const std::vector<std::string>& captions,
                    const std::function<sample::TextEncoders&()>& make_encoders, int batch_size);
  sample::TextEmbeddings load(const std::string& caption) const;  // [L, D], [L], [D] on the CPU

 private:
  std::filesystem::path dir_;
  std::string identity_;
  sample::TextEncoderOptions options_;
};

}  // namespace fluxtrain::train
