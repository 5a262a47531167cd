// The torch-free dataset plan: steps per epoch over buckets, config resolution and its errors,
// regularisation balancing, the epoch plan and the validation split (the buckets: test_buckets.cpp). Image sizes come from a probe that reads them from a map
// keyed by file name (the image decoder has its own tests), so any size can be planned without pixels.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "core/error.h"
#include "data/buckets.h"
#include "data/captions.h"
#include "data/dataset.h"
#include "data/dataset_config.h"
#include "data/rng.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;
using fluxtrain::testing::write_file;

namespace {

// Sizes by file name; a name that starts with "bad" is unreadable.
struct MapProbe {
  std::map<std::string, Resolution> sizes;
  Resolution fallback{1024, 1024};
  Resolution operator()(const fs::path& path) const {
    const std::string name = path.filename().string();
    if (name.rfind("bad", 0) == 0) fail(path.string(), ": truncated JPEG");
    auto it = sizes.find(name);
    return it == sizes.end() ? fallback : it->second;
  }
};

ScanOptions scan_with(MapProbe probe) {
  ScanOptions options;
  options.probe = probe;
  return options;
}

// A dataset config from TOML / JSON text, relative paths under `base`.
DatasetGroupConfig toml_config(const std::string& text, const fs::path& base = {}) {
  ConfigOptions options;
  options.base_dir = base;
  return parse_dataset_config(text, ConfigFormat::toml, "test.toml", options);
}

DatasetGroupConfig json_config(const std::string& text, const fs::path& base = {}) {
  ConfigOptions options;
  options.base_dir = base;
  return parse_dataset_config(text, ConfigFormat::json, "test.json", options);
}

void make_images(const fs::path& dir, int count, const std::string& prefix = "img") {
  fs::create_directories(dir);
  for (int i = 0; i < count; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "%s_%04d.jpg", prefix.c_str(), i);
    write_file(dir / name, "");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// steps per epoch: the seed's 400 images at 1280x768

TEST(DatasetPlanTest, SeedTableStepsPerEpoch) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_seed_table");
  make_images(root / "images", 400);
  MapProbe probe;
  probe.fallback = {1280, 768};
  const std::map<int, int> expected = {{4, 100}, {8, 50}, {16, 25}, {32, 13}, {48, 9}, {56, 8}, {60, 7}};
  for (const auto& [batch, steps] : expected) {
    const auto config =
        toml_config(cat("[general]\nresolution = 1024\nenable_bucket = true\nbucket_reso_steps = 128\n"
                        "max_bucket_reso = 2048\nbatch_size = ",
                        batch, "\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"", (root / "images").string(),
                        "\"\ncaption_extension = \".txt\"\n"));
    const DatasetPlan plan = DatasetPlan::build(config, scan_with(probe));
    EXPECT_EQ(plan.steps_per_epoch(), steps) << "batch " << batch;
    ASSERT_EQ(plan.buckets().size(), 1u);
    EXPECT_EQ(plan.buckets()[0].resolution, (Resolution{1280, 768}));
    EXPECT_EQ(plan.buckets()[0].samples, 400);
  }
}

TEST(DatasetPlanTest, StepsSumOverBucketsAndDatasets) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_steps_sum");
  make_images(root / "a", 10, "wide");
  make_images(root / "a", 7, "tall");
  make_images(root / "b", 5, "sq");
  MapProbe probe;
  for (int i = 0; i < 10; ++i) probe.sizes[cat("wide_000", i, ".jpg")] = {1280, 768};
  for (int i = 0; i < 7; ++i) probe.sizes[cat("tall_000", i, ".jpg")] = {768, 1280};
  const auto config = toml_config(cat(R"(
[general]
enable_bucket = true
max_bucket_reso = 2048
[[datasets]]
batch_size = 4
  [[datasets.subsets]]
  image_dir = ")",
                                      (root / "a").string(), R"("
  num_repeats = 3
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = ")",
                                      (root / "b").string(), R"("
)"));
  const DatasetPlan plan = DatasetPlan::build(config, scan_with(probe));
  // wide: 30 samples / 4 = 8; tall: 21 / 4 = 6; dataset b: 5 / 2 = 3.
  EXPECT_EQ(plan.steps_per_epoch(), 8 + 6 + 3);
  EXPECT_EQ(plan.buckets().size(), 3u);
  EXPECT_EQ(plan.train_samples(), 30 + 21 + 5);
}

// ---------------------------------------------------------------------------------------------------------
// config

TEST(DatasetConfigTest, ValuesCascade) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_cascade");
  fs::create_directories(root / "x");
  fs::create_directories(root / "y");
  const auto config = toml_config(R"(
[general]
batch_size = 4
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
resolution = [1280, 768]
enable_bucket = true
max_bucket_reso = 2048

[[datasets]]
batch_size = 2
keep_tokens = 2
  [[datasets.subsets]]
  image_dir = "x"
  num_repeats = 10
  keep_tokens = 3
  class_tokens = "ohwx person"
  [[datasets.subsets]]
  image_dir = "y"
  is_reg = true

[[datasets]]
  [[datasets.subsets]]
  image_dir = "x"
  caption_extension = "caption"
)",
                                  root);
  ASSERT_EQ(config.datasets.size(), 2u);
  const DatasetConfig& d0 = config.datasets[0];
  EXPECT_EQ(d0.batch_size, 2);
  EXPECT_EQ(d0.origin.at("batch_size"), "dataset");
  EXPECT_EQ(d0.buckets.resolution, (Resolution{1280, 768}));
  EXPECT_EQ(d0.origin.at("resolution"), "general");
  EXPECT_EQ(d0.origin.at("min_bucket_reso"), "default");
  ASSERT_EQ(d0.subsets.size(), 2u);
  EXPECT_EQ(d0.subsets[0].captions.keep_tokens, 3);
  EXPECT_EQ(d0.subsets[0].origin.at("keep_tokens"), "subset");
  EXPECT_EQ(d0.subsets[1].captions.keep_tokens, 2);
  EXPECT_EQ(d0.subsets[1].origin.at("keep_tokens"), "dataset");
  EXPECT_EQ(d0.subsets[0].num_repeats, 10);
  EXPECT_EQ(d0.subsets[1].num_repeats, 1);
  EXPECT_EQ(d0.subsets[0].caption_extension, ".txt");
  EXPECT_TRUE(d0.subsets[1].captions.shuffle_caption);
  EXPECT_TRUE(d0.subsets[1].is_reg);
  EXPECT_EQ(d0.subsets[0].class_tokens, "ohwx person");
  EXPECT_EQ(d0.subsets[0].image_dir, root / "x");
  const DatasetConfig& d1 = config.datasets[1];
  EXPECT_EQ(d1.batch_size, 4);
  EXPECT_EQ(d1.origin.at("batch_size"), "general");
  EXPECT_EQ(d1.subsets[0].caption_extension, ".caption");  // the dot is added, as kohya does
  EXPECT_EQ(d1.subsets[0].captions.keep_tokens, 1);
}

