#include "data/captions.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/strings.h"
#include "data/rng.h"

namespace fluxtrain::data {

namespace {

// Decodes one UTF-8 sequence at `i` (already validated); returns the code point and advances i.
char32_t decode_at(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  int extra = b0 < 0x80 ? 0 : b0 < 0xE0 ? 1 : b0 < 0xF0 ? 2 : 3;
  char32_t cp = extra == 0 ? b0 : extra == 1 ? (b0 & 0x1F) : extra == 2 ? (b0 & 0x0F) : (b0 & 0x07);
  ++i;
  for (int k = 0; k < extra && i < s.size(); ++k, ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[i]) & 0x3F);
  return cp;
}

// Python's str.isspace() (Unicode White_Space plus the ASCII separators 0x1C-0x1F).
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Start of the UTF-8 sequence that ends at `end` (exclusive).
size_t sequence_start(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

}  // namespace

std::string utf8_problem(std::string_view s) {
  size_t i = 0;
  auto bad = [&](size_t at) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(s[at]));
    return cat("byte ", hex, " at offset ", at);
  };
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    int extra;
    char32_t min;
    if (b0 >= 0xC2 && b0 <= 0xDF)
      extra = 1, min = 0x80;
    else if (b0 >= 0xE0 && b0 <= 0xEF)
      extra = 2, min = 0x800;
    else if (b0 >= 0xF0 && b0 <= 0xF4)
      extra = 3, min = 0x10000;
    else
      return bad(i);
    if (i + extra >= s.size()) return cat(bad(i), " (truncated sequence)");
    char32_t cp = extra == 1 ? (b0 & 0x1F) : extra == 2 ? (b0 & 0x0F) : (b0 & 0x07);
    for (int k = 1; k <= extra; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return cat(bad(i), " (an incomplete sequence)");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return bad(i);
    i += extra + 1;
  }
  return "";
}

std::string strip_whitespace(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t next = begin;
    if (!is_python_space(decode_at(text, next))) break;
    begin = next;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = sequence_start(text, end);
    size_t probe = start;
    if (!is_python_space(decode_at(text, probe))) break;
    end = start;
  }
  return std::string(text.substr(begin, end - begin));
}

std::vector<std::string> split_on(std::string_view text, std::string_view separator) {
  std::vector<std::string> parts;
  if (separator.empty()) fail("empty caption separator");
  size_t start = 0;
  while (true) {
    size_t at = text.find(separator, start);
    if (at == std::string_view::npos) {
      parts.emplace_back(text.substr(start));
      return parts;
    }
    parts.emplace_back(text.substr(start, at - start));
    start = at + separator.size();
  }
}

CaptionFile parse_caption_text(std::string_view bytes, const std::string& name) {
  if (bytes.size() >= 3 && bytes.substr(0, 3) == "\xEF\xBB\xBF") bytes.remove_prefix(3);
  if (std::string problem = utf8_problem(bytes); !problem.empty()) {
    fail("caption file ", name, " is not valid UTF-8 (", problem,
         "): save it as UTF-8 (most editors offer \"UTF-8\" in Save As)");
  }
  CaptionFile out;
  // Universal newlines, as Python's text mode reads: \r\n, \r and \n all end a line.
  size_t end = bytes.find_first_of("\r\n");
  out.text = strip_whitespace(bytes.substr(0, end));
  if (end != std::string_view::npos) {
    out.multiline = !strip_whitespace(bytes.substr(end + 1)).empty();
  }
  out.found = !out.text.empty();
  out.empty = out.text.empty();
  return out;
}

