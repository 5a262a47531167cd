// Training resolutions as the dataset config, PARAMS_RESOLUTION and --resolution write them: kohya's one size
// (1024) or [width, height], and several sizes for multi-resolution training (ai-toolkit's
// `resolution: [512, 768, 1024]`): the same images train at each size, every size with its own buckets
// (the dataset config makes one dataset per size, docs/data.md "Multi-resolution training").
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <string>
#include <vector>

#include "data/buckets.h"

namespace fluxtrain::data {

// The sizes of a config `resolution` value, each side within [min_side, max_side]:
//   1024 -> 1024x1024;  [1280, 768] -> 1280x768 (kohya's width, height);
//   three or more sizes ([512, 768, 1024]) or a list holding a [width, height] pair ([[512, 512], [1024, 768]],
//   [768, [1280, 768]], [[1280, 768]]) -> each entry a size.
// An empty list when the value names none; `problem` then says why ("not an integer or [width, height]",
// "5000 is out of range").
std::vector<Resolution> parse_resolutions(const nlohmann::json& value, int min_side, int max_side,
                                          std::string& problem);

// The same for the command line's comma-separated items: "1024"; "1280,768" (width, height); "512,768,1024" or
// any item written WxH ("512x512,1280x768") -> several sizes.
std::vector<Resolution> parse_resolution_items(const std::vector<std::string>& items, int min_side, int max_side,
                                               std::string& problem);

// The config value of `sizes`: one size as [width, height], several as a list of them.
nlohmann::json resolutions_json(const std::vector<Resolution>& sizes);

// "1024x1024" or "512x512, 768x768, 1024x1024".
std::string resolutions_text(const std::vector<Resolution>& sizes);

}  // namespace fluxtrain::data
