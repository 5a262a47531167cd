#include "train/cache.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "data/bucket_image.h"
#include "data/image.h"
#include "models/convert.h"

namespace fluxtrain::train {
namespace fs = std::filesystem;
namespace {

constexpr int kLatentFormat = 1;  // bump when the latent entries' content or layout changes
constexpr int kTextFormat = 1;

std::string file_key(const fs::path& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  auto time = fs::last_write_time(path, ec).time_since_epoch().count();
  return cat(fs::absolute(path).string(), "|", size, "|", time);
}

// Reads a cache entry; a missing entry gives an empty map, an unreadable one a warning and an empty map.
std::map<std::string, at::Tensor> read_entry(const fs::path& path) {
  std::map<std::string, at::Tensor> out;
  std::error_code ec;
  if (!fs::exists(path, ec)) return out;
  try {
    safetensors::Reader reader(path.string());
    for (const auto& info : reader.header().tensors) out[info.name] = reader.tensor(info).clone();
  } catch (const std::exception& e) {
    log::warn("cache entry ", path.string(), " is unreadable (", e.what(), ")");
    out.clear();
  }
  return out;
}

// What an entry must hold: a tensor name and its shape (-1: any size in that dimension).
using EntryLayout = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// Whether an entry can be used, from its header alone: the header parse checks that the file is exactly
// as long as the tensors it describes (so a truncated, cut or overwritten entry fails), and the tensors
// must be there with the expected shapes. The data is read only when a batch uses the entry. A missing
// entry is not valid; an unreadable one is also warned about and counted.
bool valid_entry(const fs::path& path, const EntryLayout& layout, CacheStats& stats) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  std::string problem;
  try {
    safetensors::Header header = safetensors::read_header(path.string());
    for (const auto& [name, shape] : layout) {
      const safetensors::TensorInfo* info = header.find(name);
      bool fits = info != nullptr && info->shape.size() == shape.size();
      for (size_t i = 0; fits && i < shape.size(); ++i) fits = shape[i] < 0 || shape[i] == info->shape[i];
      if (!fits) {
        problem = cat("tensor '", name, "' is ", info ? c10::IntArrayRef(info->shape) : c10::IntArrayRef(),
                      info ? "" : " (missing)", ", expected ", c10::IntArrayRef(shape), " (-1: any size)");
        break;
      }
    }
  } catch (const std::exception& e) {
    problem = e.what();
  }
  if (problem.empty()) return true;
  log::warn("cache entry ", path.string(), " is unreadable and is recomputed (", problem, ")");
  ++stats.corrupt;
  return false;
}

}  // namespace

std::string model_identity(const fs::path& model, const fs::path& cache_dir) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<fs::path> files;
  if (fs::is_directory(model)) {
    for (const auto& entry : fs::recursive_directory_iterator(model)) {
      if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(model);
  }
  fs::create_directories(cache_dir);
  fs::path memo_path = cache_dir / "hashes.json";
  nlohmann::json memo = nlohmann::json::object();
  if (std::ifstream in(memo_path); in) {
    try {
      std::stringstream text;
      text << in.rdbuf();
      check_json_depth(text.str(), memo_path.string());
      memo = nlohmann::json::parse(text.str());
    } catch (const std::exception&) {
      memo = nlohmann::json::object();
    }
  }
  bool changed = false;
  Sha256 all;
  for (const fs::path& file : files) {
    std::string key = file_key(file);
    if (!memo.contains(key)) {
      log::info("hashing ", file.string(), " (once; remembered in ", memo_path.string(), ")");
      memo[key] = sha256_file_hex(file);
      changed = true;
    }
    all.update(memo[key].get<std::string>());
  }
  if (changed) write_file_atomic(memo_path.string(), memo.dump(1) + "\n");
  return files.size() == 1 ? memo[file_key(files[0])].get<std::string>() : all.hex_digest();
}