TEST(DatasetConfigTest, KohyaDefaultsAndFallbacks) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_defaults");
  fs::create_directories(root / "x");
  ConfigOptions options;
  options.base_dir = root;
  const std::string text = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"x\"\n";
  auto config = parse_dataset_config(text, ConfigFormat::toml, "t.toml", options);
  const DatasetConfig& d = config.datasets[0];
  EXPECT_EQ(d.batch_size, 1);
  EXPECT_FALSE(d.buckets.enable_bucket);
  EXPECT_EQ(d.buckets.min_bucket_reso, 256);
  EXPECT_EQ(d.buckets.max_bucket_reso, 1024);
  EXPECT_EQ(d.buckets.bucket_reso_steps, 64);
  EXPECT_EQ(d.buckets.resolution, (Resolution{1024, 1024}));
  const SubsetConfig& s = d.subsets[0];
  EXPECT_EQ(s.caption_extension, ".caption");
  EXPECT_EQ(s.captions.caption_separator, ",");
  EXPECT_EQ(s.num_repeats, 1);
  EXPECT_FALSE(s.flip_aug || s.random_crop || s.is_reg || s.alpha_mask || s.captions.shuffle_caption);

  // Command-line values fill only what the config leaves unset (kohya's argparse layer).
  options.fallbacks.batch_size = 8;
  options.fallbacks.resolutions = {Resolution{768, 768}};
  config = parse_dataset_config(text, ConfigFormat::toml, "t.toml", options);
  EXPECT_EQ(config.datasets[0].batch_size, 8);
  EXPECT_EQ(config.datasets[0].origin.at("batch_size"), "--batch-size");
  EXPECT_EQ(config.datasets[0].buckets.resolution, (Resolution{768, 768}));
  config = parse_dataset_config("[general]\nbatch_size = 2\n" + text, ConfigFormat::toml, "t.toml", options);
  EXPECT_EQ(config.datasets[0].batch_size, 2);
}

