// Multi-resolution training (data/resolutions.h): the forms of a resolution value, and a dataset config that
// names several sizes becoming one dataset per size, each with its own buckets in the plan.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <set>

#include "core/error.h"
#include "data/dataset.h"
#include "data/dataset_config.h"
#include "data/resolutions.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;
using fluxtrain::testing::write_file;
using nlohmann::json;

namespace {

std::vector<Resolution> sizes_of(const std::string& text, std::string* problem_out = nullptr) {
  std::string problem;
  auto sizes = parse_resolutions(json::parse(text), 64, 16384, problem);
  if (problem_out != nullptr) *problem_out = problem;
  return sizes;
}

std::vector<Resolution> items_of(const std::vector<std::string>& items, std::string* problem_out = nullptr) {
  std::string problem;
  auto sizes = parse_resolution_items(items, 64, 8192, problem);
  if (problem_out != nullptr) *problem_out = problem;
  return sizes;
}

void make_images(const fs::path& dir, int count) {
  fs::create_directories(dir);
  for (int i = 0; i < count; ++i) write_file(dir / cat("img_", i, ".jpg"), "");
}

ScanOptions probe_all(Resolution size) {
  ScanOptions options;
  options.probe = [size](const fs::path&) { return size; };
  return options;
}

}  // namespace

TEST(Resolutions, ConfigValueForms) {
  using R = std::vector<Resolution>;
  EXPECT_EQ(sizes_of("1024"), (R{{1024, 1024}}));
  EXPECT_EQ(sizes_of("[1280, 768]"), (R{{1280, 768}}));  // kohya: width, height
  EXPECT_EQ(sizes_of("[512, 768, 1024]"), (R{{512, 512}, {768, 768}, {1024, 1024}}));
  EXPECT_EQ(sizes_of("[[512, 512], [1280, 768]]"), (R{{512, 512}, {1280, 768}}));
  EXPECT_EQ(sizes_of("[768, [1280, 768]]"), (R{{768, 768}, {1280, 768}}));
  EXPECT_EQ(sizes_of("[[1280, 768]]"), (R{{1280, 768}}));
  std::string problem;
  EXPECT_TRUE(sizes_of("\"1024\"", &problem).empty());
  EXPECT_NE(problem.find("not an integer"), std::string::npos) << problem;
  EXPECT_TRUE(sizes_of("[512, 768, 20000]", &problem).empty());
  EXPECT_NE(problem.find("20000 is out of range"), std::string::npos) << problem;
  EXPECT_TRUE(sizes_of("[[512, 512, 512]]", &problem).empty());
  EXPECT_TRUE(sizes_of("[]", &problem).empty());
}

TEST(Resolutions, CommandLineItems) {
  using R = std::vector<Resolution>;
  EXPECT_EQ(items_of({"1024"}), (R{{1024, 1024}}));
  EXPECT_EQ(items_of({"1280", "768"}), (R{{1280, 768}}));
  EXPECT_EQ(items_of({"512", "768", "1024"}), (R{{512, 512}, {768, 768}, {1024, 1024}}));
  EXPECT_EQ(items_of({"512x512", "1280x768"}), (R{{512, 512}, {1280, 768}}));
  EXPECT_EQ(items_of({"1280x768"}), (R{{1280, 768}}));
  std::string problem;
  EXPECT_TRUE(items_of({"512", "big"}, &problem).empty());
  EXPECT_NE(problem.find("'big' is not an integer"), std::string::npos) << problem;
  EXPECT_TRUE(items_of({"512x"}, &problem).empty());
  EXPECT_NE(problem.find("WIDTHxHEIGHT"), std::string::npos) << problem;
  EXPECT_TRUE(items_of({"9000"}, &problem).empty());
}

