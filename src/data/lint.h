// `fluxtrain dataset --lint` (and the cheap part of it that `train` runs at start): what in a dataset would
// waste GPU time or train something unwanted, found before any of it is spent (torch-free).
//
// Per image: files the scan skipped; files whose header reads but whose pixels do not (a truncated JPEG:
// the latent cache would stop on it); exact duplicates (SHA-256 of the file); near duplicates (64-bit
// difference hash, see difference_hash); images smaller than their bucket (scaled up by 1.2x or more); aspect ratios
// beyond the bucket list's range (a large part cropped away); empty captions (no caption and no class_tokens or
// default_caption: the image trains without text); caption files that hold labels (YOLO numbers, COCO JSON:
// the scan leaves the image captionless) and captions that look like labels (label_like_caption); captions
// longer than the text encoders read (CLIP-L: 77 ids with start and end; T5: t5_max_length ids with </s>),
// counted with the shipped tokenizers. And a crop preview: per bucket,
// contact sheets of every image at its scaled size with the trainer's crop marked (data/bucket_image.h),
// with crops.json listing each image's bucket, scaled size, crop box and where it is on which sheet.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"

namespace fluxtrain {
class ClipTokenizer;
class T5Tokenizer;
}  // namespace fluxtrain

namespace fluxtrain::data {

// Why a caption reads as a label rather than a description, or "" when it does not: a YOLO label line
// (data/label_files.h is_yolo_line, the scan's own rule: class x_center y_center width height, or a
// polygon), or else every word of it is a number (commas and whitespace separate words): "only numbers".
// A caption file whose every line is YOLO numbers never gets here: the scan does not take it as a caption
// (DatasetImage::caption_label), and lint_dataset reports that file instead.
std::string label_like_caption(std::string_view caption);

// dHash: the image scaled to 9x8 (area filter), each pixel's luma (0.299 R + 0.587 G + 0.114 B); bit
// 8 * row + column is set when the pixel is brighter than its right neighbour. Near-identical pictures
// (re-encoded, resized, slightly recoloured) differ in a few bits.
uint64_t difference_hash(const Image& image);
// The mean colour of the same 9x8 thumbnail, per channel: two flat pictures of different colours have the
// same dHash (0), so near duplicates must also agree in mean colour.
struct HashedImage {
  uint64_t dhash = 0;
  double mean[3] = {0, 0, 0};
};
HashedImage perceptual_hash(const Image& image);
int hamming_distance(uint64_t a, uint64_t b);

struct LintOptions {
  // Decode every image: pixel errors, duplicates, near duplicates and the crop previews. Off (train's
  // start), only what the plan already knows is checked: skipped files, sizes, aspect ratios, captions.
  bool decode = true;
  int near_duplicate_bits = 6;        // dHash Hamming distance up to this is a near duplicate
  double near_duplicate_colour = 24;  // ... when no channel's mean differs by more than this (8-bit levels)
  // Token limits; a null tokenizer skips its check.
  const ClipTokenizer* clip = nullptr;
  const T5Tokenizer* t5 = nullptr;
  int t5_max_length = 512;
  std::filesystem::path preview_dir;  // "" = no crop previews
  int tile = 384;                     // the longer side of a preview tile at most (larger scaled images shrink)
  int threads = 0;                    // 0 = the CPU count, at most 8
};

struct LintFinding {
  std::filesystem::path path;
  std::string kind;  // one of lint_kinds()
  std::string message;
};

// The kinds in report order, each with its label in the summary ("exact duplicate", ...).
struct LintKind {
  const char* kind;
  const char* label;
};
const std::vector<LintKind>& lint_kinds();

// Where one image's preview is: the sheet, the tile (the scaled image, shrunk by `scale` when it is larger
// than the tile) and, inside it, the crop box, all in sheet pixels.
struct CropPreview {
  int image = 0;  // index into DatasetPlan::images()
  std::string sheet;
  double scale = 1;
  int tile[4] = {0, 0, 0, 0};  // x, y, width, height
  int box[4] = {0, 0, 0, 0};
};

struct LintReport {
  int images = 0;  // images checked (the plan's, plus the ones it skipped)
  std::vector<LintFinding> findings;
  std::vector<CropPreview> previews;
  std::vector<std::string> sheets;  // file names in options.preview_dir
  std::filesystem::path preview_dir;
  std::string crops_json;  // preview_dir/crops.json, "" without previews

  // "lint: 12 images, 7 findings: 1 unreadable, 1 exact duplicate, ..." or "lint: 12 images, no findings".
  std::string summary() const;
};

LintReport lint_dataset(const DatasetPlan& plan, const LintOptions& options);

// A path as findings name it: relative to its subset's folder when inside it.
std::string lint_name(const DatasetPlan& plan, const std::filesystem::path& path);

}  // namespace fluxtrain::data