// PARAMS_CAPTION_EXTENSION and PARAMS_NUM_REPEATS (the train options --caption-extension, --num-repeats):
// used wherever the config file leaves the key unset, a bare folder's ".txt" default included; a key the
// file sets at any level, or a kohya N_name folder's repeat count, wins.
TEST(DatasetConfigTest, CaptionExtensionAndRepeatsFallbacks) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_ext_fallbacks");
  fs::create_directories(root / "x");
  fs::create_directories(root / "folders" / "2_ohwx");
  ConfigOptions options;
  options.base_dir = root;
  options.fallbacks.caption_extension = ".caption";
  options.fallbacks.caption_extension_origin = "PARAMS_CAPTION_EXTENSION";
  options.fallbacks.num_repeats = 3;
  options.fallbacks.num_repeats_origin = "PARAMS_NUM_REPEATS";
  const std::string subset = "[[datasets.subsets]]\nimage_dir = \"x\"\n";
  auto config = parse_dataset_config("[[datasets]]\n" + subset, ConfigFormat::toml, "t.toml", options);
  const SubsetConfig* s = &config.datasets[0].subsets[0];
  EXPECT_EQ(s->caption_extension, ".caption");
  EXPECT_EQ(s->origin.at("caption_extension"), "PARAMS_CAPTION_EXTENSION");
  EXPECT_EQ(s->num_repeats, 3);
  EXPECT_EQ(s->origin.at("num_repeats"), "PARAMS_NUM_REPEATS");

  config = parse_dataset_config("[general]\ncaption_extension = \"txt\"\n[[datasets]]\nnum_repeats = 1\n" + subset,
                                ConfigFormat::toml, "t.toml", options);
  s = &config.datasets[0].subsets[0];
  EXPECT_EQ(s->caption_extension, ".txt");
  EXPECT_EQ(s->origin.at("caption_extension"), "general");
  EXPECT_EQ(s->num_repeats, 1);
  EXPECT_EQ(s->origin.at("num_repeats"), "dataset");

  config = folder_dataset_config(root / "x", options);
  s = &config.datasets[0].subsets[0];
  EXPECT_EQ(s->caption_extension, ".caption");  // not the bare folder's .txt
  EXPECT_EQ(s->num_repeats, 3);

  config = folder_dataset_config(root / "folders", options);
  s = &config.datasets[0].subsets[0];
  EXPECT_EQ(s->num_repeats, 2);
  EXPECT_EQ(s->origin.at("num_repeats"), "folder name");
  EXPECT_EQ(s->caption_extension, ".caption");
}

TEST(DatasetConfigTest, UnknownKeysNameKeyFileLevelAndClosest) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_unknown");
  fs::create_directories(root / "x");
  const std::string dir = (root / "x").string();
  expect_error(
      [&] {
        toml_config("[general]\nbatchsize = 4\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\n");
      },
      {"test.toml", "'batchsize'", "[general]", "did you mean 'batch_size'"});
  expect_error(
      [&] { toml_config("[[datasets]]\nresolutoin = 512\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\n"); },
      {"test.toml", "'resolutoin'", "[[datasets]] #1", "'resolution'"});
  expect_error(
      [&] { toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\nnum_repeat = 3\n"); },
      {"test.toml", "'num_repeat'", "[[datasets.subsets]] #1 of dataset #1", "'num_repeats'"});
  expect_error([&] { json_config(R"({"genral": {}, "datasets": []})"); },
               {"test.json", "'genral'", "top level", "'general'"});
  // A key at the wrong level says where it belongs.
  expect_error([&] { toml_config("[general]\nimage_dir = \"" + dir + "\"\n[[datasets]]\n"); },
               {"'image_dir'", "[general]", "[[datasets.subsets]]"});
  expect_error(
      [&] { toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\nbatch_size = 2\n"); },
      {"'batch_size'", "[[datasets.subsets]]", "[general] or [[datasets]]"});
  // kohya options fluxtrain does not implement: fine at their no-op value, an error otherwise.
  EXPECT_NO_THROW(
      toml_config("[general]\ncolor_aug = false\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\n"));
  expect_error(
      [&] {
        toml_config("[general]\ncolor_aug = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\n");
      },
      {"'color_aug'", "not implement"});
  expect_error(
      [&] {
        toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + dir + "\"\nmetadata_file = \"m.json\"\n");
      },
      {"'metadata_file'", "fine-tuning"});
}