PreparedPixels prepare_pixels(const PreparedImage& p) {
  // The same functions draw the crop previews of `fluxtrain dataset --lint` (data/bucket_image.h).
  const data::BucketCrop crop{{p.bucket_width, p.bucket_height}, {p.resize_width, p.resize_height}, p.crop_left,
                              p.crop_top};
  data::Image image = data::bucket_pixels(p.path, crop, p.flip, p.alpha_mask);
  at::Tensor hwc = at::from_blob(image.pixels.data(), {image.height, image.width, image.channels}, at::kByte);
  at::Tensor chw = hwc.permute({2, 0, 1}).to(at::kFloat);
  PreparedPixels out;
  out.pixels = (chw.slice(0, 0, 3) / 127.5 - 1.0).contiguous();
  if (!p.mask_path.empty()) {
    // A mask picture (conditioning_data_dir, the image's size) takes the image's crop; its red channel is the
    // mask, as kohya reads it.
    data::Image mask = data::bucket_pixels(p.mask_path, crop, p.flip, false);
    at::Tensor m = at::from_blob(mask.pixels.data(), {mask.height, mask.width, mask.channels}, at::kByte);
    out.alpha = (m.select(2, 0).to(at::kFloat) / 255.0).contiguous();
  } else if (p.alpha_mask) {
    out.alpha = (chw[3] / 255.0).contiguous();
  }
  return out;
}

LatentCache::LatentCache(fs::path cache_dir, std::string ae_identity)
    : dir_(std::move(cache_dir)), ae_identity_(std::move(ae_identity)) {}

std::string LatentCache::content_hash(const std::string& path) const {
  auto it = content_hashes_.find(path);
  if (it != content_hashes_.end()) return it->second;
  return content_hashes_[path] = sha256_file_hex(path);
}

fs::path LatentCache::entry(const PreparedImage& p) const {
  std::string key = cat("latents v", kLatentFormat, "|", content_hash(p.path), "|", ae_identity_, "|", p.bucket_width,
                        "x", p.bucket_height, "|", p.resize_width, "x", p.resize_height, "|", p.crop_left, ",",
                        p.crop_top, "|", p.flip, "|", p.alpha_mask,
                        p.mask_path.empty() ? std::string() : "|mask " + content_hash(p.mask_path));
  return dir_ / "latents" / (sha256_hex(key) + ".safetensors");
}

CacheStats LatentCache::ensure(const std::vector<PreparedImage>& images, const std::string& ae_path,
                               const models::ModelOptions& options, int batch_size) {
  CacheStats stats;
  // Missing entries grouped by bucket, so a batch has one pixel size.
  std::map<std::pair<int, int>, std::vector<const PreparedImage*>> missing;
  for (const PreparedImage& p : images) {
    const int64_t h = p.bucket_height / 8, w = p.bucket_width / 8;
    EntryLayout layout = {{"latents", {-1, h, w}}};
    if (p.has_mask()) layout.push_back({"mask", {h, w}});
    if (valid_entry(entry(p), layout, stats)) {
      ++stats.reused;
    } else {
      missing[{p.bucket_width, p.bucket_height}].push_back(&p);
    }
  }
  if (missing.empty()) return stats;
  fs::create_directories(dir_ / "latents");
  models::LoadedAe ae = models::load_ae(ae_path, options);
  at::NoGradGuard no_grad;
  const int64_t batch = std::max(1, batch_size);
  for (const auto& [bucket, list] : missing) {
    for (size_t start = 0; start < list.size(); start += static_cast<size_t>(batch)) {
      // Each entry is written whole (atomic file) before the next batch: a stop leaves a valid, partly
      // filled cache that a restart completes.
      stop::check("cache filling");
      size_t end = std::min(list.size(), start + static_cast<size_t>(batch));
      std::vector<at::Tensor> pixels, alphas;
      for (size_t i = start; i < end; ++i) {
        PreparedPixels prepared = prepare_pixels(*list[i]);
        pixels.push_back(prepared.pixels);
        alphas.push_back(prepared.alpha);
      }
      at::Tensor x = at::stack(pixels).to(options.device, options.dtype);
      at::Tensor latents = ae.model->encode(x).to(at::kFloat).cpu();
      for (size_t i = start; i < end; ++i) {
        const PreparedImage& p = *list[i];
        std::vector<std::pair<std::string, at::Tensor>> tensors = {
            {"latents", latents[static_cast<int64_t>(i - start)].contiguous()}};
        if (p.has_mask()) {
          // The loss weight per latent pixel: the alpha averaged over its 8x8 patch.
          at::Tensor a = alphas[i - start].unsqueeze(0).unsqueeze(0);
          tensors.emplace_back("mask", at::avg_pool2d(a, {8, 8}).squeeze(0).squeeze(0).contiguous());
        }
        safetensors::write(entry(p).string(), tensors, {{"fluxtrain.source", p.path}});
        ++stats.computed;
      }
    }
  }
  return stats;
}

