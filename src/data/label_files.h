// Files that datasets ship beside their images and that are not captions: YOLO label files (one object per
// line: a class id and normalised box or polygon coordinates, `0 0.51 0.43 0.2 0.3`), files under a `labels/`
// folder, class lists (`classes.txt`, `*.names`) and COCO annotation JSON. A Kaggle or Roboflow detection
// dataset (`images/train/*.jpg`, `labels/train/*.txt`, `classes.txt`, `annotations/*.json`) has all of them;
// the dataset scan uses this to never take such a file as a caption (the image is then captionless) and to
// count what it ignored. See docs/data.md "Folders as people ship them".
#pragma once

#include <filesystem>
#include <string_view>

namespace fluxtrain::data {

enum class LabelKind {
  none,        // not a label file (a caption, or anything else)
  yolo,        // every non-blank line is YOLO numbers
  labels_dir,  // a .txt under a folder named `labels`
  class_list,  // classes.txt, *.names
  coco_json,   // a JSON object with "images" and "annotations"
};

// "YOLO labels", "a file under labels/", "a class list", "COCO annotations" ("" for none).
const char* describe(LabelKind kind);

// One line of YOLO numbers: a non-negative integer class id, then at least 4 numbers — a box (x y w h), a
// segmentation polygon (an even count of 6 or more), or a box with pose keypoints. Numbers are plain
// decimals (sign, digits, point, exponent); words, commas, nan or inf make it not YOLO.
bool is_yolo_line(std::string_view line);

// Text whose lines (ending in \n, \r\n or \r) are all YOLO lines or blank, with at least one YOLO line.
bool is_yolo_text(std::string_view text);

// A JSON object that has the top-level keys "images" and "annotations" (COCO's instances, captions and
// keypoints files), judged from the text's start, so that a file of hundreds of MB needs only `text`'s first
// megabyte.
bool looks_like_coco_json(std::string_view text);

// By name alone (no read): `relative` is the file's path below the folder scanned. A .txt with a folder
// named `labels` (any letter case) above it, `classes.txt`, `*.names`.
LabelKind label_kind_by_name(const std::filesystem::path& relative);

// By name, then by content: YOLO text in a .txt; COCO JSON in a .json. `content` may be the file's first
// megabyte.
LabelKind classify_label_file(const std::filesystem::path& relative, std::string_view content);

// Folder names whose images are not training images (YOLO segmentation masks under `labels/`, `masks/`,
// `annotations/`): the recursive scan does not take images from them (any letter case).
bool is_annotation_folder(const std::filesystem::path& name);

}  // namespace fluxtrain::data