TEST(DatasetConfigTest, TypeErrorsNameKeyValueAndType) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_types");
  fs::create_directories(root / "x");
  const std::string subset = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + (root / "x").string() + "\"\n";
  struct Case {
    std::string line, key, value, expected;
  };
  for (const Case& c : {Case{"batch_size = \"4\"", "batch_size", "\"4\"", "an integer"},
                        Case{"batch_size = 4.0", "batch_size", "4.0", "an integer"},
                        Case{"enable_bucket = \"true\"", "enable_bucket", "\"true\"", "true or false"},
                        Case{"resolution = [[1024]]", "resolution", "[[1024]]", "[width, height]"},
                        Case{"resolution = \"1024\"", "resolution", "\"1024\"", "[width, height]"},
                        Case{"caption_dropout_rate = \"0.1\"", "caption_dropout_rate", "\"0.1\"", "a number"},
                        Case{"caption_extension = 3", "caption_extension", "3", "a string"},
                        Case{"keep_tokens = true", "keep_tokens", "true", "an integer"}}) {
    expect_error([&] { toml_config("[general]\n" + c.line + "\n" + subset); },
                 {"test.toml", "[general]", "'" + c.key + "'", c.value, c.expected});
  }
  expect_error([&] { toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 5\n"); },
               {"'image_dir'", "5", "a string"});
}

TEST(DatasetConfigTest, RangesAreChecked) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_ranges");
  fs::create_directories(root / "x");
  const std::string subset = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + (root / "x").string() + "\"\n";
  for (const std::string& line :
       {std::string("batch_size = 0"), std::string("caption_dropout_rate = 1.5"),
        std::string("caption_tag_dropout_rate = -0.1"), std::string("resolution = 0"),
        std::string("resolution = [1024, -5]"), std::string("num_repeats = -1"), std::string("keep_tokens = -2"),
        std::string("caption_separator = \"\""), std::string("bucket_reso_steps = 0")}) {
    const std::string key = line.substr(0, line.find(' '));
    expect_error([&] { toml_config("[general]\n" + line + "\n" + subset); }, {"'" + key + "'"});
  }
  // Cross-key checks, after the cascade.
  expect_error([&] { toml_config("[general]\nenable_bucket = true\nbucket_reso_steps = 48\n" + subset); },
               {"bucket_reso_steps = 48", "multiple of 32"});
  expect_error([&] { toml_config("[general]\nenable_bucket = true\nresolution = 1536\n" + subset); },
               {"max_bucket_reso", "1536"});
  expect_error(
      [&] { toml_config("[general]\nenable_bucket = true\nmin_bucket_reso = 768\nresolution = 512\n" + subset); },
      {"min_bucket_reso", "512"});
  expect_error([&] { toml_config("[general]\nresolution = 1000\n" + subset); }, {"resolution", "multiple of 16"});
  expect_error([&] { toml_config("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n"); }, {"no image_dir"});
  expect_error([&] { toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"/no/such/folder\"\n"); },
               {"/no/such/folder", "is not a folder"});
  expect_error([&] { toml_config("[general]\nbatch_size = 2\n"); }, {"no [[datasets]]"});
  expect_error([&] { toml_config("[general\n"); }, {"test.toml", "TOML syntax error", "line 1"});
  expect_error([&] { json_config("{\"datasets\": [}"); }, {"test.json", "JSON syntax error"});
}

TEST(DatasetConfigTest, TomlAndJsonGiveTheSamePlan) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_toml_json");
  make_images(root / "a", 6, "w");
  make_images(root / "b", 3, "t");
  for (int i = 0; i < 6; ++i) write_file(root / "a" / cat("w_000", i, ".txt"), cat("ohwx, tag", i, ", red, blue"));
  MapProbe probe;
  for (int i = 0; i < 3; ++i) probe.sizes[cat("t_000", i, ".jpg")] = {600, 1000};
  const std::string a = (root / "a").string(), b = (root / "b").string();
  const auto from_toml = toml_config(cat(R"(
[general]
enable_bucket = true
max_bucket_reso = 2048
caption_extension = ".txt"
shuffle_caption = true
keep_tokens = 1
flip_aug = true
[[datasets]]
batch_size = 2
resolution = [1024, 1024]
  [[datasets.subsets]]
  image_dir = ")",
                                         a, R"("
  num_repeats = 2
  random_crop = true
  [[datasets.subsets]]
  image_dir = ")",
                                         b, R"("
  class_tokens = "a cat"
  caption_tag_dropout_rate = 0.2
)"));
  const auto from_json = json_config(cat(R"({
  "general": {"enable_bucket": true, "max_bucket_reso": 2048, "caption_extension": ".txt", "shuffle_caption": true,
              "keep_tokens": 1, "flip_aug": true},
  "datasets": [{"batch_size": 2, "resolution": [1024, 1024], "subsets": [
      {"image_dir": ")",
                                         a, R"(", "num_repeats": 2, "random_crop": true},
      {"image_dir": ")",
                                         b, R"(", "class_tokens": "a cat", "caption_tag_dropout_rate": 0.2}]}]
})"));
  const DatasetPlan p1 = DatasetPlan::build(from_toml, scan_with(probe));
  const DatasetPlan p2 = DatasetPlan::build(from_json, scan_with(probe));
  ASSERT_EQ(p1.images().size(), p2.images().size());
  for (size_t i = 0; i < p1.images().size(); ++i) {
    EXPECT_EQ(p1.images()[i].path, p2.images()[i].path);
    EXPECT_EQ(p1.images()[i].fit.bucket, p2.images()[i].fit.bucket);
    EXPECT_EQ(p1.images()[i].caption, p2.images()[i].caption);
  }
  EXPECT_EQ(p1.steps_per_epoch(), p2.steps_per_epoch());
  for (int epoch = 0; epoch < 3; ++epoch) {
    const auto e1 = p1.epoch(42, epoch), e2 = p2.epoch(42, epoch);
    ASSERT_EQ(e1.size(), e2.size());
    for (size_t s = 0; s < e1.size(); ++s) {
      ASSERT_EQ(e1[s].samples.size(), e2[s].samples.size());
      for (size_t k = 0; k < e1[s].samples.size(); ++k) {
        EXPECT_EQ(e1[s].samples[k].image, e2[s].samples[k].image);
        EXPECT_EQ(e1[s].samples[k].caption, e2[s].samples[k].caption);
        EXPECT_EQ(e1[s].samples[k].flipped, e2[s].samples[k].flipped);
        EXPECT_EQ(e1[s].samples[k].crop_left, e2[s].samples[k].crop_left);
      }
    }
  }
}

