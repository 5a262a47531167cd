// masked_loss's mask sources in the dataset config and plan: conditioning_data_dir (kohya's mask pictures, found
// by the image's name) and the alpha fallback of masked_loss; the errors name the key, the folder and the fix.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/dataset.h"
#include "data/dataset_config.h"
#include "data/mask_images.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;
using fluxtrain::testing::write_file;

namespace {

ScanOptions probe_sizes(std::map<std::string, Resolution> sizes) {
  ScanOptions options;
  options.probe = [sizes](const fs::path& path) {
    auto it = sizes.find(path.filename().string());
    return it == sizes.end() ? Resolution{64, 64} : it->second;
  };
  return options;
}

std::string subset_toml(const fs::path& images, const std::string& extra) {
  return cat("[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = \"", images.string(), "\"\n", extra);
}

}  // namespace

TEST(Masks, FindsTheMaskPictureByTheImagesName) {
  const fs::path root = fluxtrain::testing::fresh_dir("mask_find");
  write_file(root / "images" / "a.jpg", "");
  write_file(root / "images" / "sub" / "b.png", "");
  write_file(root / "images" / "c.png", "");
  write_file(root / "masks" / "a.png", "");       // another extension
  write_file(root / "masks" / "sub" / "b.png", "");  // the same place below the folder
  write_file(root / "masks" / "a.txt", "");       // not a picture
  EXPECT_EQ(find_mask_image(root / "masks", root / "images", root / "images" / "a.jpg"), root / "masks" / "a.png");
  EXPECT_EQ(find_mask_image(root / "masks", root / "images", root / "images" / "sub" / "b.png"),
            root / "masks" / "sub" / "b.png");
  EXPECT_TRUE(find_mask_image(root / "masks", root / "images", root / "images" / "c.png").empty());
}

TEST(Masks, ConditioningDataDirGivesEachImageItsMask) {
  const fs::path root = fluxtrain::testing::fresh_dir("mask_plan");
  for (const char* name : {"a.png", "b.png"}) {
    write_file(root / "images" / name, "");
    write_file(root / "masks" / name, "");
  }
  ConfigOptions options;
  options.fallbacks.masked_loss = true;
  const auto config = parse_dataset_config(subset_toml(root / "images", cat("conditioning_data_dir = \"",
                                                                            (root / "masks").string(), "\"\n")),
                                           ConfigFormat::toml, "m.toml", options);
  const SubsetConfig& subset = config.datasets[0].subsets[0];
  EXPECT_EQ(subset.conditioning_data_dir, root / "masks");
  EXPECT_TRUE(subset.alpha_mask);  // masked_loss's fallback; the mask pictures win over it
  EXPECT_EQ(subset.origin.at("alpha_mask"), "--masked-loss");
  const DatasetPlan plan = DatasetPlan::build(config, probe_sizes({}));
  ASSERT_EQ(plan.images().size(), 2u);
  for (const DatasetImage& image : plan.images()) EXPECT_EQ(image.mask, root / "masks" / image.path.filename());

  // A missing mask picture and one of another size are errors naming the folder, the image and the fix.
  fs::remove(root / "masks" / "b.png");
  expect_error([&] { DatasetPlan::build(config, probe_sizes({})); },
               {"1 images have no mask picture in", "masks (conditioning_data_dir), e.g. b.png",
                "one per image, with the image's name"});
  write_file(root / "masks" / "b.jpg", "");
  ScanOptions sizes = probe_sizes({{"b.jpg", Resolution{32, 64}}});
  expect_error([&] { DatasetPlan::build(config, sizes); },
               {"have a mask picture of another size", "b.png 64x64, its mask 32x64", "must have its image's size"});
}

TEST(Masks, ConditioningDataDirNeedsMaskedLossAndAFolder) {
  const fs::path root = fluxtrain::testing::fresh_dir("mask_errors");
  write_file(root / "images" / "a.png", "");
  fs::create_directories(root / "masks");
  ConfigOptions options;
  options.fallbacks.masked_loss_origin = "PARAMS_MASKED_LOSS=false";
  expect_error(
      [&] {
        parse_dataset_config(subset_toml(root / "images", cat("conditioning_data_dir = \"", (root / "masks").string(),
                                                              "\"\n")),
                             ConfigFormat::toml, "m.toml", options);
      },
      {"conditioning_data_dir gives the mask pictures of masked_loss, which is off (PARAMS_MASKED_LOSS=false)",
       "set masked_loss=true"});
  options.fallbacks.masked_loss = true;
  expect_error(
      [&] {
        parse_dataset_config(subset_toml(root / "images", cat("conditioning_data_dir = \"", (root / "nope").string(),
                                                              "\"\n")),
                             ConfigFormat::toml, "m.toml", options);
      },
      {"conditioning_data_dir \"", "nope\" is not a folder"});
  // masked_loss alone: the alpha is the mask, unless the config or alpha_mask says otherwise.
  auto config = parse_dataset_config(subset_toml(root / "images", ""), ConfigFormat::toml, "m.toml", options);
  EXPECT_TRUE(config.datasets[0].subsets[0].alpha_mask);
  options.fallbacks.alpha_mask = false;
  config = parse_dataset_config(subset_toml(root / "images", ""), ConfigFormat::toml, "m.toml", options);
  EXPECT_FALSE(config.datasets[0].subsets[0].alpha_mask);
  config = parse_dataset_config(subset_toml(root / "images", "alpha_mask = true\n"), ConfigFormat::toml, "m.toml",
                                options);
  EXPECT_TRUE(config.datasets[0].subsets[0].alpha_mask);
}
