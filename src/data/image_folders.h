// The image folders of a dataset as kohya reads them: which files are images, whether a folder holds any, and
// kohya's `N_name` repeat folders. Internal to the dataset config (data/dataset_config.cpp).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace fluxtrain::data {

// A visible regular file with an image extension.
bool is_image_file(const std::filesystem::directory_entry& entry);
// An image directly in `dir`.
bool holds_images(const std::filesystem::path& dir);
// An image at any depth below `dir`, outside hidden and annotation folders (the recursive scan's rule).
bool holds_images_below(const std::filesystem::path& dir);

struct RepeatFolder {
  std::filesystem::path path;
  int repeats;
  std::string class_tokens;
};

// kohya's generate_dreambooth_subsets_config_by_subdirs, in sorted order (kohya takes the file system's); the
// names of subfolders that are not `N_name` go to `ignored`.
std::vector<RepeatFolder> repeat_folders(const std::filesystem::path& dir, std::vector<std::string>* ignored);

}  // namespace fluxtrain::data