TEST(DatasetConfigTest, RepeatFolderConvention) {
  EXPECT_EQ(parse_repeats_folder_name("10_ohwx person"), std::make_pair(10, std::string("ohwx person")));
  EXPECT_EQ(parse_repeats_folder_name("3_a_b"), std::make_pair(3, std::string("a_b")));
  EXPECT_EQ(parse_repeats_folder_name("5"), std::make_pair(5, std::string()));
  EXPECT_FALSE(parse_repeats_folder_name("images").has_value());
  EXPECT_FALSE(parse_repeats_folder_name("x10_y").has_value());
  EXPECT_FALSE(parse_repeats_folder_name("_10").has_value());

  const fs::path root = fluxtrain::testing::fresh_dir("dataset_nname");
  make_images(root / "train" / "10_ohwx person", 2);
  make_images(root / "train" / "2_dog", 3);
  make_images(root / "train" / "notes", 1);  // ignored: no repeat count
  make_images(root / "reg" / "1_person", 4);
  write_file(root / "train" / "2_dog" / "img_0000.txt", "a dog on grass");

  // A bare folder: kohya's --train_data_dir / --reg_data_dir.
  const DatasetGroupConfig folder = folder_dataset_config(root / "train", {}, root / "reg");
  ASSERT_EQ(folder.datasets.size(), 1u);
  const auto& subsets = folder.datasets[0].subsets;
  ASSERT_EQ(subsets.size(), 3u);
  EXPECT_EQ(subsets[0].image_dir, root / "train" / "10_ohwx person");
  EXPECT_EQ(subsets[0].num_repeats, 10);
  EXPECT_EQ(subsets[0].class_tokens, "ohwx person");
  EXPECT_EQ(subsets[0].origin.at("num_repeats"), "folder name");
  EXPECT_EQ(subsets[1].num_repeats, 2);
  EXPECT_EQ(subsets[1].class_tokens, "dog");
  EXPECT_TRUE(subsets[2].is_reg);
  EXPECT_EQ(subsets[2].caption_extension, ".txt");
  EXPECT_TRUE(folder.datasets[0].buckets.enable_bucket);

  const DatasetPlan plan = DatasetPlan::build(folder, scan_with(MapProbe{}));
  std::map<std::string, std::string> captions;
  for (const DatasetImage& image : plan.images()) {
    captions[image.path.parent_path().filename().string() + "/" + image.path.filename().string()] = image.caption;
  }
  EXPECT_EQ(captions.at("10_ohwx person/img_0000.jpg"), "ohwx person");  // class tokens fallback
  EXPECT_EQ(captions.at("2_dog/img_0000.jpg"), "a dog on grass");
  EXPECT_EQ(captions.at("2_dog/img_0001.jpg"), "dog");
  EXPECT_EQ(plan.train_samples(), 2 * 10 + 3 * 2);
  EXPECT_EQ(plan.reg_samples(), 26);  // balanced to the training samples

  // A config whose image_dir is the parent folder expands the same way; a subset key still wins.
  const auto config = toml_config(cat("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"", (root / "train").string(),
                                      "\"\nclass_tokens = \"sks\"\n"));
  ASSERT_EQ(config.datasets[0].subsets.size(), 2u);
  EXPECT_EQ(config.datasets[0].subsets[0].num_repeats, 10);
  EXPECT_EQ(config.datasets[0].subsets[0].class_tokens, "sks");
  EXPECT_EQ(config.datasets[0].subsets[1].num_repeats, 2);
}

