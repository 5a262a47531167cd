// `fluxtrain dataset --config FILE | --dir FOLDER [...]`: the resolved dataset plan (torch-free): datasets
// and subsets with every resolved value and where it came from, the bucket list, images per bucket, steps
// per epoch and skipped files; optionally one epoch's batches.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include "app/commands.h"
#include "app/tool_options.h"
#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "data/lint.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"

namespace fluxtrain::app {
namespace {

nlohmann::ordered_json resolution_json(data::Resolution r) {
  return {r.width, r.height};
}

nlohmann::ordered_json origin_json(const std::map<std::string, std::string>& origin) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& [k, v] : origin) out[k] = v;
  return out;
}

nlohmann::ordered_json subset_json(const data::SubsetConfig& s, const data::SubsetStats& stats) {
  nlohmann::ordered_json j;
  j["image_dir"] = s.image_dir.string();
  j["num_repeats"] = s.num_repeats;
  j["caption_extension"] = s.caption_extension;
  j["class_tokens"] = s.class_tokens;
  j["default_caption"] = s.default_caption;
  j["recursive"] = s.recursive;
  j["shuffle_caption"] = s.captions.shuffle_caption;
  j["caption_separator"] = s.captions.caption_separator;
  j["keep_tokens"] = s.captions.keep_tokens;
  j["keep_tokens_separator"] = s.captions.keep_tokens_separator;
  j["secondary_separator"] = s.captions.secondary_separator;
  j["caption_prefix"] = s.captions.caption_prefix;
  j["caption_suffix"] = s.captions.caption_suffix;
  j["caption_dropout_rate"] = s.captions.caption_dropout_rate;
  j["caption_dropout_every_n_epochs"] = s.captions.caption_dropout_every_n_epochs;
  j["caption_tag_dropout_rate"] = s.captions.caption_tag_dropout_rate;
  j["flip_aug"] = s.flip_aug;
  j["random_crop"] = s.random_crop;
  j["is_reg"] = s.is_reg;
  j["alpha_mask"] = s.alpha_mask;
  if (!s.conditioning_data_dir.empty()) j["conditioning_data_dir"] = s.conditioning_data_dir.string();
  j["image_count"] = stats.images;
  j["missing_captions"] = stats.missing_captions;
  j["skipped"] = stats.skipped;
  j["label_files"] = stats.label_files;
  j["annotation_images"] = stats.annotation_images;
  j["origin"] = origin_json(s.origin);
  return j;
}

nlohmann::ordered_json plan_json(const data::DatasetPlan& plan, const DatasetCommandSettings& options) {
  nlohmann::ordered_json out;
  out["source"] = plan.config().source;
  out["seed"] = options.seed;
  nlohmann::ordered_json datasets = nlohmann::ordered_json::array();
  for (size_t d = 0; d < plan.config().datasets.size(); ++d) {
    const data::DatasetConfig& ds = plan.config().datasets[d];
    const data::BucketSettings& b = ds.buckets;
    nlohmann::ordered_json j;
    j["batch_size"] = ds.batch_size;
    j["resolution"] = resolution_json(b.resolution);
    j["enable_bucket"] = b.enable_bucket;
    j["min_bucket_reso"] = b.min_bucket_reso;
    j["max_bucket_reso"] = b.max_bucket_reso;
    j["bucket_reso_steps"] = b.bucket_reso_steps;
    j["bucket_no_upscale"] = b.bucket_no_upscale;
    j["origin"] = origin_json(ds.origin);
    nlohmann::ordered_json predefined = nlohmann::ordered_json::array();
    const data::BucketPlanner planner(b);
    for (const data::Resolution& r : planner.predefined()) predefined.push_back(resolution_json(r));
    j["bucket_resolutions"] = predefined;
    nlohmann::ordered_json subsets = nlohmann::ordered_json::array();
    for (size_t s = 0; s < ds.subsets.size(); ++s)
      subsets.push_back(subset_json(ds.subsets[s], plan.subset_stats()[d][s]));
    j["subsets"] = subsets;
    nlohmann::ordered_json buckets = nlohmann::ordered_json::array();
    int64_t steps = 0;
    for (const data::PlanBucket& bucket : plan.buckets()) {
      if (bucket.dataset != static_cast<int>(d)) continue;
      buckets.push_back({{"resolution", resolution_json(bucket.resolution)},
                         {"images", bucket.images.size()},
                         {"samples", bucket.samples},
                         {"batches", bucket.batches}});
      steps += bucket.batches;
    }
    j["buckets"] = buckets;
    j["steps_per_epoch"] = steps;
    datasets.push_back(j);
  }
  out["datasets"] = datasets;
  nlohmann::ordered_json images = nlohmann::ordered_json::array();
  for (const data::DatasetImage& image : plan.images()) {
    images.push_back({{"path", image.path.string()},
                      {"dataset", image.dataset},
                      {"subset", image.subset},
                      {"size", resolution_json(image.size)},
                      {"bucket", resolution_json(image.fit.bucket)},
                      {"resized", resolution_json(image.fit.resized)},
                      {"crop", {image.fit.crop_left, image.fit.crop_top}},
                      {"caption", image.caption},
                      {"caption_from_file", image.caption_from_file},
                      {"num_repeats", image.num_repeats},
                      {"is_reg", image.is_reg}});
    if (!image.mask.empty()) images.back()["mask"] = image.mask.string();
  }
  out["images"] = images;
  nlohmann::ordered_json skipped = nlohmann::ordered_json::array();
  for (const data::SkippedImage& s : plan.skipped())
    skipped.push_back({{"path", s.path.string()}, {"reason", s.reason}});
  out["skipped"] = skipped;
  out["train_samples"] = plan.train_samples();
  out["reg_samples"] = plan.reg_samples();
  out["steps_per_epoch"] = plan.steps_per_epoch();
  out["captionless_images"] = plan.captionless_images();
  out["label_files_ignored"] = plan.label_files_ignored();
  out["summary"] = plan.summary();
  if (options.show_epoch > 0) {
    nlohmann::ordered_json batches = nlohmann::ordered_json::array();
    for (const data::PlannedBatch& batch : plan.epoch(options.seed, options.show_epoch - 1)) {
      nlohmann::ordered_json samples = nlohmann::ordered_json::array();
      for (const data::PlannedSample& s : batch.samples) {
        samples.push_back({{"image", s.image},
                           {"repeat", s.repeat},
                           {"flipped", s.flipped},
                           {"crop", {s.crop_left, s.crop_top}},
                           {"caption", s.caption}});
      }
      batches.push_back({{"bucket", resolution_json(plan.buckets()[batch.bucket].resolution)},
                         {"dataset", plan.buckets()[batch.bucket].dataset},
                         {"samples", samples}});
    }
    out["epoch"] = options.show_epoch;
    out["epoch_plan"] = batches;
  }
  return out;
}

