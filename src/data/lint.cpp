#include "data/lint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <thread>
#include <unordered_map>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/strings.h"
#include "data/bucket_image.h"
#include "data/label_files.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"

namespace fluxtrain::data {
namespace fs = std::filesystem;

namespace {

// An image scaled up by this much or more is reported: a few percent (1000 px for a 1024 bucket) is common
// and harmless, a fifth and more shows as softness.
constexpr double kUpscaleWarning = 1.2;

struct KindLabel {
  const char* kind;
  const char* one;
  const char* many;
};

// Report order.
const std::vector<KindLabel>& kind_labels() {
  static const std::vector<KindLabel> labels = {
      {"skipped", "skipped file", "skipped files"},
      {"unreadable", "unreadable image", "unreadable images"},
      {"duplicate", "exact duplicate", "exact duplicates"},
      {"near_duplicate", "near duplicate", "near duplicates"},
      {"upscaled", "upscaled image", "upscaled images"},
      {"aspect", "extreme aspect ratio", "extreme aspect ratios"},
      {"empty_caption", "empty caption", "empty captions"},
      {"label_caption", "label-like caption", "label-like captions"},
      {"clip_length", "caption over CLIP's 77 tokens", "captions over CLIP's 77 tokens"},
      {"t5_length", "caption over T5's limit", "captions over T5's limit"},
  };
  return labels;
}

size_t kind_index(const std::string& kind) {
  const auto& labels = kind_labels();
  for (size_t i = 0; i < labels.size(); ++i) {
    if (kind == labels[i].kind) return i;
  }
  fail("internal: unknown lint kind ", kind);
}

// A number as a caption word: digits with an optional sign, point and exponent (not "nan" or "inf").
bool number_word(const std::string& word, double& value, bool& integer) {
  if (word.empty()) return false;
  const char c = word[0];
  if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+')) return false;
  char* end = nullptr;
  value = std::strtod(word.c_str(), &end);
  if (end != word.c_str() + word.size() || !std::isfinite(value)) return false;
  integer = word.find_first_of(".eE") == std::string::npos;
  return true;
}

std::string fixed(double v, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, v);
  return buffer;
}

template <typename F>
void parallel_for(size_t n, int threads, F&& f) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) f(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads && static_cast<size_t>(t) < n; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

// What one decoded image gives.
struct Decoded {
  bool ok = false;
  std::string error;
  std::string sha256;
  HashedImage hash;
  Image thumb;  // the preview tile
  CropPreview preview;
};

void dim_outside_and_outline(Image& thumb, const int box[4], bool random_crop) {
  const int x0 = box[0], y0 = box[1], x1 = box[0] + box[2], y1 = box[1] + box[3];
  for (int y = 0; y < thumb.height; ++y) {
    for (int x = 0; x < thumb.width; ++x) {
      if (x >= x0 && x < x1 && y >= y0 && y < y1) continue;
      uint8_t* p = &thumb.pixels[(static_cast<size_t>(y) * thumb.width + x) * 3];
      for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>(p[c] * 90 / 256);
    }
  }
  // A 1-pixel line just outside the box (inside it the pixels stay the trainer's): red for the centre crop,
  // yellow for a subset with random_crop, whose crop moves within the dimmed margin each step.
  const uint8_t colour[3] = {255, static_cast<uint8_t>(random_crop ? 210 : 40), 40};
  auto put = [&](int x, int y) {
    if (x < 0 || y < 0 || x >= thumb.width || y >= thumb.height) return;
    std::copy(colour, colour + 3, &thumb.pixels[(static_cast<size_t>(y) * thumb.width + x) * 3]);
  };
  for (int x = x0 - 1; x <= x1; ++x) {
    put(x, y0 - 1);
    put(x, y1);
  }
  for (int y = y0 - 1; y <= y1; ++y) {
    put(x0 - 1, y);
    put(x1, y);
  }
}

void paste(Image& sheet, const Image& tile, int left, int top) {
  for (int y = 0; y < tile.height; ++y) {
    std::copy_n(&tile.pixels[static_cast<size_t>(y) * tile.width * 3], static_cast<size_t>(tile.width) * 3,
                &sheet.pixels[((static_cast<size_t>(top) + y) * sheet.width + left) * 3]);
  }
}

// The preview tile of one image: the trainer's scaled image (shrunk to the tile when larger) with everything
// outside the crop dimmed and the crop outlined; at scale 1 the box holds the trainer's crop itself.
void make_tile(const Image& decoded, const DatasetImage& image, bool random_crop, int tile, Decoded& out) {
  const BucketCrop crop{image.fit.bucket, image.fit.resized, image.fit.crop_left, image.fit.crop_top};
  const Image scaled = scale_for_bucket(decoded, crop);
  const int longer = std::max(crop.resized.width, crop.resized.height);
  const double s = longer > tile ? static_cast<double>(tile) / longer : 1.0;
  CropPreview& p = out.preview;
  p.scale = s;
  if (s == 1.0) {
    out.thumb = scaled;
    p.box[0] = crop.left;
    p.box[1] = crop.top;
    p.box[2] = crop.bucket.width;
    p.box[3] = crop.bucket.height;
  } else {
    const int w = std::max(1, static_cast<int>(crop.resized.width * s + 0.5));
    const int h = std::max(1, static_cast<int>(crop.resized.height * s + 0.5));
    out.thumb = resize_image(scaled, w, h);
    auto at = [&](int v, int limit) { return std::clamp(static_cast<int>(v * s + 0.5), 0, limit); };
    p.box[0] = at(crop.left, w);
    p.box[1] = at(crop.top, h);
    p.box[2] = std::max(1, at(crop.left + crop.bucket.width, w) - p.box[0]);
    p.box[3] = std::max(1, at(crop.top + crop.bucket.height, h) - p.box[1]);
  }
  dim_outside_and_outline(out.thumb, p.box, random_crop);
  if (s == 1.0) paste(out.thumb, cut_for_bucket(scaled, crop), crop.left, crop.top);
  p.tile[2] = out.thumb.width;
  p.tile[3] = out.thumb.height;
}

// Sheets of an earlier lint in the same folder go, so the folder shows this run only.
const std::regex& sheet_name_pattern() {
  static const std::regex pattern(R"((dataset\d+-)?bucket-\d+x\d+-\d+\.png)");
  return pattern;
}

void prepare_preview_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    fail("cannot make the crop preview folder ", dir.string(), ": ", ec ? ec.message() : "not a folder",
         "; name another with --lint-out");
  }
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, sheet_name_pattern())) fs::remove(entry.path(), ec);
  }
}

}  // namespace

