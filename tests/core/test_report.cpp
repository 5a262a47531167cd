// The pictures of a run (src/report/report.h): the sample grid's columns and size, the loss plot, the
// checkpoints and their validation loss, and report.html without an external reference.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <span>
#include <string>

#include "data/image.h"
#include "report/report.h"
#include "temp_dir.h"

namespace fluxtrain::report {
namespace {
namespace fs = std::filesystem;

data::ImageInfo info_of(const std::string& png) {
  return data::probe_image_bytes(std::span(reinterpret_cast<const uint8_t*>(png.data()), png.size()), "png");
}

void sample_png(const fs::path& path, int w, int h, uint8_t shade, const std::string& prompt) {
  data::Image image{w, h, 3, std::vector<uint8_t>(static_cast<size_t>(w * h * 3), shade)};
  data::save_png(path, image, {{"Description", prompt}});
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

TEST(Report, GridHasAColumnPerSampledStepAndARowPerPrompt) {
  const fs::path dir = fluxtrain::testing::fresh_dir("report_grid");
  fs::create_directories(dir / "samples");
  for (int step : {0, 100, 200}) {
    for (int idx : {0, 1}) {
      char name[64];
      std::snprintf(name, sizeof name, "lora_%06d_%02d_42.png", step, idx);
      sample_png(dir / "samples" / name, 64, 32, static_cast<uint8_t>(50 * idx + step / 4), "prompt " + std::to_string(idx));
    }
  }
  sample_png(dir / "samples" / "other_000100_00_1.png", 8, 8, 0, "not this run");
  const SampleIndex index = scan_samples(dir / "samples", "lora");
  ASSERT_EQ(index.by_step.size(), 3u);
  EXPECT_EQ(index.prompts.at(1), "prompt 1");
  EXPECT_EQ(grid_steps(index, 100), (std::vector<int64_t>{0, 100}));
  const auto grid = draw_sample_grid(index, 100);
  ASSERT_TRUE(grid);
  const auto [w, h] = grid_size(2, 2);
  EXPECT_EQ(info_of(*grid).width, w);
  EXPECT_EQ(info_of(*grid).height, h);
  EXPECT_EQ(w, kGridLabelWidth + 2 * (kGridCell + kGridPad) + kGridPad);
  EXPECT_FALSE(draw_sample_grid(index, -1));
  // Many steps: at most kMaxGridColumns, the first and the newest kept.
  SampleIndex many;
  for (int s = 0; s < 40; ++s) many.by_step[s * 10][0] = "x.png";
  const auto steps = grid_steps(many, 1000);
  ASSERT_EQ(steps.size(), static_cast<size_t>(kMaxGridColumns));
  EXPECT_EQ(steps.front(), 0);
  EXPECT_EQ(steps.back(), 390);
}

TEST(Report, LossPlotCheckpointsAndReport) {
  const fs::path dir = fluxtrain::testing::fresh_dir("report_html");
  std::string metrics;
  for (int s = 1; s <= 6; ++s) {
    metrics += "{\"step\":" + std::to_string(s) + ",\"time\":1,\"loss\":" + std::to_string(1.0 / s);
    if (s % 2 == 0) metrics += ",\"validation_loss\":" + std::to_string(s == 4 ? 0.2 : 0.3);
    metrics += "}\n";
  }
  write_text(dir / "metrics.jsonl", metrics + "not json\n");
  const auto points = read_metrics(dir / "metrics.jsonl");
  ASSERT_EQ(points.size(), 6u);
  EXPECT_DOUBLE_EQ(*points[3].validation_loss, 0.2);
  EXPECT_FALSE(points[2].validation_loss);
  const auto plot = draw_loss_plot(points, "lora");
  ASSERT_TRUE(plot);
  EXPECT_EQ(info_of(*plot).width, kPlotWidth);
  EXPECT_EQ(info_of(*plot).height, kPlotHeight);
  EXPECT_FALSE(draw_loss_plot({}, "none"));

  for (const char* f : {"lora-step00000002.safetensors", "lora-step00000004.safetensors", "lora-000001.safetensors",
                        "lora.safetensors", "lora-step2.safetensors", "other.safetensors"})
    write_text(dir / f, "x");
  const auto checkpoints = find_checkpoints(dir, "lora", 3, 6, points);
  ASSERT_EQ(checkpoints.size(), 4u);
  EXPECT_EQ(checkpoints[0].step, 2);
  EXPECT_EQ(checkpoints[1].step, 3);  // epoch 1 of 3 steps
  EXPECT_FALSE(checkpoints[1].validation_loss);
  EXPECT_EQ(checkpoints[2].step, 4);
  EXPECT_EQ(checkpoints[3].file.filename(), "lora.safetensors");
  EXPECT_DOUBLE_EQ(*checkpoints[3].validation_loss, 0.3);

  fs::create_directories(dir / "samples");
  sample_png(dir / "samples" / "lora_000004_00_1.png", 32, 32, 90, "a <b>bold</b> prompt");
  write_text(dir / "config.toml", "output_name = \"lora\"\nnote = \"<script>\"\n");
  const fs::path report = write_report(dir, "lora", 3, 6);
  std::ifstream in(report);
  const std::string html{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_NE(html.find("Best by validation loss: <b>lora-step00000004.safetensors</b>"), std::string::npos) << html;
  EXPECT_EQ(html.find("<script>"), std::string::npos);  // the config is escaped
  EXPECT_EQ(html.find("http:"), std::string::npos);
  EXPECT_EQ(html.find("https:"), std::string::npos);
  // Every picture is inline.
  int pictures = 0;
  for (size_t at = html.find("src=\""); at != std::string::npos; at = html.find("src=\"", at + 1), ++pictures)
    EXPECT_EQ(html.compare(at + 5, 22, "data:image/png;base64,"), 0) << html.substr(at, 40);
  EXPECT_EQ(pictures, 2);
}

}  // namespace
}  // namespace fluxtrain::report
