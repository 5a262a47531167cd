// The training status line: its format, the smoothed loss and rate, and how often it is written (with a
// fake clock, so no test depends on real timing).
#include <gtest/gtest.h>

#include <cmath>

#include "core/train_progress.h"

namespace fluxtrain {
namespace {

TEST(TrainStatusFormat, TerminalLineWithBar) {
  TrainStatus s;
  s.step = 1000;
  s.total = 2000;
  s.steps_per_second = 1.85;
  s.eta_seconds = 1017;
  s.has_loss = true;
  s.loss = 0.14234;
  s.lr = 1.0;
  s.memory_bytes = 21.3e9;
  EXPECT_EQ(format_train_status(s, 10),
            "step 1000/2000 [#####.....] 1.85 it/s ETA 16:57 loss 0.1423 lr 1.00e+00 mem 21.3 GB");
  s.step = 2000;
  EXPECT_EQ(format_train_status(s, 4).substr(0, 21), "step 2000/2000 [####]");
  s.step = 1999;
  EXPECT_EQ(format_train_status(s, 4).substr(0, 21), "step 1999/2000 [###.]");
}

TEST(TrainStatusFormat, PlainLineSlowRateUnknownsAndExtras) {
  TrainStatus s;
  s.step = 120;
  s.total = 2000;
  s.steps_per_second = 0.4;
  s.eta_seconds = 4700;
  s.has_loss = true;
  s.loss = 0.5;
  s.lr = 1e-4;
  s.extra = "d*lr 3.1e-04";
  EXPECT_EQ(format_train_status(s, 0),
            "step 120/2000 (6.0%) 2.50 s/it ETA 1:18:20 loss 0.5000 lr 1.00e-04 d*lr 3.1e-04");

  TrainStatus unknown;
  unknown.step = 1;
  unknown.total = 10;
  EXPECT_EQ(format_train_status(unknown, 0), "step 1/10 (10.0%) -- it/s ETA --:--");
  unknown.has_loss = true;
  unknown.loss = std::nan("");
  EXPECT_EQ(format_train_status(unknown, 0), "step 1/10 (10.0%) -- it/s ETA --:-- loss nan");
}

TEST(TrainStatusFormat, ClosingLine) {
  TrainStatus s;
  s.step = 2000;
  s.total = 2000;
  s.steps_per_second = 1.85;
  s.eta_seconds = 0;
  s.elapsed_seconds = 3723;
  s.has_loss = true;
  s.loss = 0.1;
  EXPECT_EQ(format_train_status(s, 20, true), "step 2000/2000 (100.0%) 1.85 it/s in 1:02:03 loss 0.1000");
}

struct FakeTerminal {
  double now = 0;
  std::vector<std::pair<std::string, bool>> writes;
  TrainProgressOptions options(bool tty, int64_t total) {
    TrainProgressOptions o;
    o.total_steps = total;
    o.force_tty = tty ? 1 : 0;
    o.line_interval_seconds = 10;
    o.clock_seconds = [this] { return now; };
    o.sink = [this](const std::string& text, bool status) { writes.emplace_back(text, status); };
    return o;
  }
};

TEST(TrainProgress, SmoothedLossIsABiasCorrectedAverage) {
  FakeTerminal out;
  auto options = out.options(false, 100);
  options.loss_smoothing = 0.5;
  TrainProgress progress(options);
  progress.update(1, 1.0, 1e-4);
  EXPECT_DOUBLE_EQ(progress.smoothed_loss(), 1.0);  // (0.5 * 1) / 0.5
  progress.update(2, 3.0, 1e-4);
  // s = 0.5 * 0.5 + 0.5 * 3 = 1.75, weight = 0.5 * 0.5 + 0.5 = 0.75.
  EXPECT_DOUBLE_EQ(progress.smoothed_loss(), 1.75 / 0.75);
  progress.update(3, std::nan(""), 1e-4);  // a NaN step is shown but does not enter the average
  EXPECT_DOUBLE_EQ(progress.smoothed_loss(), 1.75 / 0.75);
  EXPECT_TRUE(std::isnan(progress.status().loss));
  progress.update(4, 1.0, 1e-4);
  EXPECT_DOUBLE_EQ(progress.smoothed_loss(), (0.5 * 1.75 + 0.5) / (0.5 * 0.75 + 0.5));
}

TEST(TrainProgress, RateIgnoresWarmupAndCountsOnlyThisSessionsSteps) {
  FakeTerminal out;
  TrainProgress progress(out.options(false, 1000));
  out.now = 30;                     // model loading and the first step's warmup
  progress.update(501, 0.2, 1e-4);  // resumed at step 500
  EXPECT_EQ(progress.steps_per_second(), 0);
  EXPECT_EQ(progress.status().eta_seconds, -1);
  for (int64_t step = 502; step <= 520; ++step) {
    out.now += 2;
    progress.update(step, 0.2, 1e-4);
  }
  EXPECT_NEAR(progress.steps_per_second(), 0.5, 1e-12);
  EXPECT_NEAR(progress.status().eta_seconds, 480 * 2.0, 1e-6);
  // Two steps reported at once (update skipped a step) weigh as two steps of half the time.
  out.now += 2;
  progress.update(522, 0.2, 1e-4);
  // Before: every step took 2 s, so the average is 2 s whatever its weight w = 1 - 0.9^19. The new
  // interval counts as two steps of 1 s each, with weight 1 - 0.9^2 = 0.19.
  double w = 1 - std::pow(0.9, 19);
  double seconds_per_step = (0.81 * 2.0 * w + 0.19 * 1.0) / (0.81 * w + 0.19);
  EXPECT_NEAR(progress.steps_per_second(), 1.0 / seconds_per_step, 1e-12);
  progress.finish();
  // Closing line: the whole session's average rate, 21 steps in 40 s.
  EXPECT_EQ(out.writes.back().first, "step 522/1000 (52.2%) 1.90 s/it in 00:40 loss 0.2000 lr 1.00e-04\n");
}

TEST(TrainProgress, PlainLinesAtOnceThenEveryInterval) {
  FakeTerminal out;
  {
    TrainProgress progress(out.options(false, 100));
    for (int step = 1; step <= 25; ++step) {
      progress.update(step, 0.1, 1e-4, 20e9);
      out.now += 1;
    }
  }
  // Lines at t = 0 (the first update), 10 and 20, and the closing line.
  ASSERT_EQ(out.writes.size(), 4u);
  EXPECT_EQ(out.writes[0].first, "step 1/100 (1.0%) -- it/s ETA --:-- loss 0.1000 lr 1.00e-04 mem 20.0 GB\n");
  EXPECT_EQ(out.writes[1].first, "step 11/100 (11.0%) 1.00 it/s ETA 01:29 loss 0.1000 lr 1.00e-04 mem 20.0 GB\n");
  EXPECT_EQ(out.writes[2].first.substr(0, 20), "step 21/100 (21.0%) ");
  EXPECT_EQ(out.writes[3].first.substr(0, 34), "step 25/100 (25.0%) 1.00 it/s in 0");
  for (const auto& write : out.writes) EXPECT_FALSE(write.second);
}

TEST(TrainProgress, TerminalRedrawsAtMostFiveTimesASecond) {
  FakeTerminal out;
  TrainProgress progress(out.options(true, 1000));
  for (int step = 1; step <= 100; ++step) {  // 20 steps a second for 5 s
    progress.update(step, 0.1, 1e-4);
    out.now += 0.05;
  }
  size_t redraws = out.writes.size();
  EXPECT_GE(redraws, 20u);
  EXPECT_LE(redraws, 26u);
  for (const auto& write : out.writes) {
    EXPECT_TRUE(write.second);
    EXPECT_NE(write.first.find(" ["), std::string::npos);
    EXPECT_EQ(write.first.find('\n'), std::string::npos);
  }
  progress.finish();
  EXPECT_FALSE(out.writes.back().second);
  EXPECT_EQ(out.writes.back().first.back(), '\n');
}

TEST(TrainProgress, NothingPrintedWithoutUpdates) {
  FakeTerminal out;
  { TrainProgress progress(out.options(false, 10)); }
  EXPECT_TRUE(out.writes.empty());
}

}  // namespace
}  // namespace fluxtrain