std::pair<at::Tensor, at::Tensor> LatentCache::load(const PreparedImage& p) const {
  fs::path path = entry(p);
  auto tensors = read_entry(path);
  if (!tensors.count("latents")) {
    fail(path.string(), ": the latent cache entry of ", p.path,
         " is missing or unreadable; run `fluxtrain cache` or the "
         "training again to recompute it");
  }
  return {tensors["latents"], p.has_mask() ? tensors["mask"] : at::Tensor()};
}

TextCache::TextCache(fs::path cache_dir, std::string encoders_identity, sample::TextEncoderOptions options)
    : dir_(std::move(cache_dir)), identity_(std::move(encoders_identity)), options_(options) {}

fs::path TextCache::entry(const std::string& caption) const {
  std::string key =
      cat("text v", kTextFormat, "|", identity_, "|", options_.t5_max_length, "|", options_.t5_attn_mask, "|", caption);
  return dir_ / "text" / (sha256_hex(key) + ".safetensors");
}

CacheStats TextCache::ensure(const std::vector<std::string>& captions,
                             const std::function<sample::TextEncoders&()>& make_encoders, int batch_size) {
  CacheStats stats;
  std::vector<std::string> missing;
  std::set<std::string> seen;
  for (const std::string& caption : captions) {
    if (!seen.insert(caption).second) continue;
    const int64_t length = options_.t5_max_length;
    if (valid_entry(entry(caption), {{"t5", {length, -1}}, {"t5_mask", {length}}, {"clip_pooled", {-1}}}, stats)) {
      ++stats.reused;
    } else {
      missing.push_back(caption);
    }
  }
  if (missing.empty()) return stats;
  fs::create_directories(dir_ / "text");
  sample::TextEncoders& encoders = make_encoders();
  const size_t batch = static_cast<size_t>(std::max(1, batch_size));
  for (size_t start = 0; start < missing.size(); start += batch) {
    stop::check("cache filling");
    std::vector<std::string> chunk(
        missing.begin() + static_cast<std::ptrdiff_t>(start),
        missing.begin() + static_cast<std::ptrdiff_t>(std::min(missing.size(), start + batch)));
    sample::TextEmbeddings e = encoders.encode(chunk);
    for (size_t i = 0; i < chunk.size(); ++i) {
      auto row = static_cast<int64_t>(i);
      safetensors::write(entry(chunk[i]).string(),
                         {{"t5", e.t5[row].cpu().contiguous()},  // the encoders' dtype (bf16 on GPUs: 4 MB per caption)
                          {"t5_mask", e.t5_mask[row].cpu().contiguous()},
                          {"clip_pooled", e.clip_pooled[row].cpu().contiguous()}},
                         {{"fluxtrain.caption", chunk[i]}});
      ++stats.computed;
    }
  }
  return stats;
}

sample::TextEmbeddings TextCache::load(const std::string& caption) const {
  fs::path path = entry(caption);
  auto tensors = read_entry(path);
  if (!tensors.count("t5") || !tensors.count("clip_pooled")) {
    fail(path.string(), ": the text cache entry of caption '", caption.substr(0, 60),
         "' is missing or unreadable; "
         "run `fluxtrain cache` or the training again to recompute it");
  }
  return {tensors["t5"], tensors["t5_mask"], tensors["clip_pooled"]};
}

}  // namespace fluxtrain::train
