#include "data/dataset.h"
#include "data/image.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/strings.h"
#include "data/captions.h"
#include "data/label_files.h"
#include "data/mask_images.h"
#include "data/rng.h"

namespace fluxtrain::data {

namespace {

// Purpose tags of the random streams (DataRng::derive keys), so that no two purposes share a stream.
constexpr uint64_t kTagBucketShuffle = 0x6275636b;  // "buck"
constexpr uint64_t kTagBatchOrder = 0x6f726472;     // "ordr"
constexpr uint64_t kTagSample = 0x736d706c;         // "smpl"
constexpr uint64_t kTagValidation = 0x76616c69;     // "vali"

// What a subset's folder holds: its images, and the label files (data/label_files.h) that are no image's
// caption file (those are classified when the caption is read).
struct FolderListing {
  std::vector<std::filesystem::path> images;
  std::vector<std::pair<std::filesystem::path, LabelKind>> labels;
  std::vector<std::filesystem::path> annotation_images;  // in labels/, masks/, annotations/: not used
};

bool in_annotation_folder(const std::filesystem::path& relative) {
  for (auto it = relative.begin(); it != relative.end() && std::next(it) != relative.end(); ++it) {
    if (is_annotation_folder(*it)) return true;
  }
  return false;
}

// The first megabyte of a file ("" when it cannot be read: it is then not recognised as a label file).
std::string file_head(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string out(static_cast<size_t>(kMaxCaptionFileBytes), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

FolderListing list_folder(const std::filesystem::path& dir, bool recursive, const std::string& caption_extension) {
  FolderListing out;
  std::vector<std::filesystem::path> others;
  auto visit = [&](const std::filesystem::directory_entry& entry) {
    const std::string name = entry.path().filename().string();
    std::error_code file_ec;
    // Hidden files (".DS_Store", macOS "._x.jpg" forks) are left out, as kohya's glob does.
    if (name.empty() || name[0] == '.' || !entry.is_regular_file(file_ec)) return;
    if (!has_image_extension(entry.path())) {
      others.push_back(entry.path());
    } else if (recursive && in_annotation_folder(entry.path().lexically_relative(dir))) {
      out.annotation_images.push_back(entry.path());
    } else {
      out.images.push_back(entry.path());
    }
  };
  std::error_code ec;
  if (recursive) {
    std::filesystem::recursive_directory_iterator it(dir, ec), end;
    if (ec) fail("cannot list image folder ", dir.string(), ": ", ec.message());
    for (; it != end; it.increment(ec)) {
      if (ec) fail("cannot list a sub-folder of ", dir.string(), ": ", ec.message());
      std::error_code dir_ec;
      const std::string name = it->path().filename().string();
      if (it->is_directory(dir_ec)) {
        if (name.empty() || name[0] == '.') it.disable_recursion_pending();
        continue;
      }
      visit(*it);
    }
  } else {
    std::filesystem::directory_iterator it(dir, ec);
    if (ec) fail("cannot list image folder ", dir.string(), ": ", ec.message());
    for (const auto& entry : it) visit(entry);
  }
  // Byte order of the UTF-8 paths below `dir` (= code point order, as kohya's sorted() of str paths).
  auto by_relative = [&](const auto& a, const auto& b) {
    return a.lexically_relative(dir).generic_string() < b.lexically_relative(dir).generic_string();
  };
  std::sort(out.images.begin(), out.images.end(), by_relative);
  std::sort(out.annotation_images.begin(), out.annotation_images.end(), by_relative);
  std::sort(others.begin(), others.end(), by_relative);
  std::set<std::filesystem::path> captions;
  for (const auto& image : out.images) {
    std::filesystem::path caption = image;
    caption.replace_extension();
    caption += caption_extension;
    captions.insert(caption);
  }
  for (const auto& path : others) {
    if (captions.count(path) != 0) continue;  // an image's caption file: read (and classified) with its image
    const std::filesystem::path relative = path.lexically_relative(dir);
    LabelKind kind = label_kind_by_name(relative);
    const std::string ext = lower(path.extension().string());
    if (kind == LabelKind::none && (ext == ".txt" || ext == ".json"))
      kind = classify_label_file(relative, file_head(path));
    if (kind != LabelKind::none) out.labels.emplace_back(path, kind);
  }
  return out;
}

std::string list_some(const std::vector<std::string>& items, size_t shown) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < shown; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > shown) out += cat(" and ", items.size() - shown, " more");
  return out;
}

}  // namespace

std::vector<std::filesystem::path> held_out_images(const std::vector<std::filesystem::path>& files,
                                                   const SubsetConfig& subset, uint64_t run_seed) {
  const size_t n = files.size();
  if (subset.is_reg || subset.validation_split <= 0 || n == 0) return {};
  size_t k = n;
  if (subset.validation_split < 1) {
    if (n < 2) return {};
    k = std::clamp<size_t>(static_cast<size_t>(std::llround(static_cast<double>(n) * subset.validation_split)), 1, n - 1);
  }
  const uint64_t seed = subset.validation_seed >= 0 ? static_cast<uint64_t>(subset.validation_seed) : run_seed;
  std::vector<std::pair<uint64_t, std::filesystem::path>> ranked;
  for (const auto& file : files) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the relative path
    for (unsigned char c : file.lexically_relative(subset.image_dir).generic_string()) h = (h ^ c) * 0x100000001b3ull;
    ranked.emplace_back(DataRng::derive({seed, kTagValidation, h}).next(), file);
  }
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::filesystem::path> out;
  for (size_t i = 0; i < k; ++i) out.push_back(ranked[i].second);
  std::sort(out.begin(), out.end());
  return out;
}

