#include "train/dataset_source.h"

#include <ATen/ATen.h>

#include <set>

#include "core/error.h"
#include "core/log.h"
#include "models/convert.h"

namespace fluxtrain::train {

DatasetSource::DatasetSource(std::shared_ptr<const data::DatasetPlan> plan, EncoderFiles files,
                             DatasetSourceOptions options)
    : plan_(std::move(plan)), files_(std::move(files)), options_(std::move(options)) {
  latents_ = std::make_unique<LatentCache>(options_.cache_dir, model_identity(files_.ae, options_.cache_dir));
  std::string text_identity =
      model_identity(files_.clip_l, options_.cache_dir) + "+" + model_identity(files_.t5xxl, options_.cache_dir);
  text_ = std::make_unique<TextCache>(options_.cache_dir, text_identity, options_.text);
}

DatasetSource::~DatasetSource() = default;

int64_t DatasetSource::batches_per_epoch() const {
  return plan_->steps_per_epoch();
}

int64_t DatasetSource::images_per_epoch() const {
  return plan_->train_samples() + plan_->reg_samples();
}

PreparedImage DatasetSource::prepared(const data::DatasetPlan& plan, const data::PlannedSample& sample) {
  const data::DatasetImage& image = plan.images().at(static_cast<size_t>(sample.image));
  const auto& subset =
      plan.config().datasets.at(static_cast<size_t>(image.dataset)).subsets.at(static_cast<size_t>(image.subset));
  PreparedImage p;
  p.path = image.path.string();
  p.bucket_width = image.fit.bucket.width;
  p.bucket_height = image.fit.bucket.height;
  p.resize_width = image.fit.resized.width;
  p.resize_height = image.fit.resized.height;
  p.crop_left = sample.crop_left;
  p.crop_top = sample.crop_top;
  p.flip = sample.flipped;
  // A mask picture wins over the alpha (kohya's precedence).
  p.mask_path = image.mask.string();
  p.alpha_mask = subset.alpha_mask && p.mask_path.empty();
  return p;
}

sample::TextEncoders& DatasetSource::encoders() {
  if (!encoders_) {
    encoders_ = std::make_unique<sample::TextEncoders>(files_.clip_l, files_.t5xxl, options_.encoders, options_.text);
  }
  return *encoders_;
}

std::string DatasetSource::prepare(int shard, int shards, const data::DatasetPlan* also) {
  std::vector<const data::DatasetPlan*> plans = {plan_.get()};
  if (also) plans.push_back(also);
  // Latents: every image at its centre crop, and mirrored too where flip_aug can pick that.
  std::vector<PreparedImage> images;
  for (const data::DatasetPlan* plan : plans) {
    for (size_t i = 0; i < plan->images().size(); ++i) {
      const data::DatasetImage& image = plan->images()[i];
      if (image.num_repeats <= 0) continue;
      const auto& subset =
          plan->config().datasets.at(static_cast<size_t>(image.dataset)).subsets.at(static_cast<size_t>(image.subset));
      data::PlannedSample s;
      s.image = static_cast<int>(i);
      s.crop_left = image.fit.crop_left;
      s.crop_top = image.fit.crop_top;
      images.push_back(prepared(*plan, s));
      if (subset.flip_aug) {
        s.flipped = true;
        images.push_back(prepared(*plan, s));
      }
    }
  }
  auto mine = [&](auto& items) {
    if (shards <= 1) return;
    std::remove_reference_t<decltype(items)> kept;
    for (size_t i = static_cast<size_t>(shard); i < items.size(); i += static_cast<size_t>(shards)) kept.push_back(items[i]);
    items = std::move(kept);
  };
  mine(images);
  CacheStats latent_stats = latents_->ensure(images, files_.ae, options_.encoders, options_.encode_batch_size);
  // Text: the captions of the first epoch (all of them when nothing is random; the first epoch's draws
  // otherwise; later draws are encoded when they come).
  std::vector<std::string> captions;
  for (const data::DatasetPlan* plan : plans) {
    for (const auto& batch : plan->epoch(options_.seed, 0)) {
      for (const auto& sample : batch.samples) captions.push_back(sample.caption);
    }
  }
  if (shards > 1) {
    std::set<std::string> seen;
    std::vector<std::string> unique;
    for (auto& c : captions)
      if (seen.insert(c).second) unique.push_back(std::move(c));
    captions = std::move(unique);
    mine(captions);
  }
  CacheStats text_stats;
  if (options_.cache_text) {
    text_stats = text_->ensure(
        captions, [this]() -> sample::TextEncoders& { return encoders(); }, options_.encode_batch_size);
  }
  encoders_.reset();  // freed before training; reloaded only if a random caption variant needs it
  return cat("latent cache: ", latent_stats.reused, " reused, ", latent_stats.computed, " encoded",
             latent_stats.corrupt ? cat(" (", latent_stats.corrupt, " unreadable entries recomputed)") : std::string(),
             options_.cache_text ? cat("; text cache: ", text_stats.reused, " reused, ", text_stats.computed, " encoded",
                                       text_stats.corrupt ? cat(" (", text_stats.corrupt, " unreadable entries recomputed)")
                                                          : std::string())
                                 : std::string("; text cache off (the text encoders train: each step encodes its captions)"),
             " (", options_.cache_dir.string(), ")");
}

LatentBatch DatasetSource::batch(int64_t epoch, int64_t index) {
  data::PlannedBatch planned = plan_->batch(options_.seed, epoch, index);
  LatentBatch out;
  if (options_.world_size > 1) {
    // This rank's contiguous share of the global batch: rows [n*rank/world, n*(rank+1)/world).
    const int64_t n = static_cast<int64_t>(planned.samples.size());
    const int64_t lo = n * options_.rank / options_.world_size, hi = n * (options_.rank + 1) / options_.world_size;
    const data::PlannedSample first = planned.samples.front();
    planned.samples.assign(planned.samples.begin() + lo, planned.samples.begin() + hi);
    out.global_rows = n;
    out.first_row = lo;
    if (planned.samples.empty()) {
      // No rows here: the shape of the global batch's latents, from its first image.
      const PreparedImage p = prepared(first);
      const int64_t channels =
          std::filesystem::exists(latents_->entry(p)) ? latents_->load(p).first.size(0) : models::AeConfig{}.z_channels;
      out.global_shape = {n, channels, p.bucket_height / 8, p.bucket_width / 8};
      return out;
    }
  }
  std::vector<at::Tensor> latents, masks, t5, t5_masks, pooled;
  bool any_mask = false;
  for (const data::PlannedSample& sample : planned.samples) {
    PreparedImage p = prepared(sample);
    if (std::filesystem::exists(latents_->entry(p))) {
      auto [l, m] = latents_->load(p);
      latents.push_back(l);
      masks.push_back(m);
    } else {
      // A per-epoch variant (random crop): encoded now, with the AE kept for the next ones.
      if (!ae_.model) ae_ = models::load_ae(files_.ae, options_.encoders);
      at::NoGradGuard no_grad;
      PreparedPixels px = prepare_pixels(p);
      latents.push_back(ae_.model->encode(px.pixels.unsqueeze(0).to(options_.encoders.device, options_.encoders.dtype))
                            .squeeze(0)
                            .to(at::kFloat)
                            .cpu());
      masks.push_back(px.alpha.defined()
                          ? at::avg_pool2d(px.alpha.unsqueeze(0).unsqueeze(0), {8, 8}).squeeze(0).squeeze(0)
                          : at::Tensor());
    }
    any_mask = any_mask || masks.back().defined();
    out.captions.push_back(sample.caption);
    if (!options_.cache_text) continue;
    sample::TextEmbeddings e;
    if (std::filesystem::exists(text_->entry(sample.caption))) {
      e = text_->load(sample.caption);
    } else {
      sample::TextEmbeddings fresh = encoders().encode({sample.caption});
      e = {fresh.t5[0].cpu(), fresh.t5_mask[0].cpu(), fresh.clip_pooled[0].cpu()};
    }
    t5.push_back(e.t5.to(at::kFloat));
    t5_masks.push_back(e.t5_mask);
    pooled.push_back(e.clip_pooled.to(at::kFloat));
  }
  out.latents = at::stack(latents);
  if (out.global_rows > 0) {
    out.global_shape = out.latents.sizes().vec();
    out.global_shape[0] = out.global_rows;
  }
  if (options_.cache_text) {
    out.t5 = at::stack(t5);
    out.t5_mask = at::stack(t5_masks);
    out.clip_pooled = at::stack(pooled);
  }
  if (any_mask) {
    for (size_t i = 0; i < masks.size(); ++i) {
      if (!masks[i].defined()) masks[i] = at::ones({latents[i].size(1), latents[i].size(2)});
    }
    out.loss_mask = at::stack(masks);
  }
  return out;
}

}  // namespace fluxtrain::train