const std::vector<LintKind>& lint_kinds() {
  static const std::vector<LintKind> kinds = [] {
    std::vector<LintKind> out;
    for (const auto& k : kind_labels()) out.push_back({k.kind, k.one});
    return out;
  }();
  return kinds;
}

std::string label_like_caption(std::string_view caption) {
  // The YOLO judgement is the scan's (data/label_files.h), so that lint and the scan never disagree on what
  // a YOLO line is.
  if (is_yolo_line(caption)) {
    return "looks like a YOLO label line (class x_center y_center width height), not a description";
  }
  bool any = false;
  std::string word;
  auto number = [&] {
    double v = 0;
    bool integer = false;
    const bool ok = word.empty() || number_word(word, v, integer);
    any = any || !word.empty();
    word.clear();
    return ok;
  };
  for (const char c : caption) {
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!number()) return "";
    } else {
      word += c;
    }
  }
  if (!number() || !any) return "";
  return "is only numbers, not a description";
}

HashedImage perceptual_hash(const Image& image) {
  Image rgb = image;
  if (rgb.channels == 4) {
    // Alpha as the decode composites it: onto white.
    Image out{rgb.width, rgb.height, 3, std::vector<uint8_t>(static_cast<size_t>(rgb.width) * rgb.height * 3)};
    for (size_t i = 0, n = static_cast<size_t>(rgb.width) * rgb.height; i < n; ++i) {
      const int a = rgb.pixels[i * 4 + 3];
      for (int c = 0; c < 3; ++c)
        out.pixels[i * 3 + c] = static_cast<uint8_t>((rgb.pixels[i * 4 + c] * a + 255 * (255 - a) + 127) / 255);
    }
    rgb = std::move(out);
  }
  const Image small = resize_image(rgb, 9, 8);
  HashedImage out;
  double luma[8][9];
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 9; ++x) {
      const uint8_t* p = &small.pixels[(static_cast<size_t>(y) * 9 + x) * 3];
      luma[y][x] = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      for (int c = 0; c < 3; ++c) out.mean[c] += p[c] / 72.0;
    }
  }
  for (int y = 0; y < 8; ++y) {
    for (int x = 0; x < 8; ++x) {
      if (luma[y][x] > luma[y][x + 1]) out.dhash |= uint64_t{1} << (8 * y + x);
    }
  }
  return out;
}

uint64_t difference_hash(const Image& image) {
  return perceptual_hash(image).dhash;
}

int hamming_distance(uint64_t a, uint64_t b) {
  return std::popcount(a ^ b);
}