std::string quoted(const std::string& s) {
  return "\"" + s + "\"";
}

void print_text(const data::DatasetPlan& plan, const DatasetCommandSettings& options) {
  std::cout << "source           " << plan.config().source << "\n";
  for (size_t d = 0; d < plan.config().datasets.size(); ++d) {
    const data::DatasetConfig& ds = plan.config().datasets[d];
    const data::BucketSettings& b = ds.buckets;
    auto o = [&](const char* key) {
      auto it = ds.origin.find(key);
      return it == ds.origin.end() ? std::string() : "  (" + it->second + ")";
    };
    std::cout << "\ndataset " << d + 1 << "\n"
              << "  batch_size         " << ds.batch_size << o("batch_size") << "\n"
              << "  resolution         " << data::to_string(b.resolution) << o("resolution") << "\n"
              << "  enable_bucket      " << (b.enable_bucket ? "true" : "false") << o("enable_bucket") << "\n";
    if (b.enable_bucket) {
      std::cout << "  min_bucket_reso    " << b.min_bucket_reso << o("min_bucket_reso") << "\n"
                << "  max_bucket_reso    " << b.max_bucket_reso << o("max_bucket_reso") << "\n"
                << "  bucket_reso_steps  " << b.bucket_reso_steps << o("bucket_reso_steps") << "\n"
                << "  bucket_no_upscale  " << (b.bucket_no_upscale ? "true" : "false") << o("bucket_no_upscale")
                << "\n";
      const data::BucketPlanner planner(b);
      const auto& predefined = planner.predefined();
      if (!predefined.empty()) {
        std::cout << "  bucket list        " << predefined.size() << ":";
        for (size_t i = 0; i < predefined.size(); ++i) {
          std::cout << (i % 8 == 0 ? "\n    " : " ") << data::to_string(predefined[i]);
        }
        std::cout << "\n";
      }
    }
    for (size_t s = 0; s < ds.subsets.size(); ++s) {
      const data::SubsetConfig& sub = ds.subsets[s];
      const data::SubsetStats& st = plan.subset_stats()[d][s];
      nlohmann::ordered_json j = subset_json(sub, st);
      std::cout << "  subset " << s + 1 << ": " << sub.image_dir.string() << "  (" << st.images << " images, "
                << st.skipped << " skipped, " << st.missing_captions << " without caption, " << st.label_files
                << " label files ignored)\n";
      for (const auto& [key, value] : j.items()) {
        if (key == "image_dir" || key == "origin" || key == "image_count" || key == "missing_captions" ||
            key == "skipped" || key == "label_files" || key == "annotation_images") {
          continue;
        }
        auto it = sub.origin.find(key);
        std::printf("    %-31s %s%s\n", key.c_str(), value.dump().c_str(),
                    it == sub.origin.end() ? "" : ("  (" + it->second + ")").c_str());
      }
    }
    std::cout << "  buckets (images / with repeats / batches):\n";
    for (const data::PlanBucket& bucket : plan.buckets()) {
      if (bucket.dataset != static_cast<int>(d)) continue;
      std::printf("    %-11s %7zu %9lld %8lld\n", data::to_string(bucket.resolution).c_str(), bucket.images.size(),
                  static_cast<long long>(bucket.samples), static_cast<long long>(bucket.batches));
    }
  }
  std::cout << "\nsteps per epoch  " << plan.steps_per_epoch() << "  (" << plan.train_samples() << " training samples";
  if (plan.reg_samples() > 0) std::cout << " + " << plan.reg_samples() << " regularisation";
  std::cout << " per epoch)\n" << plan.summary() << "\n";
  if (options.show_epoch > 0) {
    std::cout << "\nepoch " << options.show_epoch << " (seed " << options.seed << "):\n";
    const auto batches = plan.epoch(options.seed, options.show_epoch - 1);
    for (size_t i = 0; i < batches.size(); ++i) {
      std::cout << "  step " << i << "  " << data::to_string(plan.buckets()[batches[i].bucket].resolution) << "\n";
      for (const data::PlannedSample& s : batches[i].samples) {
        std::cout << "    " << plan.images()[s.image].path.filename().string() << (s.flipped ? " flipped" : "")
                  << " crop " << s.crop_left << "," << s.crop_top << "  " << quoted(s.caption) << "\n";
      }
    }
  }
}