DatasetPlan DatasetPlan::build(DatasetGroupConfig config, const ScanOptions& options) {
  if (!options.probe) fail("the dataset scan needs an image probe (internal error: ScanOptions::probe is empty)");
  DatasetPlan plan;
  plan.config_ = std::move(config);
  const bool validation = options.part == DatasetPart::validation;
  if (validation) {
    // Every held-out image once, as it is: the same batches and captions at every validation.
    for (DatasetConfig& d : plan.config_.datasets) {
      for (SubsetConfig& s : d.subsets) {
        s.num_repeats = 1;
        s.flip_aug = false;
        s.random_crop = false;
        s.captions.shuffle_caption = false;
        s.captions.caption_dropout_rate = 0;
        s.captions.caption_dropout_every_n_epochs = 0;
        s.captions.caption_tag_dropout_rate = 0;
      }
    }
  }
  std::vector<std::string> folders;

  for (size_t d = 0; d < plan.config_.datasets.size(); ++d) {
    const DatasetConfig& dataset = plan.config_.datasets[d];
    const BucketPlanner planner(dataset.buckets);
    plan.stats_.emplace_back(dataset.subsets.size());
    for (size_t s = 0; s < dataset.subsets.size(); ++s) {
      const SubsetConfig& subset = dataset.subsets[s];
      SubsetStats& stats = plan.stats_[d][s];
      folders.push_back(subset.image_dir.string());
      std::vector<std::string> missing, multiline, other_extension, labels, no_mask, mask_size;
      const FolderListing listing = list_folder(subset.image_dir, subset.recursive, subset.caption_extension);
      const std::vector<std::filesystem::path> held_out = held_out_images(listing.images, subset, options.seed);
      std::vector<std::filesystem::path> files;
      for (const auto& file : listing.images) {
        if (std::binary_search(held_out.begin(), held_out.end(), file) == validation) files.push_back(file);
      }
      if (validation && files.empty()) continue;
      if (!held_out.empty() && !validation) {
        log::info(held_out.size(), " of ", listing.images.size(), " images of ", subset.image_dir.string(),
                  " are held out for the validation loss (validation_split ", subset.validation_split, ")");
      }
      std::set<std::filesystem::path> label_paths;
      auto shown = [&](const std::filesystem::path& p) {
        return p.lexically_relative(subset.image_dir).generic_string();
      };
      for (const auto& [path, kind] : listing.labels) {
        labels.push_back(cat(shown(path), " (", describe(kind), ")"));
        label_paths.insert(path);
      }
      const std::string& fallback_caption = subset.class_tokens.empty() ? subset.default_caption : subset.class_tokens;
      for (const auto& path : files) {
        DatasetImage image;
        image.path = path;
        image.dataset = static_cast<int>(d);
        image.subset = static_cast<int>(s);
        image.num_repeats = subset.num_repeats;
        image.is_reg = subset.is_reg;
        try {
          image.size = options.probe(path);
          if (image.size.width <= 0 || image.size.height <= 0) {
            fail("size ", image.size.width, "x", image.size.height, " is not usable");
          }
          image.fit = planner.fit(image.size.width, image.size.height);
        } catch (const Error& e) {
          // The probe's messages usually start with the path; keep the reason alone.
          std::string reason = e.what();
          const std::string prefix = path.string() + ": ";
          if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
          log::warn("skipped ", path.string(), ": ", reason);
          plan.skipped_.push_back({path, reason});
          ++stats.skipped;
          continue;
        }
        const CaptionFile caption = read_caption_file(path, subset.caption_extension);
        if (caption.found) {
          image.caption = caption.text;
          image.caption_from_file = true;
          if (caption.multiline) multiline.push_back(caption.path.filename().string());
        } else {
          image.caption = fallback_caption;
          if (caption.label != LabelKind::none) {
            image.caption_label = caption.label;
            image.label_file = caption.path;
            labels.push_back(cat(shown(caption.path), " (", describe(caption.label), ")"));
            ++stats.label_captions;
          }
          missing.push_back(shown(path) + (caption.empty                      ? " (empty caption file)"
                                           : caption.label != LabelKind::none ? " (its caption file holds labels)"
                                                                              : ""));
          if (subset.caption_extension != ".txt") {
            std::filesystem::path txt = path;
            txt.replace_extension(".txt");
            std::error_code ec;
            if (std::filesystem::is_regular_file(txt, ec) && label_paths.count(txt) == 0) {
              other_extension.push_back(txt.filename().string());
            }
          }
        }
        if (!subset.conditioning_data_dir.empty()) {
          image.mask = find_mask_image(subset.conditioning_data_dir, subset.image_dir, path);
          if (image.mask.empty()) {
            no_mask.push_back(shown(path));
          } else if (const Resolution m = options.probe(image.mask); m != image.size) {
            mask_size.push_back(cat(shown(path), " ", to_string(image.size), ", its mask ", to_string(m)));
          }
        }
        plan.images_.push_back(std::move(image));
        ++stats.images;
      }
      if (!no_mask.empty() || !mask_size.empty()) {
        const bool absent = !no_mask.empty();
        const std::vector<std::string>& list = absent ? no_mask : mask_size;
        std::string shown_list;
        for (size_t i = 0; i < list.size() && i < 3; ++i) shown_list += (i ? ", " : "") + list[i];
        fail(subset.image_dir.string(), ": ", list.size(), " images ",
             absent ? "have no mask picture in " : "have a mask picture of another size in ",
             subset.conditioning_data_dir.string(), " (conditioning_data_dir), e.g. ", shown_list,
             absent ? "; masked_loss needs one per image, with the image's name (any image extension)"
                    : "; a mask picture must have its image's size");
      }
      stats.missing_captions = static_cast<int>(missing.size());
      stats.label_files = static_cast<int>(labels.size());
      stats.annotation_images = static_cast<int>(listing.annotation_images.size());
      if (validation) continue;  // the training scan said it all
      const std::string dir = subset.image_dir.string();
      if (files.empty() && held_out.empty()) {
        log::warn("no image files (.jpg .jpeg .png .webp .bmp) in ", dir,
                  subset.recursive ? " or its sub-folders" : " (sub-folders are not read: set recursive = true)");
      }
      if (!listing.annotation_images.empty()) {
        std::vector<std::string> names;
        for (const auto& p : listing.annotation_images) names.push_back(shown(p));
        log::warn(names.size(), " images in labels/, masks/ or annotations/ folders of ", dir,
                  " are annotations, not training images, and are left out: ", list_some(names, 3));
      }
      if (!labels.empty()) {
        log::warn(
            labels.size(), " label files in ", dir,
            " are not captions (YOLO numbers, class lists, COCO annotations) and are ignored: ", list_some(labels, 5));
      }
      if (!missing.empty()) {
        log::warn(missing.size(), " of ", stats.images, " images in ", dir, " have no caption (",
                  subset.caption_extension, "); ",
                  fallback_caption.empty()
                      ? std::string("they train with an empty caption: set class_tokens or default_caption "
                                    "(PARAMS_DEFAULT_CAPTION) to give them one")
                      : cat("they use the ", subset.class_tokens.empty() ? "default caption" : "class tokens", " \"",
                            fallback_caption, "\""),
                  ": ", list_some(missing, 5));
      }
      if (!other_extension.empty()) {
        log::warn(other_extension.size(), " image(s) in ", dir,
                  " have a .txt caption beside them but captions are read from ", subset.caption_extension,
                  " files (kohya's default is .caption): set caption_extension = \".txt\"");
      }
      if (!multiline.empty()) {
        log::warn(multiline.size(), " caption files in ", dir,
                  " have more than one line; only the first line is used (as kohya does): ", list_some(multiline, 3));
      }
    }
  }

  // kohya's DreamBoothDataset: regularisation images are repeated, round-robin, until they are as many as
  // the dataset's training images (with repeats); the first pass takes each image with its own repeats.
  for (size_t d = 0; d < plan.config_.datasets.size(); ++d) {
    int64_t train = 0, reg_total = 0;
    std::vector<DatasetImage*> reg;
    for (DatasetImage& image : plan.images_) {
      if (image.dataset != static_cast<int>(d)) continue;
      if (image.is_reg) {
        reg.push_back(&image);
        reg_total += image.num_repeats;
      } else {
        train += image.num_repeats;
      }
    }
    if (reg.empty()) continue;
    if (train < reg_total) {
      log::warn("dataset #", d + 1, ": ", reg_total, " regularisation samples for ", train,
                " training samples: some regularisation images are not used (as in kohya)");
    }
    std::vector<int> repeats(reg.size(), 0);
    int64_t n = 0;
    bool first_pass = true;
    while (n < train) {
      for (size_t i = 0; i < reg.size(); ++i) {
        if (first_pass) {
          repeats[i] = reg[i]->num_repeats;
          n += repeats[i];
        } else {
          repeats[i] += 1;
          n += 1;
        }
        if (n >= train) break;
      }
      first_pass = false;
    }
    for (size_t i = 0; i < reg.size(); ++i) reg[i]->num_repeats = repeats[i];
  }

  for (const DatasetImage& image : plan.images_) {
    (image.is_reg ? plan.reg_samples_ : plan.train_samples_) += image.num_repeats;
  }
  if (plan.train_samples_ == 0 && !validation) {
    fail("no usable training image in ", list_some(folders, 10),
         plan.skipped_.empty() ? "" : cat(" (", plan.skipped_.size(), " files skipped as unreadable)"),
         ": the folders need .jpg, .jpeg, .png, .webp or .bmp files",
         plan.reg_samples_ > 0 ||
                 std::any_of(plan.images_.begin(), plan.images_.end(), [](const DatasetImage& i) { return i.is_reg; })
             ? " (regularisation images alone cannot train)"
             : "");
  }

  // Buckets per dataset, sorted by resolution (kohya's BucketManager.sort).
  std::map<std::pair<int, Resolution>, std::vector<int>> by_bucket;
  for (size_t i = 0; i < plan.images_.size(); ++i) {
    const DatasetImage& image = plan.images_[i];
    if (image.num_repeats > 0) by_bucket[{image.dataset, image.fit.bucket}].push_back(static_cast<int>(i));
  }
  for (auto& [key, indices] : by_bucket) {
    PlanBucket bucket;
    bucket.dataset = key.first;
    bucket.resolution = key.second;
    bucket.images = std::move(indices);
    for (int i : bucket.images) bucket.samples += plan.images_[i].num_repeats;
    // batch_size = auto unresolved (`fluxtrain dataset`, which plans no memory): batches of one image.
    const int64_t batch_size = std::max(1, plan.config_.datasets[bucket.dataset].batch_size);
    bucket.batches = (bucket.samples + batch_size - 1) / batch_size;
    plan.steps_per_epoch_ += bucket.batches;
    plan.buckets_.push_back(std::move(bucket));
  }
  if (!validation) log::info(plan.summary());
  return plan;
}