std::string lint_name(const DatasetPlan& plan, const fs::path& path) {
  for (const auto& dataset : plan.config().datasets) {
    for (const auto& subset : dataset.subsets) {
      const fs::path relative = path.lexically_relative(subset.image_dir);
      if (!relative.empty() && *relative.begin() != "..") return relative.generic_string();
    }
  }
  return path.string();
}

std::string LintReport::summary() const {
  std::string out = cat("lint: ", images, " image", images == 1 ? "" : "s", ", ");
  if (findings.empty()) return out + "no findings";
  std::vector<size_t> counts(kind_labels().size(), 0);
  for (const auto& f : findings) ++counts[kind_index(f.kind)];
  std::vector<std::string> parts;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] > 0)
      parts.push_back(cat(counts[i], " ", counts[i] == 1 ? kind_labels()[i].one : kind_labels()[i].many));
  }
  return out + cat(findings.size(), " finding", findings.size() == 1 ? "" : "s", ": ", join(parts));
}

LintReport lint_dataset(const DatasetPlan& plan, const LintOptions& options) {
  LintReport report;
  const auto& images = plan.images();
  report.images = static_cast<int>(images.size() + plan.skipped().size());
  auto add = [&](const fs::path& path, const char* kind, std::string message) {
    report.findings.push_back({path, kind, std::move(message)});
  };
  for (const SkippedImage& s : plan.skipped()) add(s.path, "skipped", cat(s.reason, " (the scan skips it)"));

  // Sizes and aspect ratios, from the plan alone.
  for (size_t d = 0; d < plan.config().datasets.size(); ++d) {
    const BucketSettings& b = plan.config().datasets[d].buckets;
    if (b.enable_bucket && b.bucket_no_upscale) continue;  // buckets follow the images: nothing is scaled up
    const std::vector<Resolution> buckets =
        b.enable_bucket ? BucketPlanner(b).predefined() : std::vector<Resolution>{b.resolution};
    double lo = INFINITY, hi = 0;
    for (const Resolution& r : buckets) {
      lo = std::min(lo, static_cast<double>(r.width) / r.height);
      hi = std::max(hi, static_cast<double>(r.width) / r.height);
    }
    for (const DatasetImage& image : images) {
      if (image.dataset != static_cast<int>(d)) continue;
      const BucketFit& fit = image.fit;
      const double scale = std::max(static_cast<double>(fit.resized.width) / image.size.width,
                                    static_cast<double>(fit.resized.height) / image.size.height);
      if (scale >= kUpscaleWarning) {
        add(image.path, "upscaled",
            cat(to_string(image.size), " is scaled up ", fixed(scale, 2), "x to ", to_string(fit.resized), " for its ",
                to_string(fit.bucket), " bucket (it will look soft); use a larger original or a lower resolution"));
      }
      const double aspect = static_cast<double>(image.size.width) / image.size.height;
      const double kept = static_cast<double>(fit.bucket.width) * fit.bucket.height /
                          (static_cast<double>(fit.resized.width) * fit.resized.height);
      if ((aspect < lo * (1 - 1e-9) || aspect > hi * (1 + 1e-9)) && kept < 0.9) {
        add(image.path, "aspect",
            cat("aspect ratio ", fixed(aspect, 2), " (", to_string(image.size), ") is outside the buckets' range ",
                fixed(lo, 2), " to ", fixed(hi, 2), ": the crop to ", to_string(fit.bucket), " keeps ",
                static_cast<int>(kept * 100 + 0.5), "% of it"));
      }
    }
  }

  // Captions.
  std::unordered_map<std::string, std::pair<size_t, size_t>> token_counts;  // caption -> (CLIP, T5) ids
  for (const DatasetImage& image : images) {
    const SubsetConfig& subset = plan.config().datasets[image.dataset].subsets[image.subset];
    if (image.caption_label != LabelKind::none) {
      // The scan did not take the file as the caption, so the caption checks below do not see it.
      const std::string name = image.path.filename().string();
      add(image.label_file, "label_caption",
          cat("holds ", describe(image.caption_label), ", not a caption: ", name, " is captionless and ",
              !subset.class_tokens.empty()      ? cat("takes its class tokens \"", subset.class_tokens, "\"")
              : !subset.default_caption.empty() ? cat("takes the default caption \"", subset.default_caption, "\"")
                                                : std::string("trains on an empty caption (no class_tokens or "
                                                              "default_caption)")));
    }
    if (trim(image.caption).empty()) {
      const std::string why =
          image.caption_label != LabelKind::none
              ? cat("its caption file ", image.label_file.filename().string(), " holds ", describe(image.caption_label))
              : cat("no ", subset.caption_extension, " caption file, or an empty one");
      add(image.path, "empty_caption",
          cat("empty caption (", why, "; no class_tokens or default_caption): it trains without text; write a ",
              subset.caption_extension, " caption or set class_tokens or default_caption (PARAMS_DEFAULT_CAPTION)"));
      continue;
    }
    if (const std::string why = label_like_caption(image.caption); !why.empty()) {
      add(image.path, "label_caption",
          cat("caption \"", shorten(image.caption, 60), "\" ", why, "; is the ", subset.caption_extension,
              " file a label file?"));
    }
    if (!options.clip && !options.t5) continue;
    auto [it, fresh] = token_counts.try_emplace(image.caption, 0, 0);
    if (fresh) {
      if (options.clip) it->second.first = options.clip->encode_untruncated(image.caption).size();
      if (options.t5) it->second.second = options.t5->encode_untruncated(image.caption).size();
    }
    const auto [clip_ids, t5_ids] = it->second;
    if (options.clip && clip_ids > static_cast<size_t>(ClipTokenizer::kContextLength)) {
      add(image.path, "clip_length",
          cat("caption is ", clip_ids - 2, " CLIP tokens; CLIP-L reads ", ClipTokenizer::kContextLength - 2,
              " (77 ids with start and end), the last ", clip_ids - ClipTokenizer::kContextLength, " are cut"));
    }
    if (options.t5 && t5_ids > static_cast<size_t>(options.t5_max_length)) {
      add(image.path, "t5_length",
          cat("caption is ", t5_ids, " T5 tokens with </s>; T5 reads ", options.t5_max_length, ", the last ",
              t5_ids - options.t5_max_length, " are cut"));
    }
  }

  if (options.decode) {
    const int threads =
        options.threads > 0 ? options.threads : std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 8);
    const bool previews = !options.preview_dir.empty();
    if (previews) prepare_preview_dir(options.preview_dir);
    report.preview_dir = options.preview_dir;
    const bool several_datasets = plan.config().datasets.size() > 1;
    // Pages of up to 64 images per (dataset, bucket), in bucket order.
    std::map<std::pair<int, Resolution>, std::vector<int>> by_bucket;
    for (size_t i = 0; i < images.size(); ++i) by_bucket[{images[i].dataset, images[i].fit.bucket}].push_back(int(i));
    std::vector<std::string> sha(images.size());
    std::vector<HashedImage> hashes(images.size());
    std::vector<bool> decoded_ok(images.size(), false);
    constexpr size_t kPerSheet = 64;
    for (const auto& entry : by_bucket) {
      const auto& key = entry.first;
      const std::vector<int>& members = entry.second;  // a plain reference: lambdas below capture it (C++20
                                                       // structured bindings are not capturable in clang 14)
      for (size_t page = 0; page * kPerSheet < members.size(); ++page) {
        const size_t begin = page * kPerSheet, end = std::min(members.size(), begin + kPerSheet);
        std::vector<Decoded> work(end - begin);
        parallel_for(work.size(), threads, [&](size_t k) {
          const int index = members[begin + k];
          const DatasetImage& image = images[static_cast<size_t>(index)];
          Decoded& out = work[k];
          out.preview.image = index;
          try {
            const Image decoded = load_image(image.path);
            out.sha256 = sha256_file_hex(image.path);
            out.hash = perceptual_hash(decoded);
            if (previews) {
              const bool random_crop = plan.config().datasets[image.dataset].subsets[image.subset].random_crop;
              make_tile(decoded, image, random_crop, options.tile, out);
            }
            out.ok = true;
          } catch (const std::exception& e) {
            out.error = e.what();
          }
        });
        std::vector<Decoded*> tiles;
        for (Decoded& d : work) {
          const auto index = static_cast<size_t>(d.preview.image);
          if (!d.ok) {
            std::string reason = d.error;
            const std::string prefix = images[index].path.string() + ": ";
            if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
            add(images[index].path, "unreadable",
                cat(reason,
                    ": its header reads but its pixels do not, so caching its latents would stop the run; "
                    "re-export or remove it"));
            continue;
          }
          decoded_ok[index] = true;
          sha[index] = d.sha256;
          hashes[index] = d.hash;
          if (previews) tiles.push_back(&d);
        }
        if (tiles.empty()) continue;
        constexpr int kPad = 8;
        int cell_w = 0, cell_h = 0;
        for (const Decoded* d : tiles) {
          cell_w = std::max(cell_w, d->thumb.width + kPad);
          cell_h = std::max(cell_h, d->thumb.height + kPad);
        }
        const int columns = static_cast<int>(std::min<size_t>(tiles.size(), 8));
        const int rows = static_cast<int>((tiles.size() + columns - 1) / columns);
        Image sheet{columns * cell_w + kPad, rows * cell_h + kPad, 3, {}};
        sheet.pixels.assign(static_cast<size_t>(sheet.width) * sheet.height * 3, 40);
        const std::string name = cat(several_datasets ? cat("dataset", key.first + 1, "-") : std::string(), "bucket-",
                                     to_string(key.second), "-", page + 1, ".png");
        for (size_t t = 0; t < tiles.size(); ++t) {
          Decoded& d = *tiles[t];
          const int x = kPad + static_cast<int>(t % columns) * cell_w,
                    y = kPad + static_cast<int>(t / columns) * cell_h;
          paste(sheet, d.thumb, x, y);
          d.preview.sheet = name;
          d.preview.tile[0] = x;
          d.preview.tile[1] = y;
          d.preview.box[0] += x;
          d.preview.box[1] += y;
          report.previews.push_back(d.preview);
        }
        save_png(options.preview_dir / name, sheet,
                 {{"Comment", cat("fluxtrain dataset --lint: crop preview of bucket ", to_string(key.second))}});
        report.sheets.push_back(name);
      }
    }
    // Exact and near duplicates, each named against the first image (in plan order) it repeats.
    std::unordered_map<std::string, size_t> first_with_sha;
    std::vector<size_t> distinct;
    for (size_t i = 0; i < images.size(); ++i) {
      if (!decoded_ok[i]) continue;
      auto [it, fresh] = first_with_sha.try_emplace(sha[i], i);
      if (!fresh) {
        add(images[i].path, "duplicate",
            cat("exact copy of ", lint_name(plan, images[it->second].path),
                " (same SHA-256): it trains twice as often; remove one"));
        continue;
      }
      for (size_t j : distinct) {
        const int distance = hamming_distance(hashes[i].dhash, hashes[j].dhash);
        bool colour = true;
        for (int c = 0; c < 3; ++c)
          colour = colour && std::abs(hashes[i].mean[c] - hashes[j].mean[c]) <= options.near_duplicate_colour;
        if (distance <= options.near_duplicate_bits && colour) {
          add(images[i].path, "near_duplicate",
              cat("near duplicate of ", lint_name(plan, images[j].path), " (dHash distance ", distance,
                  " of 64 bits, threshold ", options.near_duplicate_bits, ")"));
          break;
        }
      }
      distinct.push_back(i);
    }
  }

  std::stable_sort(report.findings.begin(), report.findings.end(),
                   [](const LintFinding& a, const LintFinding& b) { return kind_index(a.kind) < kind_index(b.kind); });

  if (options.decode && !options.preview_dir.empty()) {
    nlohmann::ordered_json j;
    j["tile"] = options.tile;
    j["sheets"] = report.sheets;
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    std::vector<CropPreview> previews = report.previews;
    std::sort(previews.begin(), previews.end(),
              [](const CropPreview& a, const CropPreview& b) { return a.image < b.image; });
    for (const CropPreview& p : previews) {
      const DatasetImage& image = images[static_cast<size_t>(p.image)];
      const SubsetConfig& subset = plan.config().datasets[image.dataset].subsets[image.subset];
      list.push_back({{"path", image.path.string()},
                      {"name", lint_name(plan, image.path)},
                      {"dataset", image.dataset},
                      {"subset", image.subset},
                      {"size", {image.size.width, image.size.height}},
                      {"bucket", {image.fit.bucket.width, image.fit.bucket.height}},
                      {"resized", {image.fit.resized.width, image.fit.resized.height}},
                      {"crop", {image.fit.crop_left, image.fit.crop_top}},
                      {"random_crop", subset.random_crop},
                      {"flip_aug", subset.flip_aug},
                      {"sheet", p.sheet},
                      {"scale", p.scale},
                      {"tile", {p.tile[0], p.tile[1], p.tile[2], p.tile[3]}},
                      {"box", {p.box[0], p.box[1], p.box[2], p.box[3]}}});
    }
    j["images"] = list;
    nlohmann::ordered_json findings = nlohmann::ordered_json::array();
    for (const LintFinding& f : report.findings)
      findings.push_back({{"path", f.path.string()}, {"kind", f.kind}, {"message", f.message}});
    j["findings"] = findings;
    j["summary"] = report.summary();
    report.crops_json = (options.preview_dir / "crops.json").string();
    write_file_atomic(report.crops_json, j.dump(1) + "\n");
  }
  return report;
}

}  // namespace fluxtrain::data