nlohmann::ordered_json lint_json(const data::DatasetPlan& plan, const data::LintReport& lint) {
  nlohmann::ordered_json j;
  j["summary"] = lint.summary();
  nlohmann::ordered_json findings = nlohmann::ordered_json::array();
  for (const data::LintFinding& f : lint.findings) {
    findings.push_back(
        {{"path", f.path.string()}, {"name", data::lint_name(plan, f.path)}, {"kind", f.kind}, {"message", f.message}});
  }
  j["findings"] = findings;
  j["preview_dir"] = lint.preview_dir.string();
  j["sheets"] = lint.sheets;
  j["crops"] = lint.crops_json;
  return j;
}

// "lint: <kind>: <file>: <message>" per finding, then the summary and where the previews are.
void print_lint(const data::DatasetPlan& plan, const data::LintReport& lint) {
  std::cout << "\n";
  for (const data::LintFinding& f : lint.findings)
    std::cout << "lint: " << f.kind << ": " << data::lint_name(plan, f.path) << ": " << f.message << "\n";
  std::cout << lint.summary() << "\n";
  if (!lint.sheets.empty()) {
    std::cout << "crop previews: " << lint.sheets.size() << " sheet" << (lint.sheets.size() == 1 ? "" : "s")
              << " in " << lint.preview_dir.string() << " (each image scaled for its bucket, outside the crop "
              << "dimmed, the crop outlined: red = centre crop, yellow = random_crop's centre); crops.json lists "
              << "every crop box\n";
  }
}

int run_dataset(const DatasetCommandSettings& options) {
  data::ConfigOptions config_options;
  config_options.fallbacks = options.fallbacks;
  data::DatasetGroupConfig config = options.config.empty()
                                        ? data::folder_dataset_config(options.dir, config_options, options.reg_dir)
                                        : data::load_dataset_config(options.config, config_options);
  data::ScanOptions scan;
  scan.probe = data::default_image_probe();
  const data::DatasetPlan plan = data::DatasetPlan::build(std::move(config), scan);
  std::optional<data::LintReport> lint;
  if (options.lint) {
    const ClipTokenizer clip = ClipTokenizer::from_assets();
    const T5Tokenizer t5 = T5Tokenizer::from_assets();
    data::LintOptions lint_options;
    lint_options.clip = &clip;
    lint_options.t5 = &t5;
    lint_options.t5_max_length = options.lint_t5_max_length;
    lint_options.near_duplicate_bits = options.lint_near_duplicate_bits;
    lint_options.tile = options.lint_tile;
    lint_options.preview_dir = options.lint_out;
    lint = data::lint_dataset(plan, lint_options);
  }
  if (options.json) {
    nlohmann::ordered_json out = plan_json(plan, options);
    if (lint) out["lint"] = lint_json(plan, *lint);
    std::cout << out.dump(2) << "\n";
  } else {
    print_text(plan, options);
    if (lint) print_lint(plan, *lint);
  }
  if (lint && options.lint_strict && !lint->findings.empty()) {
    log::error("--lint-strict: ", lint->summary().substr(6), "; fix them, or drop --lint-strict to go on anyway");
    return 1;
  }
  return 0;
}

}  // namespace

Command add_dataset_command(CLI::App& app) {
  return add_table_command(app, command_info("dataset"), [](const ResolvedConfig& config) {
    return run_dataset(config.bind<DatasetCommandSettings>());
  });
}

}  // namespace fluxtrain::app
