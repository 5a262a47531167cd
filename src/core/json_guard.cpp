#include "core/json_guard.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace fluxtrain {
namespace {

// Writes `value` into `out` until `out` holds `max_chars` characters; false once cut.
bool excerpt_into(const nlohmann::json& value, std::string& out, size_t max_chars, size_t depth) {
  if (out.size() >= max_chars) return false;
  if (depth > kMaxJsonDepth) {
    out += "...";
    return false;
  }
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    const size_t room = max_chars - out.size();
    out += nlohmann::json(s.substr(0, room)).dump();
    return s.size() <= room;
  }
  if (value.is_array() || value.is_object()) {
    const bool object = value.is_object();
    out += object ? '{' : '[';
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!first) out += ',';
      first = false;
      if (out.size() >= max_chars) return false;
      if (object) out += nlohmann::json(it.key().substr(0, max_chars)).dump() + ':';
      if (!excerpt_into(*it, out, max_chars, depth + 1)) return false;
    }
    out += object ? '}' : ']';
    return true;
  }
  out += value.dump();  // a number, bool or null: short by nature
  return true;
}

// The deepest nesting, stopping at the first bracket that passes `limit` (its offset in *at).
size_t scan_depth(std::string_view text, size_t limit, size_t* at) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) {
        if (at != nullptr) *at = i;
        return limit + 1;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

size_t json_depth(std::string_view text, size_t limit) {
  return scan_depth(text, limit, nullptr);
}

void check_json_depth(std::string_view text, const std::string& what) {
  size_t at = 0;
  if (scan_depth(text, kMaxJsonDepth, &at) <= kMaxJsonDepth) return;
  fail(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels (at byte ", at,
       "): corrupt or hostile, no file fluxtrain reads nests that deep");
}

std::string json_excerpt(const nlohmann::json& value, size_t max_chars) {
  std::string out;
  if (!excerpt_into(value, out, max_chars, 0)) out += "...";
  return out;
}

}  // namespace fluxtrain