std::vector<PlannedBatch> DatasetPlan::epoch_order(uint64_t seed, int64_t epoch) const {
  if (epoch < 0) fail("epoch ", epoch, " is negative");
  std::vector<PlannedBatch> batches;
  batches.reserve(static_cast<size_t>(steps_per_epoch_));
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const PlanBucket& bucket = buckets_[b];
    std::vector<PlannedSample> samples;
    samples.reserve(static_cast<size_t>(bucket.samples));
    for (int image : bucket.images) {
      for (int r = 0; r < images_[image].num_repeats; ++r) {
        PlannedSample sample;
        sample.image = image;
        sample.repeat = r;
        samples.push_back(std::move(sample));
      }
    }
    DataRng::derive({seed, kTagBucketShuffle, static_cast<uint64_t>(epoch), b}).shuffle(samples);
    const size_t batch_size = static_cast<size_t>(std::max(1, config_.datasets[bucket.dataset].batch_size));
    for (size_t start = 0; start < samples.size(); start += batch_size) {
      PlannedBatch batch;
      batch.bucket = static_cast<int>(b);
      const size_t end = std::min(samples.size(), start + batch_size);
      batch.samples.assign(std::make_move_iterator(samples.begin() + static_cast<std::ptrdiff_t>(start)),
                           std::make_move_iterator(samples.begin() + static_cast<std::ptrdiff_t>(end)));
      batches.push_back(std::move(batch));
    }
  }
  DataRng::derive({seed, kTagBatchOrder, static_cast<uint64_t>(epoch)}).shuffle(batches);
  return batches;
}