TEST(DatasetConfigTest, BareFolderDefaults) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_bare");
  make_images(root, 3);
  ConfigOptions options;
  options.fallbacks.resolutions = {Resolution{512, 512}};
  const auto config = folder_dataset_config(root, options);
  ASSERT_EQ(config.datasets[0].subsets.size(), 1u);
  const DatasetConfig& d = config.datasets[0];
  EXPECT_EQ(d.buckets.resolution, (Resolution{512, 512}));  // the command line beats the folder defaults
  EXPECT_EQ(d.buckets.max_bucket_reso, 2048);
  EXPECT_EQ(d.buckets.bucket_reso_steps, 64);
  EXPECT_EQ(d.origin.at("max_bucket_reso"), "folder default");
  EXPECT_EQ(d.subsets[0].num_repeats, 1);
  expect_error([&] { folder_dataset_config(root / "missing"); }, {"missing", "does not exist"});
}

// ---------------------------------------------------------------------------------------------------------
// scan and epoch plan

TEST(DatasetPlanTest, ScanSkipsUnreadableAndPairsCaptions) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_scan");
  make_images(root / "img", 3);
  write_file(root / "img" / "bad_one.jpg", "");
  write_file(root / "img" / "UPPER.PNG", "");
  write_file(root / "img" / "photo.WebP", "");
  write_file(root / "img" / ".hidden.jpg", "");
  write_file(root / "img" / "notes.gif", "");
  write_file(root / "img" / "sub" / "deep.jpg", "");  // not recursive
  write_file(root / "img" / "img_0001.txt", "caption one\n");
  write_file(root / "img" / "img_0002.caption", "ignored (wrong extension)");
  const auto config = toml_config(cat("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"", (root / "img").string(),
                                      "\"\ncaption_extension = \".txt\"\nclass_tokens = \"thing\"\n"));
  const DatasetPlan plan = DatasetPlan::build(config, scan_with(MapProbe{}));
  std::vector<std::string> names;
  for (const auto& image : plan.images()) names.push_back(image.path.filename().string());
  EXPECT_EQ(names,
            (std::vector<std::string>{"UPPER.PNG", "img_0000.jpg", "img_0001.jpg", "img_0002.jpg", "photo.WebP"}));
  ASSERT_EQ(plan.skipped().size(), 1u);
  EXPECT_EQ(plan.skipped()[0].path.filename(), "bad_one.jpg");
  EXPECT_NE(plan.skipped()[0].reason.find("truncated JPEG"), std::string::npos);
  EXPECT_EQ(plan.images()[2].caption, "caption one");
  EXPECT_TRUE(plan.images()[2].caption_from_file);
  EXPECT_EQ(plan.images()[3].caption, "thing");
  EXPECT_EQ(plan.subset_stats()[0][0].missing_captions, 4);
  EXPECT_EQ(plan.subset_stats()[0][0].skipped, 1);
  EXPECT_NE(plan.summary().find("loaded 5 images, 4 without a caption, skipped 1: bad_one.jpg ("), std::string::npos)
      << plan.summary();

  // An invalid caption stops the scan with the file's name.
  write_file(root / "img" / "img_0000.txt", "caf\xE9");
  expect_error([&] { DatasetPlan::build(config, scan_with(MapProbe{})); }, {"img_0000.txt", "UTF-8"});
}

TEST(DatasetPlanTest, NoUsableImageNamesTheFolders) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_empty");
  fs::create_directories(root / "empty");
  write_file(root / "broken" / "bad.jpg", "");
  const auto config = toml_config(cat("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"", (root / "empty").string(),
                                      "\"\n[[datasets.subsets]]\nimage_dir = \"", (root / "broken").string(), "\"\n"));
  expect_error([&] { DatasetPlan::build(config, scan_with(MapProbe{})); },
               {"no usable training image", (root / "empty").string(), (root / "broken").string(), "1 files skipped"});
}

