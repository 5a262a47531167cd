// The caption and hash rules of `fluxtrain dataset --lint` (data/lint.h); the report itself is tested end to
// end by tests/e2e/test_dataset_lint.py.
#include <gtest/gtest.h>

#include <bit>

#include "data/image.h"
#include "data/label_files.h"
#include "data/lint.h"

using namespace fluxtrain::data;

TEST(Lint, LabelLikeCaptions) {
  const std::string yolo = "looks like a YOLO label line (class x_center y_center width height), not a description";
  const std::string numbers = "is only numbers, not a description";
  EXPECT_EQ(label_like_caption("0 0.5 0.5 0.2 0.3"), yolo);
  EXPECT_EQ(label_like_caption("  3 0.1 0.2 0.3 0.4 0.5 0.6  "), yolo);  // a polygon: class + 3 points
  EXPECT_EQ(label_like_caption("12 7"), numbers);
  EXPECT_EQ(label_like_caption("1.5, 2, -3"), numbers);
  EXPECT_EQ(label_like_caption("0.5 0.5 0.5 0.2 0.3"), numbers);    // no integer class
  EXPECT_EQ(label_like_caption("0 0.5 0.5 0.2"), numbers);          // four numbers
  EXPECT_EQ(label_like_caption("0, 0.5, 0.5, 0.2, 0.3"), numbers);  // commas: no YOLO line, but only numbers
  EXPECT_EQ(label_like_caption("12 7 a"), "");
  EXPECT_EQ(label_like_caption("a photo of 2 cats"), "");
  EXPECT_EQ(label_like_caption("1990s car, 35mm"), "");
  EXPECT_EQ(label_like_caption("nan inf"), "");
  EXPECT_EQ(label_like_caption(""), "");
  EXPECT_EQ(label_like_caption(" , "), "");
}

// Lint's YOLO judgement is the scan's (data/label_files.h): a line is called a YOLO line by both or by
// neither, so a caption file the scan took as a caption is never called YOLO by lint for a different rule.
TEST(Lint, YoloJudgementIsTheScans) {
  const std::string yolo = "looks like a YOLO label line (class x_center y_center width height), not a description";
  for (const char* line : {"0 0.5 0.5 0.2 0.3", "0 0.5 0.5 1.2 0.3", "7 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8",
                           "0 0.5 0.5 0.2 0.3 0.9 0.1 2", "0.5 0.5 0.5 0.2 0.3", "0 0.5 0.5 0.2", "-1 0.5 0.5 0.2 0.3",
                           "0 0.5 0.5 0.2 nan", "0 0.5 0.5 0.2 1e-3", "12 7"}) {
    SCOPED_TRACE(line);
    EXPECT_EQ(label_like_caption(line) == yolo, is_yolo_line(line));
  }
}

namespace {
Image gradient(int w, int h, bool mirrored, uint8_t tint) {
  Image image{w, h, 3, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const int v = ((mirrored ? w - 1 - x : x) * 255 / (w - 1) + y * 40 / h) % 256;
      uint8_t* p = &image.pixels[(static_cast<size_t>(y) * w + x) * 3];
      p[0] = p[1] = static_cast<uint8_t>(v);
      p[2] = static_cast<uint8_t>(v / 2 + tint);
    }
  }
  return image;
}
}  // namespace

TEST(Lint, DifferenceHash) {
  // A grey ramp that brightens left to right (but where it wraps) sets no bit; mirrored, nearly all.
  const uint64_t rising = difference_hash(gradient(90, 80, false, 0));
  const uint64_t falling = difference_hash(gradient(90, 80, true, 0));
  EXPECT_LE(std::popcount(rising), 12);  // the wrap: one falling edge per row
  EXPECT_GE(std::popcount(falling), 52);
  // Resizing keeps the hash; mirroring changes nearly every bit.
  EXPECT_LE(hamming_distance(rising, difference_hash(resize_image(gradient(90, 80, false, 0), 61, 47))), 2);
  EXPECT_GE(hamming_distance(rising, falling), 40);
  EXPECT_EQ(hamming_distance(0, ~uint64_t{0}), 64);
  // Flat pictures share the hash 0 but not the mean colour.
  const HashedImage a = perceptual_hash(Image{16, 16, 3, std::vector<uint8_t>(16 * 16 * 3, 200)});
  EXPECT_EQ(a.dhash, 0u);
  EXPECT_NEAR(a.mean[0], 200, 1e-9);
}
