#include "data/buckets.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "data/rng.h"

namespace fluxtrain::data {

std::string to_string(Resolution r) {
  return cat(r.width, "x", r.height);
}

namespace {

// Python's float `a // b` for a >= 0, b > 0: floor of the exact quotient (CPython float_floor_div), which
// floor(a / b) is not when a / b rounds up to an integer.
double python_floor_div(double a, double b) {
  const double mod = std::fmod(a, b);
  const double div = (a - mod) / b;
  double result = std::floor(div);
  if (div - result > 0.5) result += 1.0;
  return result;
}

}  // namespace

std::vector<Resolution> make_bucket_resolutions(Resolution max_reso, int min_size, int max_size, int step) {
  if (step <= 0 || min_size <= 0 || max_reso.width <= 0 || max_reso.height <= 0) {
    fail("bucket resolutions need positive sizes and step (got resolution ", to_string(max_reso), ", min ", min_size,
         ", step ", step, ")");
  }
  const int64_t area = int64_t{max_reso.width} * max_reso.height;
  std::set<Resolution> resos;
  // kohya: int(math.sqrt(max_area) // divisible) * divisible (float sqrt, then Python's float floor division).
  const int side = static_cast<int>(python_floor_div(std::sqrt(static_cast<double>(area)), step)) * step;
  resos.insert({side, side});
  for (int width = min_size; width <= max_size; width += step) {
    // kohya: min(max_size, int((max_area // width) // divisible) * divisible), all integer divisions.
    const int64_t height = std::min<int64_t>(max_size, (area / width) / step * step);
    if (height >= min_size) {
      resos.insert({width, static_cast<int>(height)});
      resos.insert({static_cast<int>(height), width});
    }
  }
  return {resos.begin(), resos.end()};
}

BucketPlanner::BucketPlanner(const BucketSettings& settings) : settings_(settings) {
  if (!settings.enable_bucket) {
    predefined_ = {settings.resolution};
  } else if (!settings.bucket_no_upscale) {
    predefined_ = make_bucket_resolutions(settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso,
                                          settings.bucket_reso_steps);
  }
}

namespace {

// kohya's BucketManager.round_to_steps: round half up to an integer, then down to a multiple of step.
int round_to_steps(double x, int step) {
  const int v = static_cast<int>(x + 0.5);
  return v - v % step;
}

}  // namespace

BucketFit BucketPlanner::fit(int width, int height) const {
  if (width <= 0 || height <= 0) fail("image size ", width, "x", height, " is not positive");
  const double aspect = static_cast<double>(width) / height;
  BucketFit out;
  const bool no_upscale = settings_.enable_bucket && settings_.bucket_no_upscale;
  if (!no_upscale) {
    // An exact size match wins; otherwise the smallest |bucket ar - image ar|, the first in sorted order on a
    // tie (numpy argmin).
    Resolution reso{width, height};
    if (std::find(predefined_.begin(), predefined_.end(), reso) == predefined_.end()) {
      size_t best = 0;
      double best_error = 0;
      for (size_t i = 0; i < predefined_.size(); ++i) {
        const double error = std::abs(static_cast<double>(predefined_[i].width) / predefined_[i].height - aspect);
        if (i == 0 || error < best_error) {
          best = i;
          best_error = error;
        }
      }
      reso = predefined_[best];
    }
    const double reso_aspect = static_cast<double>(reso.width) / reso.height;
    // Cover the bucket: a wider image matches the bucket's height, otherwise its width.
    const double scale =
        aspect > reso_aspect ? static_cast<double>(reso.height) / height : static_cast<double>(reso.width) / width;
    out.bucket = reso;
    out.resized = {static_cast<int>(width * scale + 0.5), static_cast<int>(height * scale + 0.5)};
  } else {
    const int step = settings_.bucket_reso_steps;
    const double max_area = static_cast<double>(settings_.resolution.width) * settings_.resolution.height;
    if (static_cast<double>(width) * height > max_area) {
      // Shrink to the resolution's area, keeping the aspect ratio; round either the width or the height to
      // the step, whichever keeps the aspect ratio closer.
      const double resized_width = std::sqrt(max_area * aspect);
      const double resized_height = max_area / resized_width;
      const int width_rounded = round_to_steps(resized_width, step);
      const int height_in_wr = round_to_steps(width_rounded / aspect, step);
      const int height_rounded = round_to_steps(resized_height, step);
      const int width_in_hr = round_to_steps(height_rounded * aspect, step);
      // kohya divides by these without a guard (ZeroDivisionError for extreme aspect ratios); a zero side
      // simply loses the comparison here.
      const double error_w =
          height_in_wr > 0 ? std::abs(static_cast<double>(width_rounded) / height_in_wr - aspect) : INFINITY;
      const double error_h =
          height_rounded > 0 ? std::abs(static_cast<double>(width_in_hr) / height_rounded - aspect) : INFINITY;
      if (error_w < error_h) {
        out.resized = {width_rounded, static_cast<int>(width_rounded / aspect + 0.5)};
      } else {
        out.resized = {static_cast<int>(height_rounded * aspect + 0.5), height_rounded};
      }
    } else {
      out.resized = {width, height};
    }
    // The bucket is the resized size cut down to the step: crop, never pad.
    out.bucket = {out.resized.width - out.resized.width % step, out.resized.height - out.resized.height % step};
    if (out.bucket.width <= 0 || out.bucket.height <= 0) {
      fail("image of ", width, "x", height, " is too small for bucket_no_upscale with bucket_reso_steps = ", step,
           " (it would be resized to ", to_string(out.resized), " and cropped to ", to_string(out.bucket),
           "): remove it, or turn bucket_no_upscale off");
    }
  }
  out.crop_left = (out.resized.width - out.bucket.width) / 2;
  out.crop_top = (out.resized.height - out.bucket.height) / 2;
  out.aspect_error = static_cast<double>(out.bucket.width) / out.bucket.height - aspect;
  return out;
}

void crop_offset(const BucketFit& fit, bool random, DataRng& rng, int& left, int& top) {
  const int overflow_x = fit.resized.width - fit.bucket.width;
  const int overflow_y = fit.resized.height - fit.bucket.height;
  if (!random) {
    left = overflow_x / 2;
    top = overflow_y / 2;
    return;
  }
  left = overflow_x > 0 ? static_cast<int>(rng.between(0, overflow_x)) : 0;
  top = overflow_y > 0 ? static_cast<int>(rng.between(0, overflow_y)) : 0;
}

}  // namespace fluxtrain::data
