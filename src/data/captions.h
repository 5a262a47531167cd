// Caption files and the per-step caption edits of kohya-ss/sd-scripts (DreamBoothDataset.read_caption and
// BaseDataset.process_caption in library/train_util.py): prefix/suffix, caption dropout, keep_tokens,
// keep_tokens_separator, shuffle, tag dropout, secondary_separator — in kohya's order, with our own
// portable random numbers (data/rng.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "data/label_files.h"

namespace fluxtrain::data {

class DataRng;

// The caption keys of a subset (see dataset_config.h for their defaults and where they may be set).
struct CaptionSettings {
  std::string caption_prefix;
  std::string caption_suffix;
  bool shuffle_caption = false;
  std::string caption_separator = ",";
  int keep_tokens = 0;
  std::string keep_tokens_separator;  // "" = none
  std::string secondary_separator;    // "" = none
  double caption_dropout_rate = 0;
  int caption_dropout_every_n_epochs = 0;
  double caption_tag_dropout_rate = 0;
};

struct CaptionFile {
  std::filesystem::path path;         // the caption file looked for
  bool found = false;                 // the file exists and holds a non-blank first line
  bool empty = false;                 // the file exists but its first line is blank
  bool multiline = false;             // more non-blank lines follow the first (they are not used)
  std::string text;                   // the first line, stripped
  LabelKind label = LabelKind::none;  // the file is a label file, not a caption (found is false)
};

// Reads `<image without extension><extension>`. The text must be UTF-8 (a BOM is dropped); lines end in
// \n, \r\n or \r; the first line is the caption, stripped of leading and trailing whitespace (Python's
// str.strip() set, which includes U+3000). Throws Error naming the file when it is not valid UTF-8 or
// cannot be read. A file of YOLO labels (data/label_files.h; COCO JSON for a ".json" extension) is not a
// caption: it comes back with found = false and `label` saying what it is.
// A caption file over kMaxCaptionFileBytes is refused (Error naming it and the limit) before it is read.
CaptionFile read_caption_file(const std::filesystem::path& image, const std::string& extension);

// 1 MiB: a caption is a line of text; a larger "caption" is another file under a caption's name.
inline constexpr std::uint64_t kMaxCaptionFileBytes = std::uint64_t{1} << 20;

// The first line of `bytes` (a caption file's content), validated and cleaned as read_caption_file does;
// `name` names the source in errors.
CaptionFile parse_caption_text(std::string_view bytes, const std::string& name);

// kohya's process_caption: the caption a training step sees. `epoch` is 0-based (the dropout every N
// epochs hits epochs N, 2N, ... counted from 1, as kohya counts). Draws from `rng` in kohya's order:
// the dropout roll (only when caption_dropout_rate > 0), the shuffle, then one roll per tag for the tag
// dropout.
std::string process_caption(const CaptionSettings& settings, const std::string& caption, int64_t epoch, DataRng& rng);

// Python's str.strip() and str.split(sep) on UTF-8 text (exposed for tests).
std::string strip_whitespace(std::string_view text);
std::vector<std::string> split_on(std::string_view text, std::string_view separator);

// "" when `bytes` is valid UTF-8, else a description such as "byte 0xE9 at offset 12".
std::string utf8_problem(std::string_view bytes);

}  // namespace fluxtrain::data