// ai-toolkit's resolution: [512, 768, 1024] on a dataset: three datasets of the same subsets, one per size,
// and the plan's buckets come per size (each image once in each), with the steps summed.
TEST(Resolutions, ConfigListMakesOneDatasetPerSizeWithItsOwnBuckets) {
  const fs::path root = fluxtrain::testing::fresh_dir("multi_resolution");
  make_images(root / "images", 6);
  const std::string text = cat("[general]\nenable_bucket = true\nmax_bucket_reso = 2048\n[[datasets]]\n",
                               "resolution = [512, 768, 1024]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = \"",
                               (root / "images").string(), "\"\nnum_repeats = 2\n");
  const DatasetGroupConfig config = parse_dataset_config(text, ConfigFormat::toml, "multi.toml");
  ASSERT_EQ(config.datasets.size(), 3u);
  const std::vector<Resolution> expected = {{512, 512}, {768, 768}, {1024, 1024}};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(config.datasets[i].buckets.resolution, expected[i]);
    EXPECT_EQ(config.datasets[i].origin.at("resolution"), cat("dataset, size ", to_string(expected[i]), " of 3"));
    ASSERT_EQ(config.datasets[i].subsets.size(), 1u);
    EXPECT_EQ(config.datasets[i].subsets[0].num_repeats, 2);
    EXPECT_EQ(config.datasets[i].batch_size, 2);
  }
  // Wide images (1600x900): the 16:9-nearest bucket of each size.
  const DatasetPlan plan = DatasetPlan::build(config, probe_all({1600, 900}));
  ASSERT_EQ(plan.buckets().size(), 3u);
  std::set<int> datasets;
  for (const PlanBucket& b : plan.buckets()) {
    datasets.insert(b.dataset);
    EXPECT_EQ(b.images.size(), 6u);
    EXPECT_EQ(b.samples, 12);
    EXPECT_EQ(b.batches, 6);
    const Resolution size = expected[static_cast<size_t>(b.dataset)];
    // The bucket's area is at most its size's, and it is wide.
    EXPECT_LE(int64_t{b.resolution.width} * b.resolution.height, int64_t{size.width} * size.height);
    EXPECT_GT(b.resolution.width, b.resolution.height);
  }
  EXPECT_EQ(datasets, (std::set<int>{0, 1, 2}));
  EXPECT_EQ(plan.steps_per_epoch(), 18);
  // Every epoch visits every size.
  std::set<int> visited;
  for (const PlannedBatch& batch : plan.epoch(42, 0)) visited.insert(plan.buckets()[batch.bucket].dataset);
  EXPECT_EQ(visited.size(), 3u);
}

// PARAMS_RESOLUTION="512,768,1024" on a bare folder, and [general] lists; a bad entry names the key.
TEST(Resolutions, FallbackAndGeneralLists) {
  const fs::path root = fluxtrain::testing::fresh_dir("multi_resolution_fallback");
  make_images(root, 3);
  ConfigOptions options;
  options.fallbacks.resolutions = {{256, 256}, {384, 384}, {512, 512}};
  options.fallbacks.resolution_origin = "PARAMS_RESOLUTION";
  const DatasetGroupConfig folder = folder_dataset_config(root, options);
  ASSERT_EQ(folder.datasets.size(), 3u);
  EXPECT_EQ(folder.datasets[0].buckets.resolution, (Resolution{256, 256}));
  EXPECT_EQ(folder.datasets[0].buckets.min_bucket_reso, 256);  // the smallest size lowers the bucket floor
  EXPECT_EQ(folder.datasets[2].origin.at("resolution"), "PARAMS_RESOLUTION, size 512x512 of 3");

  const std::string text = cat("[general]\nresolution = [[512, 512], [1024, 768]]\n[[datasets]]\n",
                               "[[datasets.subsets]]\nimage_dir = \"", root.string(), "\"\n");
  const DatasetGroupConfig general = parse_dataset_config(text, ConfigFormat::toml, "general.toml");
  ASSERT_EQ(general.datasets.size(), 2u);
  EXPECT_EQ(general.datasets[1].buckets.resolution, (Resolution{1024, 768}));
  EXPECT_EQ(general.datasets[1].origin.at("resolution"), "general, size 1024x768 of 2");

  expect_error(
      [&] {
        parse_dataset_config(cat("[[datasets]]\nresolution = [512, 768, 99999]\n[[datasets.subsets]]\nimage_dir = \"",
                                 root.string(), "\"\n"),
                             ConfigFormat::toml, "bad.toml");
      },
      {"'resolution' = [512,768,99999] is out of range", "64 to 16384"});
}
