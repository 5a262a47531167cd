// Atomic files, the progress reporter and the small formatting helpers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "temp_dir.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"

namespace fluxtrain {
namespace {

namespace fs = std::filesystem;

using testing::fresh_dir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(AtomicFile, CommitReplacesAndLeavesNoTemp) {
  fs::path dir = fresh_dir("atomic");
  fs::path target = dir / "out.bin";
  write_file_atomic(target.string(), "old");
  {
    AtomicFile f(target.string());
    f.write("new ");
    std::string big(3 << 20, 'x');  // larger than the buffer: written straight through
    f.write(big);
    EXPECT_EQ(slurp(target), "old");  // not visible before commit
    f.commit();
  }
  EXPECT_EQ(slurp(target).size(), 4u + (3u << 20));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);
  fs::remove_all(dir);
}

TEST(AtomicFile, AbandonedWriteKeepsOldFile) {
  fs::path dir = fresh_dir("atomic_abort");
  fs::path target = dir / "out.bin";
  write_file_atomic(target.string(), "complete");
  try {
    AtomicFile f(target.string());
    f.write("half");
    throw std::runtime_error("crash before commit");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(slurp(target), "complete");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);
  fs::remove_all(dir);
}

TEST(AtomicFile, MissingFolderIsAClearError) {
  try {
    AtomicFile f("/nonexistent-fluxtrain-dir/out.bin");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-fluxtrain-dir/out.bin"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos);
  }
}

TEST(Format, BytesAndCounts) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1.2e9), "1.2 GB");
  EXPECT_EQ(format_bytes(23.8e9), "23.8 GB");
  EXPECT_EQ(format_count(11901408320LL), "11,901,408,320");
  EXPECT_EQ(format_count(999), "999");
  EXPECT_EQ(format_duration(65), "01:05");
  EXPECT_EQ(format_duration(3725), "1:02:05");
}

struct FakeOutput {
  double now = 0;
  std::vector<std::pair<std::string, bool>> writes;
  ProgressOptions options(bool tty) {
    ProgressOptions o;
    o.force_tty = tty ? 1 : 0;
    o.line_interval_seconds = 5;
    o.clock_seconds = [this] { return now; };
    o.sink = [this](const std::string& text, bool status) { writes.emplace_back(text, status); };
    return o;
  }
};

TEST(Progress, PlainLinesEveryIntervalAndAClosingLine) {
  FakeOutput out;
  {
    Progress p("caching latents", 100, out.options(false));
    for (int i = 0; i < 100; ++i) {
      out.now += 0.5;  // 2 it/s
      p.advance();
    }
    p.set_note("done");
  }
  // 50 s at one line per 5 s: 10 lines + the closing one.
  ASSERT_EQ(out.writes.size(), 11u);
  EXPECT_NE(out.writes[0].first.find("caching latents 10/100 it (10.0%)"), std::string::npos) << out.writes[0].first;
  EXPECT_NE(out.writes[0].first.find("2.00 it/s"), std::string::npos) << out.writes[0].first;
  EXPECT_NE(out.writes[0].first.find("00:05<00:45"), std::string::npos) << out.writes[0].first;
  EXPECT_NE(out.writes.back().first.find("100/100 it (100.0%) [00:50, 2.00 it/s] done"), std::string::npos)
      << out.writes.back().first;
  for (const auto& w : out.writes) EXPECT_FALSE(w.second);
}

TEST(Progress, BarOnATerminal) {
  FakeOutput out;
  Progress p("download", 4000, [&] {
    auto o = out.options(true);
    o.unit = "B";
    return o;
  }());
  out.now = 1;
  p.advance(1000);
  ASSERT_FALSE(out.writes.empty());
  const auto& [text, status] = out.writes.back();
  EXPECT_TRUE(status);
  EXPECT_NE(text.find(" 25.0% |######"), std::string::npos) << text;
  EXPECT_NE(text.find("1.0 KB/4.0 KB"), std::string::npos) << text;
  EXPECT_NE(text.find("1.0 KB/s"), std::string::npos) << text;
  p.finish();
  EXPECT_FALSE(out.writes.back().second);
}

}  // namespace
}  // namespace fluxtrain

namespace fluxtrain {
namespace {
TEST(Format, ClosestMatch) {
  std::vector<std::string> keys = {"network_dim", "network_alpha", "learning_rate", "max_train_epochs"};
  EXPECT_EQ(closest_match("network_dimm", keys), "network_dim");
  EXPECT_EQ(closest_match("LEARNING_RATE", keys), "learning_rate");
  EXPECT_EQ(closest_match("max_epochs", keys), "");
  EXPECT_EQ(closest_match("zzz", keys), "");
}
}  // namespace
}  // namespace fluxtrain
