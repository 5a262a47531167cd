// kohya's conditioning_data_dir as masked_loss reads it (docs/data.md "Masks"): beside the images, a folder of
// mask pictures with the images' names (any image extension), at the same place relative to the folder as each
// image is to its image_dir. A mask's red channel (0 to 255) is the loss weight of each pixel (0 to 1), so a
// black-and-white picture or a grayscale one works as drawn.
#pragma once

#include <filesystem>

namespace fluxtrain::data {

// The mask picture of `image` (a file in `image_dir` or below it) in `mask_dir`; empty when there is none.
std::filesystem::path find_mask_image(const std::filesystem::path& mask_dir, const std::filesystem::path& image_dir,
                                      const std::filesystem::path& image);

}  // namespace fluxtrain::data
