// Folders as people ship them (docs/data.md): the label-file classifier (YOLO numbers, labels/ folders,
// class lists, COCO JSON), recursive discovery, and captionless images taking class_tokens or
// default_caption while label files are never captions.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "data/captions.h"
#include "data/dataset.h"
#include "data/dataset_config.h"
#include "data/label_files.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;
using fluxtrain::testing::write_file;

namespace {

ScanOptions any_size() {
  ScanOptions options;
  options.probe = [](const fs::path&) { return Resolution{512, 512}; };
  return options;
}

// A detection dataset as Kaggle ships it: images/{train,val}/*.jpg, labels/{train,val}/*.txt (YOLO),
// classes.txt, a CSV, COCO annotations, a segmentation mask PNG under labels/.
fs::path kaggle_tree(const std::string& name) {
  const fs::path root = fluxtrain::testing::fresh_dir(name);
  for (const char* split : {"train", "val"}) {
    for (int i = 0; i < 3; ++i) {
      const std::string stem = std::string(split) + std::to_string(i);
      write_file(root / "images" / split / (stem + ".jpg"), "");
      write_file(root / "labels" / split / (stem + ".txt"), "0 0.51 0.43 0.2 0.3\n1 0.1 0.2 0.05 0.07\n");
    }
  }
  write_file(root / "labels" / "train" / "mask0.png", "");
  write_file(root / "classes.txt", "cat\ndog\n");
  write_file(root / "data.names", "cat\ndog\n");
  write_file(root / "boxes.csv", "image,xmin,ymin,xmax,ymax,label\ntrain0.jpg,1,2,3,4,cat\n");
  write_file(root / "annotations" / "instances_train.json",
             R"({"info": {}, "images": [{"id": 1, "file_name": "train0.jpg"}], "annotations": [], "categories": []})");
  return root;
}

std::vector<std::string> relative_paths(const DatasetPlan& plan, const fs::path& root) {
  std::vector<std::string> out;
  for (const DatasetImage& image : plan.images()) out.push_back(image.path.lexically_relative(root).generic_string());
  return out;
}

}  // namespace

