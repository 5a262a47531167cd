#include "data/resolutions.h"

#include <nlohmann/json.hpp>

#include <charconv>

#include "core/error.h"

namespace fluxtrain::data {

using nlohmann::json;

namespace {

bool in_range(int64_t side, int min_side, int max_side, std::string& problem) {
  if (side >= min_side && side <= max_side) return true;
  problem = cat(side, " is out of range (", min_side, " to ", max_side, " pixels per side)");
  return false;
}

// One size: an integer or [width, height].
bool one_size(const json& v, int min_side, int max_side, Resolution& out, std::string& problem) {
  if (v.is_number_integer()) {
    const int64_t n = v.get<int64_t>();
    if (!in_range(n, min_side, max_side, problem)) return false;
    out = {static_cast<int>(n), static_cast<int>(n)};
    return true;
  }
  if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
    const int64_t w = v[0].get<int64_t>(), h = v[1].get<int64_t>();
    if (!in_range(w, min_side, max_side, problem) || !in_range(h, min_side, max_side, problem)) return false;
    out = {static_cast<int>(w), static_cast<int>(h)};
    return true;
  }
  problem = "not an integer, [width, height], or a list of sizes";
  return false;
}

bool parse_int(const std::string& text, int64_t& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::vector<Resolution> parse_resolutions(const json& value, int min_side, int max_side, std::string& problem) {
  Resolution size;
  bool several = value.is_array() && (value.size() >= 3 || value.size() == 1);
  if (value.is_array()) {
    for (const json& item : value) several = several || item.is_array();
  }
  if (!several) {
    if (!one_size(value, min_side, max_side, size, problem)) return {};
    return {size};
  }
  std::vector<Resolution> out;
  for (const json& item : value) {
    if (!one_size(item, min_side, max_side, size, problem)) return {};
    out.push_back(size);
  }
  return out;
}

std::vector<Resolution> parse_resolution_items(const std::vector<std::string>& items, int min_side, int max_side,
                                               std::string& problem) {
  json value = json::array();
  for (const std::string& item : items) {
    const size_t x = item.find('x');
    int64_t w = 0, h = 0;
    if (x == std::string::npos) {
      if (!parse_int(item, w)) return problem = cat("'", item, "' is not an integer"), std::vector<Resolution>{};
      value.push_back(w);
    } else {
      if (!parse_int(item.substr(0, x), w) || !parse_int(item.substr(x + 1), h))
        return problem = cat("'", item, "' is not WIDTHxHEIGHT"), std::vector<Resolution>{};
      value.push_back(json::array({w, h}));
    }
  }
  // One plain item is one size; one WxH item is a list of one size.
  if (items.size() == 1 && value[0].is_number_integer()) return parse_resolutions(value[0], min_side, max_side, problem);
  return parse_resolutions(value, min_side, max_side, problem);
}

json resolutions_json(const std::vector<Resolution>& sizes) {
  if (sizes.size() == 1) return json::array({sizes[0].width, sizes[0].height});
  json out = json::array();
  for (const Resolution& r : sizes) out.push_back(json::array({r.width, r.height}));
  return out;
}

std::string resolutions_text(const std::vector<Resolution>& sizes) {
  std::string out;
  for (const Resolution& r : sizes) out += (out.empty() ? "" : ", ") + to_string(r);
  return out;
}

}  // namespace fluxtrain::data