TEST(DatasetPlanTest, RegularisationBalancedLikeKohya) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_reg");
  make_images(root / "train", 10);
  make_images(root / "reg", 3);
  auto build = [&](int train_repeats, int reg_repeats) {
    return DatasetPlan::build(
        toml_config(cat("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"", (root / "train").string(),
                        "\"\nnum_repeats = ", train_repeats, "\n[[datasets.subsets]]\nimage_dir = \"",
                        (root / "reg").string(), "\"\nis_reg = true\nnum_repeats = ", reg_repeats, "\n")),
        scan_with(MapProbe{}));
  };
  // 10 training samples, 3 reg images: first pass 1,1,1, then one more each round-robin -> 4,3,3.
  DatasetPlan plan = build(1, 1);
  std::vector<int> reg;
  for (const auto& image : plan.images()) {
    if (image.is_reg) reg.push_back(image.num_repeats);
  }
  EXPECT_EQ(reg, (std::vector<int>{4, 3, 3}));
  EXPECT_EQ(plan.reg_samples(), 10);
  EXPECT_EQ(plan.steps_per_epoch(), 20);
  // More reg samples than training samples: the first pass stops early (6 + 6 >= 10), the third is unused.
  plan = build(1, 6);
  reg.clear();
  for (const auto& image : plan.images()) {
    if (image.is_reg) reg.push_back(image.num_repeats);
  }
  EXPECT_EQ(reg, (std::vector<int>{6, 6, 0}));
}