CaptionFile read_caption_file(const std::filesystem::path& image, const std::string& extension) {
  std::filesystem::path path = image;
  path.replace_extension();
  path += extension;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    CaptionFile out;
    out.path = path;
    return out;
  }
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > kMaxCaptionFileBytes) {
    fail("caption file ", path.string(), " is ", format_bytes(double(size)), ", over the ", kMaxCaptionFileBytes >> 20,
         " MiB limit for a caption file: a caption is one line of text; remove or rename the file");
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  if (!in && !in.eof()) fail("cannot read caption file ", path.string(), ": check its permissions");
  const std::string bytes = content.str();
  const bool json = lower(path.extension().string()) == ".json";
  if (json ? looks_like_coco_json(bytes) : is_yolo_text(bytes)) {
    CaptionFile out;
    out.path = path;
    out.label = json ? LabelKind::coco_json : LabelKind::yolo;
    return out;
  }
  CaptionFile out = parse_caption_text(bytes, path.string());
  out.path = path;
  return out;
}

std::string process_caption(const CaptionSettings& s, const std::string& input, int64_t epoch, DataRng& rng) {
  std::string caption = input;
  if (!s.caption_prefix.empty()) caption = s.caption_prefix + " " + caption;
  if (!s.caption_suffix.empty()) caption = caption + " " + s.caption_suffix;

  bool drop = s.caption_dropout_rate > 0 && rng.uniform() < s.caption_dropout_rate;
  drop = drop || (s.caption_dropout_every_n_epochs > 0 && (epoch + 1) % s.caption_dropout_every_n_epochs == 0);
  if (drop) return "";

  caption = caption.substr(0, caption.find('\n'));  // the first line (a prefix or suffix may hold newlines)

  if (s.shuffle_caption || s.caption_tag_dropout_rate > 0) {
    std::vector<std::string> fixed, flex, fixed_suffix;
    auto tokens_of = [&](std::string_view part, bool drop_empty) {
      std::vector<std::string> tokens;
      for (const std::string& t : split_on(part, s.caption_separator)) {
        std::string stripped = strip_whitespace(t);
        if (!drop_empty || !stripped.empty()) tokens.push_back(std::move(stripped));
      }
      return tokens;
    };
    const std::string& sep = s.keep_tokens_separator;
    if (!sep.empty() && caption.find(sep) != std::string::npos) {
      // "fixed ||| flexible ||| fixed suffix": only the middle part is shuffled and dropped; empty tags go.
      const size_t first = caption.find(sep);
      std::string fixed_part = caption.substr(0, first);
      std::string flex_part = caption.substr(first + sep.size());
      if (size_t second = flex_part.find(sep); second != std::string::npos) {
        fixed_suffix = tokens_of(std::string_view(flex_part).substr(second + sep.size()), true);
        flex_part.resize(second);
      }
      fixed = tokens_of(fixed_part, true);
      flex = tokens_of(flex_part, true);
    } else {
      // kohya keeps empty tags here ("a,,b" -> "a, , b").
      flex = tokens_of(strip_whitespace(caption), false);
      if (s.keep_tokens > 0) {
        const size_t keep = std::min(flex.size(), static_cast<size_t>(s.keep_tokens));
        fixed.assign(flex.begin(), flex.begin() + static_cast<std::ptrdiff_t>(keep));
        flex.erase(flex.begin(), flex.begin() + static_cast<std::ptrdiff_t>(keep));
      }
    }
    if (s.shuffle_caption) rng.shuffle(flex);
    if (s.caption_tag_dropout_rate > 0) {
      std::vector<std::string> kept;
      for (std::string& t : flex) {
        if (rng.uniform() >= s.caption_tag_dropout_rate) kept.push_back(std::move(t));
      }
      flex = std::move(kept);
    }
    // kohya joins with ", " whatever the separator.
    caption.clear();
    std::vector<std::string> all;
    for (const auto* group : {&fixed, &flex, &fixed_suffix}) all.insert(all.end(), group->begin(), group->end());
    for (size_t i = 0; i < all.size(); ++i) caption += (i ? ", " : "") + all[i];
  }

  if (!s.secondary_separator.empty()) {
    std::string out;
    size_t start = 0;
    for (size_t at; (at = caption.find(s.secondary_separator, start)) != std::string::npos;
         start = at + s.secondary_separator.size()) {
      out += caption.substr(start, at - start) + s.caption_separator;
    }
    caption = out + caption.substr(start);
  }
  return caption;
}

}  // namespace fluxtrain::data
