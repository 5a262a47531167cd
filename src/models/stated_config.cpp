#include "models/stated_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_guard.h"

namespace fluxtrain::models {

StatedConfig StatedConfig::beside(const std::string& folder) {
  const std::filesystem::path path = std::filesystem::path(folder) / "config.json";
  std::error_code ec;
  if (folder.empty() || !std::filesystem::is_regular_file(path, ec)) return {};
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) fail(path.string(), ": cannot be read (check its permissions)");
  return parse(path.string(), text.str());
}

StatedConfig StatedConfig::parse(const std::string& source, const std::string& text) {
  auto json = std::make_shared<nlohmann::json>();
  check_json_depth(text, source);
  try {
    *json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(source, ": not valid JSON (", e.what(), "); a model's config.json is one JSON object: fix or remove it");
  }
  if (!json->is_object()) {
    fail(source, ": is not a JSON object; a model's config.json is one JSON object: fix or remove it");
  }
  StatedConfig c;
  c.source_ = source;
  c.json_ = std::move(json);
  return c;
}

namespace {

std::string string_at(const nlohmann::json* json, const char* key) {
  if (json == nullptr) return "";
  auto it = json->find(key);
  return it != json->end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

std::string StatedConfig::class_name() const {
  return string_at(json_.get(), "_class_name");
}

std::string StatedConfig::model_type() const {
  return string_at(json_.get(), "model_type");
}

StatedConfig StatedConfig::section(const std::string& key) const {
  if (json_ == nullptr) return {};
  auto it = json_->find(key);
  if (it == json_->end() || it->is_null()) return {};
  if (!it->is_object()) fail(source_, ": \"", path_, key, "\" must be a JSON object, got ", it->dump());
  StatedConfig c;
  c.source_ = source_;
  c.path_ = path_ + key + ".";
  c.json_ = std::make_shared<nlohmann::json>(*it);
  return c;
}

std::optional<int64_t> StatedConfig::integer(const std::string& key) const {
  if (json_ == nullptr) return std::nullopt;
  auto it = json_->find(key);
  if (it == json_->end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) fail(source_, ": \"", path_, key, "\" must be an integer, got ", it->dump());
  return it->get<int64_t>();
}

std::optional<std::vector<int64_t>> StatedConfig::integers(const std::string& key) const {
  if (json_ == nullptr) return std::nullopt;
  auto it = json_->find(key);
  if (it == json_->end() || it->is_null()) return std::nullopt;
  const bool ok =
      it->is_array() && std::all_of(it->begin(), it->end(), [](const auto& v) { return v.is_number_integer(); });
  if (!ok) fail(source_, ": \"", path_, key, "\" must be a list of integers, got ", it->dump());
  return it->get<std::vector<int64_t>>();
}

}  // namespace fluxtrain::models
