#include "data/mask_images.h"

#include "data/dataset_config.h"

namespace fluxtrain::data {

std::filesystem::path find_mask_image(const std::filesystem::path& mask_dir, const std::filesystem::path& image_dir,
                                      const std::filesystem::path& image) {
  const std::filesystem::path relative = image.lexically_relative(image_dir);
  const std::filesystem::path folder = mask_dir / relative.parent_path();
  const std::string stem = relative.stem().string();
  // The image's own extension first (img.png -> masks/img.png), then any other image file of that name.
  std::error_code ec;
  const std::filesystem::path same = folder / relative.filename();
  if (std::filesystem::is_regular_file(same, ec)) return same;
  std::filesystem::path found;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    const std::filesystem::path& path = entry.path();
    if (path.stem().string() != stem || !has_image_extension(path) || !entry.is_regular_file(ec)) continue;
    if (found.empty() || path < found) found = path;  // the first by name, for a stable choice
  }
  return found;
}

}  // namespace fluxtrain::data