TEST(DatasetPlanTest, EpochPlanIsDeterministicAndAddressable) {
  const fs::path root = fluxtrain::testing::fresh_dir("dataset_epochs");
  make_images(root / "a", 9, "wide");
  make_images(root / "a", 5, "tall");
  MapProbe probe;
  for (int i = 0; i < 5; ++i) probe.sizes[cat("tall_000", i, ".jpg")] = {700, 1200};
  for (int i = 0; i < 9; ++i) probe.sizes[cat("wide_000", i, ".jpg")] = {1500, 1000};
  const auto config = toml_config(cat(R"(
[general]
enable_bucket = true
max_bucket_reso = 2048
batch_size = 4
flip_aug = true
random_crop = true
shuffle_caption = true
class_tokens = "a, b, c, d, e"
[[datasets]]
  [[datasets.subsets]]
  image_dir = ")",
                                      (root / "a").string(), R"("
  num_repeats = 3
)"));
  const DatasetPlan plan = DatasetPlan::build(config, scan_with(probe));
  EXPECT_EQ(plan.steps_per_epoch(), 7 + 4);  // 27 / 4 and 15 / 4, rounded up

  auto signature = [](const std::vector<PlannedBatch>& batches) {
    std::string out;
    for (const auto& b : batches) {
      out += cat("[", b.bucket);
      for (const auto& s : b.samples)
        out += cat(" ", s.image, ".", s.repeat, s.flipped ? "f" : "", s.crop_left, ",", s.crop_top, s.caption);
      out += "]";
    }
    return out;
  };
  const auto e0 = plan.epoch(1234, 0);
  EXPECT_EQ(signature(e0), signature(plan.epoch(1234, 0)));
  EXPECT_NE(signature(e0), signature(plan.epoch(1234, 1)));
  EXPECT_NE(signature(e0), signature(plan.epoch(99, 0)));
  // Any step can be recomputed alone (resume).
  for (int64_t step = 0; step < plan.steps_per_epoch(); ++step) {
    EXPECT_EQ(signature({plan.batch(1234, 0, step)}), signature({e0[size_t(step)]})) << step;
  }
  expect_error([&] { plan.batch(1234, 0, plan.steps_per_epoch()); }, {"outside the epoch"});
  // Every image appears num_repeats times, each batch is from one bucket, only the last batch of a bucket is short.
  std::map<int, int> count;
  std::map<int, int> short_batches;
  int flipped = 0, total = 0;
  for (const auto& b : e0) {
    EXPECT_LE(b.samples.size(), 4u);
    if (b.samples.size() < 4) ++short_batches[b.bucket];
    for (const auto& s : b.samples) {
      ++count[s.image];
      EXPECT_EQ(plan.images()[size_t(s.image)].fit.bucket, plan.buckets()[size_t(b.bucket)].resolution);
      const BucketFit& fit = plan.images()[size_t(s.image)].fit;
      EXPECT_LE(s.crop_left, fit.resized.width - fit.bucket.width);
      EXPECT_LE(s.crop_top, fit.resized.height - fit.bucket.height);
      flipped += s.flipped;
      ++total;
    }
  }
  EXPECT_EQ(count.size(), 14u);
  for (const auto& [image, n] : count) EXPECT_EQ(n, 3) << image;
  for (const auto& [bucket, n] : short_batches) EXPECT_EQ(n, 1) << bucket;
  EXPECT_GT(flipped, 0);
  EXPECT_LT(flipped, total);
}

TEST(DataRngTest, PortableValues) {
  // Fixed outputs: the stream must not depend on the platform or standard library.
  DataRng rng(0);
  EXPECT_EQ(rng.next(), 0xe220a8397b1dcdafULL);  // SplitMix64 from state 0 (Vigna's reference)
  EXPECT_EQ(rng.next(), 0x6e789e6aa1b965f4ULL);
  DataRng r2(123);
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 60000; ++i) ++counts[size_t(r2.below(6))];
  for (int c : counts) EXPECT_NEAR(c, 10000, 500);
  for (int i = 0; i < 1000; ++i) {
    const double u = r2.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

// ---------------------------------------------------------------------------------------------------------
// validation split (kohya's validation_split): held-out images leave training and form the validation plan

TEST(Validation, SplitHoldsOutImagesDeterministicallyAndStably) {
  const fs::path dir = fluxtrain::testing::fresh_dir("validation_split");
  make_images(dir / "a", 10);
  const std::string text = "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + (dir / "a").string() +
                           "\"\nvalidation_split = 0.3\n";
  DatasetGroupConfig config = toml_config(text);
  ASSERT_DOUBLE_EQ(config.datasets[0].subsets[0].validation_split, 0.3);
  ScanOptions scan = scan_with({});
  scan.seed = 7;
  const DatasetPlan training = DatasetPlan::build(config, scan);
  scan.part = DatasetPart::validation;
  const DatasetPlan validation = DatasetPlan::build(config, scan);
  ASSERT_EQ(training.images().size(), 7u);
  ASSERT_EQ(validation.images().size(), 3u);
  std::set<fs::path> seen;
  for (const auto& i : training.images()) seen.insert(i.path);
  for (const auto& i : validation.images()) EXPECT_TRUE(seen.insert(i.path).second) << i.path << " is in both";
  EXPECT_EQ(seen.size(), 10u);
  // The same seed holds out the same images; another seed others; an eleventh image moves none of them.
  scan.seed = 7;
  const auto again = DatasetPlan::build(config, scan);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(again.images()[i].path, validation.images()[i].path);
  make_images(dir / "b", 1, "zz");
  fs::rename(dir / "b" / "zz_0000.jpg", dir / "a" / "zz_0000.jpg");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir / "a")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  const auto held = held_out_images(files, config.datasets[0].subsets[0], 7);
  ASSERT_EQ(held.size(), 3u);  // round(11 x 0.3)
  for (const auto& i : validation.images())
    EXPECT_TRUE(std::count(held.begin(), held.end(), i.path) || held.back() == dir / "a" / "zz_0000.jpg") << i.path;
  SubsetConfig other = config.datasets[0].subsets[0];
  other.validation_seed = 1234;
  EXPECT_NE(held_out_images(files, other, 7), held);
  // Every held-out image once, without repeats, flips or caption changes.
  for (const auto& i : validation.images()) EXPECT_EQ(i.num_repeats, 1);
  EXPECT_EQ(validation.steps_per_epoch(), 3);
}

TEST(Validation, WholeSubsetsRegularisationAndBounds) {
  const fs::path dir = fluxtrain::testing::fresh_dir("validation_whole");
  make_images(dir / "train", 4);
  make_images(dir / "val", 2, "v");
  make_images(dir / "reg", 3, "r");
  const std::string text = "[general]\nvalidation_split = 0.5\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" +
                           (dir / "train").string() + "\"\nvalidation_split = 0\n[[datasets.subsets]]\nimage_dir = \"" +
                           (dir / "val").string() + "\"\nvalidation_split = 1.0\n[[datasets.subsets]]\nimage_dir = \"" +
                           (dir / "reg").string() + "\"\nis_reg = true\n";
  const DatasetGroupConfig config = toml_config(text);
  ScanOptions scan = scan_with({});
  const DatasetPlan training = DatasetPlan::build(config, scan);
  scan.part = DatasetPart::validation;
  const DatasetPlan validation = DatasetPlan::build(config, scan);
  EXPECT_EQ(training.train_samples(), 4);  // the whole val subset left training; reg images are never held out
  ASSERT_EQ(validation.images().size(), 2u);
  for (const auto& i : validation.images()) EXPECT_EQ(i.path.parent_path(), dir / "val");
  // A lone image stays in training (round would take all of it).
  SubsetConfig one;
  one.image_dir = dir;
  one.validation_split = 0.5;
  EXPECT_TRUE(held_out_images({dir / "x.jpg"}, one, 1).empty());
  one.validation_split = 0.01;
  EXPECT_EQ(held_out_images({dir / "x.jpg", dir / "y.jpg", dir / "z.jpg"}, one, 1).size(), 1u);  // at least one
  fluxtrain::testing::expect_error([&] {
    toml_config("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + (dir / "train").string() +
                "\"\nvalidation_split = 1.5\n");
  }, {"validation_split", "1.5", "a fraction from 0 to 1"});
}