TEST(LabelFiles, YoloLines) {
  EXPECT_TRUE(is_yolo_line("0 0.51 0.43 0.2 0.3"));
  EXPECT_TRUE(is_yolo_line("12\t0.5\t0.5\t1\t1"));
  EXPECT_TRUE(is_yolo_line("  3 .5 5. 1e-3 2.5E+1  "));
  EXPECT_TRUE(is_yolo_line("0 0.1 0.1 0.9 0.1 0.9 0.9"));              // polygon: 6 numbers
  EXPECT_TRUE(is_yolo_line("0 0.5 0.5 0.2 0.3 0.4 0.4 2 0.6 0.6 1"));  // box + pose keypoints
  EXPECT_FALSE(is_yolo_line("0 0.5 0.5 0.2"));                         // 3 numbers: too few
  EXPECT_FALSE(is_yolo_line("0.0 0.5 0.5 0.2 0.3"));                   // the class id is an integer
  EXPECT_FALSE(is_yolo_line("-1 0.5 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("cat 0.5 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("0 0.5 0.5 0.2 0.3 person"));
  EXPECT_FALSE(is_yolo_line("0, 0.5, 0.5, 0.2, 0.3"));
  EXPECT_FALSE(is_yolo_line("0 nan 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("0 inf 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("0 1e400 0.5 0.2 0.3"));  // not finite
  EXPECT_FALSE(is_yolo_line("0 0x1 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("0 1e 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("0 . 0.5 0.2 0.3"));
  EXPECT_FALSE(is_yolo_line("a photo of ohwx, 2 dogs"));
  EXPECT_FALSE(is_yolo_line("1girl, solo, 1 2 3 4"));
  EXPECT_FALSE(is_yolo_line(""));
}

TEST(LabelFiles, YoloText) {
  EXPECT_TRUE(is_yolo_text("0 0.51 0.43 0.2 0.3\n"));
  EXPECT_TRUE(
      is_yolo_text("\xEF\xBB\xBF"
                   "0 0.5 0.5 0.2 0.3\r\n\r\n1 0.1 0.2 0.3 0.4\r\n"));
  EXPECT_TRUE(is_yolo_text("0 0.5 0.5 0.2 0.3\r1 0.1 0.2 0.3 0.4"));
  EXPECT_FALSE(is_yolo_text(""));  // an empty file is an empty caption, not labels
  EXPECT_FALSE(is_yolo_text("  \n\n"));
  // One caption line among numbers makes the whole file a caption file.
  EXPECT_FALSE(is_yolo_text("a red square\n0 0.5 0.5 0.2 0.3\n"));
  EXPECT_FALSE(is_yolo_text("0 0.5 0.5 0.2 0.3\nohwx\n"));
  EXPECT_FALSE(is_yolo_text("a photo of ohwx person"));
}

TEST(LabelFiles, CocoJson) {
  EXPECT_TRUE(looks_like_coco_json(R"({"images": [], "annotations": [], "categories": []})"));
  EXPECT_TRUE(looks_like_coco_json("\n  {\"info\": {},\n \"annotations\" : [],\n\"images\"\t:[]}"));
  EXPECT_FALSE(looks_like_coco_json(R"({"images": []})"));
  EXPECT_FALSE(looks_like_coco_json(R"(["images", "annotations"])"));
  EXPECT_FALSE(looks_like_coco_json(R"({"caption": "images and annotations"})"));  // words, not keys
  EXPECT_FALSE(looks_like_coco_json("images annotations"));
}

TEST(LabelFiles, ByNameAndByContent) {
  EXPECT_EQ(label_kind_by_name("labels/train/a.txt"), LabelKind::labels_dir);
  EXPECT_EQ(label_kind_by_name("train/Labels/a.txt"), LabelKind::labels_dir);
  EXPECT_EQ(label_kind_by_name("labels.txt"), LabelKind::none);  // a file named labels, not a folder
  EXPECT_EQ(label_kind_by_name("labels/readme.md"), LabelKind::none);
  EXPECT_EQ(label_kind_by_name("classes.txt"), LabelKind::class_list);
  EXPECT_EQ(label_kind_by_name("data/CLASSES.TXT"), LabelKind::class_list);
  EXPECT_EQ(label_kind_by_name("coco.names"), LabelKind::class_list);
  EXPECT_EQ(label_kind_by_name("images/a.txt"), LabelKind::none);
  EXPECT_EQ(classify_label_file("a.txt", "0 0.5 0.5 0.2 0.3\n"), LabelKind::yolo);
  EXPECT_EQ(classify_label_file("a.txt", "a photo of ohwx\n"), LabelKind::none);
  EXPECT_EQ(classify_label_file("ann/x.json", R"({"images": [], "annotations": []})"), LabelKind::coco_json);
  EXPECT_EQ(classify_label_file("x.json", "0 0.5 0.5 0.2 0.3"), LabelKind::none);    // YOLO is text, not JSON
  EXPECT_EQ(classify_label_file("labels/a.txt", "a photo"), LabelKind::labels_dir);  // the folder decides
  EXPECT_TRUE(is_annotation_folder("labels"));
  EXPECT_TRUE(is_annotation_folder("Masks"));
  EXPECT_TRUE(is_annotation_folder("annotations"));
  EXPECT_FALSE(is_annotation_folder("images"));
  EXPECT_STREQ(describe(LabelKind::yolo), "YOLO labels");
}

// A caption file of YOLO numbers beside its image is not a caption; a real caption is.
TEST(LabelFiles, CaptionFileOfLabelsIsNotACaption) {
  const fs::path root = fluxtrain::testing::fresh_dir("label_caption");
  write_file(root / "a.txt", "0 0.51 0.43 0.2 0.3\n");
  write_file(root / "b.txt", "a photo of ohwx\n");
  write_file(root / "c.json", R"({"images": [], "annotations": []})");
  CaptionFile a = read_caption_file(root / "a.jpg", ".txt");
  EXPECT_FALSE(a.found);
  EXPECT_FALSE(a.empty);
  EXPECT_EQ(a.label, LabelKind::yolo);
  EXPECT_EQ(a.text, "");
  CaptionFile b = read_caption_file(root / "b.jpg", ".txt");
  EXPECT_TRUE(b.found);
  EXPECT_EQ(b.label, LabelKind::none);
  EXPECT_EQ(b.text, "a photo of ohwx");
  EXPECT_EQ(read_caption_file(root / "c.jpg", ".json").label, LabelKind::coco_json);
}

// A bare folder reads its sub-folders; labels are never captions; class lists, COCO JSON and the YOLO
// tree are counted as ignored label files; the mask under labels/ is not a training image.
TEST(LabelFiles, BareKaggleFolderIsRecursiveAndCaptionless) {
  const fs::path root = kaggle_tree("kaggle_bare");
  write_file(root / "images" / "train" / "train1.txt", "a real caption\n");  // a true caption is used
  DatasetGroupConfig config = folder_dataset_config(root);
  ASSERT_EQ(config.datasets.at(0).subsets.size(), 1u);
  EXPECT_TRUE(config.datasets[0].subsets[0].recursive);
  EXPECT_EQ(config.datasets[0].subsets[0].origin.at("recursive"), "folder default");
  const DatasetPlan plan = DatasetPlan::build(config, any_size());
  EXPECT_EQ(relative_paths(plan, root),
            (std::vector<std::string>{"images/train/train0.jpg", "images/train/train1.jpg", "images/train/train2.jpg",
                                      "images/val/val0.jpg", "images/val/val1.jpg", "images/val/val2.jpg"}));
  for (const DatasetImage& image : plan.images()) {
    const bool captioned = image.path.filename() == "train1.jpg";
    EXPECT_EQ(image.caption, captioned ? "a real caption" : "") << image.path;
    EXPECT_EQ(image.caption_from_file, captioned);
  }
  const SubsetStats& stats = plan.subset_stats()[0][0];
  EXPECT_EQ(stats.images, 6);
  EXPECT_EQ(stats.missing_captions, 5);
  EXPECT_EQ(stats.label_captions, 0);
  EXPECT_EQ(stats.label_files, 6 + 3);  // labels/**.txt, classes.txt, data.names, the COCO json
  EXPECT_EQ(stats.annotation_images, 1);
  EXPECT_EQ(plan.captionless_images(), 5);
  EXPECT_EQ(plan.label_files_ignored(), 9);
  EXPECT_NE(plan.summary().find("5 without a caption, 9 label files ignored (not captions)"), std::string::npos)
      << plan.summary();
}

// YOLO files beside the images (a flat export) leave those images captionless: they take class_tokens,
// or default_caption where a subset has none; a dataset config leaves sub-folders alone unless image_dir
// holds no images itself.
TEST(LabelFiles, ConfigClassTokensAndDefaultCaption) {
  const fs::path root = fluxtrain::testing::fresh_dir("label_config");
  for (const char* stem : {"a", "b", "c"}) write_file(root / "flat" / (std::string(stem) + ".jpg"), "");
  write_file(root / "flat" / "a.txt", "0 0.5 0.5 0.2 0.3\n");
  write_file(root / "flat" / "b.txt", "ohwx on grass\n");
  write_file(root / "flat" / "nested" / "d.jpg", "");
  write_file(root / "flat" / "classes.txt", "dog\n");
  const std::string toml =
      "[general]\ncaption_extension = \".txt\"\n[[datasets]]\n"
      "  [[datasets.subsets]]\n  image_dir = \"" +
      (root / "flat").string() +
      "\"\n  class_tokens = \"ohwx dog\"\n"
      "  [[datasets.subsets]]\n  image_dir = \"" +
      (root / "flat").string() + "/nested\"\n  default_caption = \"a photo\"\n";
  DatasetGroupConfig config = parse_dataset_config(toml, ConfigFormat::toml, "t.toml");
  EXPECT_FALSE(config.datasets[0].subsets[0].recursive);  // kohya's default in a config
  EXPECT_EQ(config.datasets[0].subsets[0].origin.at("recursive"), "default");
  const DatasetPlan plan = DatasetPlan::build(config, any_size());
  std::map<std::string, std::string> captions;
  for (const DatasetImage& image : plan.images()) captions[image.path.filename().string()] = image.caption;
  EXPECT_EQ(captions,
            (std::map<std::string, std::string>{
                {"a.jpg", "ohwx dog"}, {"b.jpg", "ohwx on grass"}, {"c.jpg", "ohwx dog"}, {"d.jpg", "a photo"}}));
  EXPECT_EQ(plan.subset_stats()[0][0].label_captions, 1);
  EXPECT_EQ(plan.subset_stats()[0][0].label_files, 2);  // a.txt beside a.jpg, classes.txt
  EXPECT_EQ(plan.subset_stats()[0][0].missing_captions, 2);

  // default_caption through the fallback (PARAMS_DEFAULT_CAPTION), and class_tokens still first.
  ConfigOptions options;
  options.fallbacks.default_caption = "a picture";
  options.fallbacks.default_caption_origin = "PARAMS_DEFAULT_CAPTION";
  const std::string plain = "[[datasets]]\n  [[datasets.subsets]]\n  image_dir = \"" + (root / "flat").string() +
                            "\"\n  caption_extension = \".txt\"\n";
  config = parse_dataset_config(plain, ConfigFormat::toml, "p.toml", options);
  EXPECT_EQ(config.datasets[0].subsets[0].default_caption, "a picture");
  EXPECT_EQ(config.datasets[0].subsets[0].origin.at("default_caption"), "PARAMS_DEFAULT_CAPTION");
  const DatasetPlan fallback = DatasetPlan::build(config, any_size());
  EXPECT_EQ(fallback.images().at(0).caption, "a picture");  // a.jpg: YOLO beside it
  EXPECT_EQ(fallback.images().at(1).caption, "ohwx on grass");
}

// A config subset whose image_dir holds no images of its own reads its sub-folders (kohya would find
// none); recursive = false keeps kohya's behaviour and its error; recursive = true reads sub-folders of a
// folder that has images too.
TEST(LabelFiles, ConfigRecursion) {
  const fs::path root = kaggle_tree("label_recursion");
  const std::string json = R"({"general": {"class_tokens": "ohwx", "caption_extension": ".txt"},
      "datasets": [{"subsets": [{"image_dir": ")" +
                           root.string() + R"("}]}]})";
  DatasetGroupConfig config = parse_dataset_config(json, ConfigFormat::json, "seed.json");
  EXPECT_TRUE(config.datasets[0].subsets[0].recursive);
  EXPECT_EQ(config.datasets[0].subsets[0].origin.at("recursive"), "no images at the top of image_dir");
  const DatasetPlan plan = DatasetPlan::build(config, any_size());
  EXPECT_EQ(plan.images().size(), 6u);
  for (const DatasetImage& image : plan.images()) EXPECT_EQ(image.caption, "ohwx");

  const std::string off =
      R"({"datasets": [{"subsets": [{"image_dir": ")" + root.string() + R"(", "recursive": false}]}]})";
  config = parse_dataset_config(off, ConfigFormat::json, "off.json");
  EXPECT_FALSE(config.datasets[0].subsets[0].recursive);
  expect_error([&] { DatasetPlan::build(config, any_size()); }, {"no usable training image", root.string()});

  write_file(root / "top.jpg", "");
  const std::string on =
      R"({"datasets": [{"subsets": [{"image_dir": ")" + root.string() + R"(", "recursive": true}]}]})";
  EXPECT_EQ(DatasetPlan::build(parse_dataset_config(on, ConfigFormat::json, "on.json"), any_size()).images().size(),
            7u);
  // With an image at the top, an unset recursive stays kohya's: the top folder alone.
  const std::string unset = R"({"datasets": [{"subsets": [{"image_dir": ")" + root.string() + R"("}]}]})";
  config = parse_dataset_config(unset, ConfigFormat::json, "unset.json");
  EXPECT_FALSE(config.datasets[0].subsets[0].recursive);
  EXPECT_EQ(DatasetPlan::build(config, any_size()).images().size(), 1u);
  expect_error(
      [&] {
        parse_dataset_config(R"({"datasets": [{"subsets": [{"image_dir": "/", "recursive": "yes"}]}]})",
                             ConfigFormat::json, "bad.json");
      },
      {"bad.json", "'recursive'", "expected true or false"});
}