void DatasetPlan::realise(PlannedSample& sample, uint64_t seed, int64_t epoch) const {
  const DatasetImage& image = images_[sample.image];
  const SubsetConfig& subset = config_.datasets[image.dataset].subsets[image.subset];
  DataRng rng = DataRng::derive({seed, kTagSample, static_cast<uint64_t>(epoch), static_cast<uint64_t>(sample.image),
                                 static_cast<uint64_t>(sample.repeat)});
  // kohya's order: flip, crop, caption.
  sample.flipped = subset.flip_aug && rng.uniform() < 0.5;
  crop_offset(image.fit, subset.random_crop, rng, sample.crop_left, sample.crop_top);
  sample.caption = process_caption(subset.captions, image.caption, epoch, rng);
}

std::vector<PlannedBatch> DatasetPlan::epoch(uint64_t seed, int64_t epoch) const {
  std::vector<PlannedBatch> batches = epoch_order(seed, epoch);
  for (PlannedBatch& batch : batches) {
    for (PlannedSample& sample : batch.samples) realise(sample, seed, epoch);
  }
  return batches;
}

PlannedBatch DatasetPlan::batch(uint64_t seed, int64_t epoch, int64_t step) const {
  if (step < 0 || step >= steps_per_epoch_) {
    fail("step ", step, " is outside the epoch (", steps_per_epoch_, " steps per epoch: 0 to ", steps_per_epoch_ - 1,
         ")");
  }
  std::vector<PlannedBatch> batches = epoch_order(seed, epoch);
  PlannedBatch out = std::move(batches[static_cast<size_t>(step)]);
  for (PlannedSample& sample : out.samples) realise(sample, seed, epoch);
  return out;
}

