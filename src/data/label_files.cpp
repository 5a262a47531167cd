#include "data/label_files.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/strings.h"

namespace fluxtrain::data {

namespace {

bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\v' || c == '\f';
}

std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_blank(line[i])) ++i;
    const size_t start = i;
    while (i < line.size() && !is_blank(line[i])) ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

// A plain decimal: [+-] digits [. digits] [e [+-] digits], at least one digit in the mantissa.
bool is_decimal(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exp = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++exp;
    if (exp == 0) return false;
  }
  return i == s.size() && std::isfinite(std::strtod(std::string(s).c_str(), nullptr));
}

bool is_class_id(std::string_view s) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// `"key"` followed by optional whitespace and a colon, anywhere in `text`.
bool has_json_key(std::string_view text, std::string_view key) {
  const std::string quoted = "\"" + std::string(key) + "\"";
  for (size_t at = text.find(quoted); at != std::string_view::npos; at = text.find(quoted, at + 1)) {
    size_t i = at + quoted.size();
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
    if (i < text.size() && text[i] == ':') return true;
  }
  return false;
}

}  // namespace

const char* describe(LabelKind kind) {
  switch (kind) {
    case LabelKind::none: return "";
    case LabelKind::yolo: return "YOLO labels";
    case LabelKind::labels_dir: return "a file under labels/";
    case LabelKind::class_list: return "a class list";
    case LabelKind::coco_json: return "COCO annotations";
  }
  return "";
}

bool is_yolo_line(std::string_view line) {
  const std::vector<std::string_view> w = words(line);
  if (w.size() < 5 || !is_class_id(w[0])) return false;
  for (size_t i = 1; i < w.size(); ++i) {
    if (!is_decimal(w[i])) return false;
  }
  return true;
}

bool is_yolo_text(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  bool any = false;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of("\r\n", start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    if (!words(line).empty()) {
      if (!is_yolo_line(line)) return false;
      any = true;
    }
    if (end == text.size()) break;
    start = end + 1;
  }
  return any;
}

bool looks_like_coco_json(std::string_view text) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  size_t i = 0;
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
  if (i == text.size() || text[i] != '{') return false;
  return has_json_key(text, "images") && has_json_key(text, "annotations");
}

LabelKind label_kind_by_name(const std::filesystem::path& relative) {
  const std::string name = lower(relative.filename().string());
  const std::string ext = lower(relative.extension().string());
  if (name == "classes.txt" || ext == ".names") return LabelKind::class_list;
  if (ext == ".txt") {
    for (auto it = relative.begin(); it != relative.end(); ++it) {
      if (std::next(it) == relative.end()) break;  // the file itself
      if (lower(it->string()) == "labels") return LabelKind::labels_dir;
    }
  }
  return LabelKind::none;
}

LabelKind classify_label_file(const std::filesystem::path& relative, std::string_view content) {
  if (const LabelKind by_name = label_kind_by_name(relative); by_name != LabelKind::none) return by_name;
  const std::string ext = lower(relative.extension().string());
  if (ext == ".json" && looks_like_coco_json(content)) return LabelKind::coco_json;
  if (ext != ".json" && is_yolo_text(content)) return LabelKind::yolo;
  return LabelKind::none;
}

bool is_annotation_folder(const std::filesystem::path& name) {
  const std::string n = lower(name.filename().string());
  return n == "labels" || n == "masks" || n == "annotations";
}

}  // namespace fluxtrain::data
