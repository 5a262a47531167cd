// Bucketing (src/data/buckets.h): the bucket list against the spec's formula and known lists, the fit of an
// image to its bucket (cover and centre crop, no upscale), and the random crop.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "data/buckets.h"
#include "data/rng.h"
#include "test_util.h"

using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;

namespace {

// The bucket list written out from the formula in the spec (shared/spec/training.md), independently of
// buckets.cpp: square floor(sqrt(A)/s)*s, then for each width, height = min(max, floor(A/w/s)*s).
std::set<Resolution> formula_buckets(int reso_w, int reso_h, int min_size, int max_size, int step) {
  const long area = long(reso_w) * reso_h;
  std::set<Resolution> out;
  const int square = int(std::sqrt(double(area)) / step) * step;
  out.insert({square, square});
  for (int w = min_size; w <= max_size; w += step) {
    int h = int(area / w / step) * step;
    if (h > max_size) h = max_size;
    if (h >= min_size) {
      out.insert({w, h});
      out.insert({h, w});
    }
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// buckets

TEST(Buckets, ListMatchesTheFormula) {
  struct Case {
    int w, h, min, max, step;
  };
  for (const Case& c : {Case{512, 512, 256, 1024, 64}, Case{1024, 1024, 256, 1024, 64}, Case{1024, 1024, 256, 2048, 64},
                        Case{1024, 1024, 256, 2048, 128}, Case{768, 768, 320, 1536, 32}, Case{1280, 768, 256, 2048, 64},
                        Case{1024, 1024, 512, 1536, 96}}) {
    const auto list = make_bucket_resolutions({c.w, c.h}, c.min, c.max, c.step);
    const auto expected = formula_buckets(c.w, c.h, c.min, c.max, c.step);
    EXPECT_EQ(std::set<Resolution>(list.begin(), list.end()), expected) << c.w << "x" << c.h << " step " << c.step;
    EXPECT_TRUE(std::is_sorted(list.begin(), list.end()));
    EXPECT_EQ(list.size(), expected.size()) << "duplicates in the list";
  }
}

TEST(Buckets, KnownListForSd512) {
  // Worked out by hand from the formula: A = 512^2, widths 256..1024 step 64.
  const auto list = make_bucket_resolutions({512, 512}, 256, 1024, 64);
  const std::vector<Resolution> expected = {{256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704}, {320, 768},
                                            {384, 640}, {448, 576}, {512, 512}, {576, 448},  {640, 384}, {704, 320},
                                            {768, 320}, {832, 256}, {896, 256}, {960, 256},  {1024, 256}};
  EXPECT_EQ(list, expected);
}

TEST(Buckets, Seed1280x768BucketAt1024Step128) {
  const auto list = make_bucket_resolutions({1024, 1024}, 256, 2048, 128);
  EXPECT_NE(std::find(list.begin(), list.end(), Resolution{1280, 768}), list.end());
  EXPECT_NE(std::find(list.begin(), list.end(), Resolution{768, 1280}), list.end());
  BucketSettings settings;
  settings.enable_bucket = true;
  settings.max_bucket_reso = 2048;
  settings.bucket_reso_steps = 128;
  const BucketFit fit = BucketPlanner(settings).fit(1280, 768);
  EXPECT_EQ(fit.bucket, (Resolution{1280, 768}));
  EXPECT_EQ(fit.resized, (Resolution{1280, 768}));
  EXPECT_EQ(fit.crop_left, 0);
  EXPECT_EQ(fit.crop_top, 0);
}

TEST(Buckets, CoverAndCentreCrop) {
  BucketSettings settings;
  settings.enable_bucket = true;
  settings.max_bucket_reso = 2048;
  const BucketPlanner planner(settings);
  // 1000x700 (ar 1.4286): nearest bucket 1216x832 (ar 1.4615, wider), so the width matches:
  // scale 1.216, height int(700 * 1.216 + 0.5) = 851, 19 rows cropped, 9 on top.
  BucketFit fit = planner.fit(1000, 700);
  EXPECT_EQ(fit.bucket, (Resolution{1216, 832}));
  EXPECT_EQ(fit.resized, (Resolution{1216, 851}));
  EXPECT_EQ(fit.crop_left, 0);
  EXPECT_EQ(fit.crop_top, 9);
  // A portrait 600x1000 (ar 0.6): bucket 768x1280 exactly 0.6; scale 1.28 both ways.
  fit = planner.fit(600, 1000);
  EXPECT_EQ(fit.bucket, (Resolution{768, 1280}));
  EXPECT_EQ(fit.resized, (Resolution{768, 1280}));
  // Every fit covers its bucket.
  for (int w = 100; w < 4000; w += 137) {
    for (int h = 100; h < 4000; h += 211) {
      const BucketFit f = planner.fit(w, h);
      EXPECT_GE(f.resized.width, f.bucket.width) << w << "x" << h;
      EXPECT_GE(f.resized.height, f.bucket.height) << w << "x" << h;
      EXPECT_TRUE(f.resized.width == f.bucket.width || f.resized.height == f.bucket.height) << w << "x" << h;
    }
  }
}

TEST(Buckets, FixedResolutionWithoutBuckets) {
  BucketSettings settings;  // enable_bucket false
  settings.resolution = {512, 512};
  const BucketFit fit = BucketPlanner(settings).fit(800, 600);
  EXPECT_EQ(fit.bucket, (Resolution{512, 512}));
  EXPECT_EQ(fit.resized, (Resolution{683, 512}));  // int(800 * 512/600 + 0.5)
  EXPECT_EQ(fit.crop_left, 85);
}

TEST(Buckets, NoUpscale) {
  BucketSettings settings;
  settings.enable_bucket = true;
  settings.bucket_no_upscale = true;
  const BucketPlanner planner(settings);
  EXPECT_TRUE(planner.predefined().empty());
  // Larger than the area: 3000x2000 (ar 1.5) shrinks to area 1024^2: width 1254.1 / height 836.1; rounding
  // the height (832, width 1216 -> ar 1.4615) beats rounding the width (1216x768, ar 1.583).
  BucketFit fit = planner.fit(3000, 2000);
  EXPECT_EQ(fit.resized, (Resolution{1248, 832}));
  EXPECT_EQ(fit.bucket, (Resolution{1216, 832}));
  EXPECT_EQ(fit.crop_left, 16);
  // Smaller: never upscaled, cropped down to the step.
  fit = planner.fit(500, 300);
  EXPECT_EQ(fit.resized, (Resolution{500, 300}));
  EXPECT_EQ(fit.bucket, (Resolution{448, 256}));
  EXPECT_EQ(fit.crop_left, 26);
  EXPECT_EQ(fit.crop_top, 22);
  expect_error([&] { planner.fit(40, 300); }, {"too small", "bucket_no_upscale"});
}

TEST(Buckets, RandomCropStaysInside) {
  BucketFit fit;
  fit.bucket = {512, 512};
  fit.resized = {700, 512};
  DataRng rng(7);
  std::set<int> lefts;
  for (int i = 0; i < 2000; ++i) {
    int left = -1, top = -1;
    crop_offset(fit, true, rng, left, top);
    EXPECT_GE(left, 0);
    EXPECT_LE(left, 188);
    EXPECT_EQ(top, 0);
    lefts.insert(left);
  }
  EXPECT_TRUE(lefts.count(0) && lefts.count(188)) << "both ends reachable";
  EXPECT_GT(lefts.size(), 150u);
}