std::string DatasetPlan::summary() const {
  int reg = 0;
  for (const DatasetImage& image : images_) reg += image.is_reg ? 1 : 0;
  std::string out = cat("loaded ", images_.size(), " images");
  if (reg > 0) out += cat(" (", reg, " regularisation)");
  const int captionless = captionless_images(), labels = label_files_ignored();
  if (captionless > 0) out += cat(", ", captionless, " without a caption");
  if (labels > 0) out += cat(", ", labels, " label files ignored (not captions)");
  if (skipped_.empty()) {
    out += ", skipped none";
  } else {
    std::vector<std::string> items;
    for (const SkippedImage& s : skipped_) items.push_back(cat(s.path.filename().string(), " (", s.reason, ")"));
    out += cat(", skipped ", skipped_.size(), ": ", list_some(items, 5));
  }
  return out;
}

int DatasetPlan::captionless_images() const {
  int n = 0;
  for (const auto& dataset : stats_) {
    for (const SubsetStats& s : dataset) n += s.missing_captions;
  }
  return n;
}

int DatasetPlan::label_files_ignored() const {
  int n = 0;
  for (const auto& dataset : stats_) {
    for (const SubsetStats& s : dataset) n += s.label_files;
  }
  return n;
}

ImageProbe default_image_probe() {
  return [](const std::filesystem::path& path) {
    const ImageInfo info = probe_image(path);
    return Resolution{info.width, info.height};
  };
}

}  // namespace fluxtrain::data
