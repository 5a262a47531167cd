#include "data/image_folders.h"

#include <algorithm>

#include "core/log.h"
#include "core/strings.h"
#include "data/dataset_config.h"
#include "data/label_files.h"

namespace fluxtrain::data {

bool has_image_extension(const std::filesystem::path& path) {
  const std::string ext = lower(path.extension().string());
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp" || ext == ".bmp";
}

std::optional<std::pair<int, std::string>> parse_repeats_folder_name(const std::string& name) {
  const size_t underscore = name.find('_');
  const std::string number = name.substr(0, underscore);
  if (number.empty() || number.size() > 9 ||
      !std::all_of(number.begin(), number.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::make_pair(std::stoi(number),
                        underscore == std::string::npos ? std::string() : name.substr(underscore + 1));
}

bool is_image_file(const std::filesystem::directory_entry& entry) {
  std::error_code ec;
  const std::string name = entry.path().filename().string();
  return !name.empty() && name[0] != '.' && entry.is_regular_file(ec) && has_image_extension(entry.path());
}

bool holds_images(const std::filesystem::path& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (is_image_file(entry)) return true;
  }
  return false;
}

bool holds_images_below(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code dir_ec;
    if (it->is_directory(dir_ec)) {
      if (name.empty() || name[0] == '.' || is_annotation_folder(name)) it.disable_recursion_pending();
      continue;
    }
    if (is_image_file(*it)) return true;
  }
  return false;
}

std::vector<RepeatFolder> repeat_folders(const std::filesystem::path& dir, std::vector<std::string>* ignored) {
  std::vector<std::filesystem::path> subdirs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::error_code dir_ec;
    const std::string name = entry.path().filename().string();
    if (!name.empty() && name[0] != '.' && entry.is_directory(dir_ec)) subdirs.push_back(entry.path());
  }
  std::sort(subdirs.begin(), subdirs.end());
  std::vector<RepeatFolder> out;
  for (const auto& sub : subdirs) {
    auto parsed = parse_repeats_folder_name(sub.filename().string());
    if (!parsed) {
      if (ignored != nullptr) ignored->push_back(sub.filename().string());
      continue;
    }
    if (parsed->first < 1) {
      log::warn("folder ", sub.string(), " is ignored: its repeat count is ", parsed->first,
                " (kohya's N_name convention)");
      continue;
    }
    out.push_back({sub, parsed->first, parsed->second});
  }
  return out;
}

}  // namespace fluxtrain::data
