// TensorBoard event files (CRC-32C, TFRecord framing, hand-encoded Event protobufs) and metrics.jsonl.
// The files are also read back by TensorBoard's own reader in tests/parity/test_tfevents.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/metrics.h"
#include "core/tfevents.h"
#include "temp_dir.h"

namespace fluxtrain {
namespace {

namespace fs = std::filesystem;
using tfevents::crc32c;

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

uint64_t load_le(const std::string& data, size_t offset, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) value |= uint64_t{static_cast<unsigned char>(data[offset + i])} << (8 * i);
  return value;
}

// Splits a TFRecord stream into its records, checking both CRCs of each.
std::vector<std::string> read_records(const std::string& data) {
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < data.size()) {
    EXPECT_LE(pos + 12, data.size());
    uint64_t length = load_le(data, pos, 8);
    EXPECT_EQ(load_le(data, pos + 8, 4), tfevents::masked_crc32c(data.data() + pos, 8));
    EXPECT_LE(pos + 16 + length, data.size());
    std::string record = data.substr(pos + 12, length);
    EXPECT_EQ(load_le(data, pos + 12 + length, 4), tfevents::masked_crc32c(record.data(), record.size()));
    records.push_back(record);
    pos += 16 + length;
  }
  return records;
}

TEST(Crc32c, KnownVectors) {
  // The check value of CRC-32C, and the iSCSI test vectors of RFC 3720 appendix B.4.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  std::string zeros(32, '\0'), ones(32, '\xFF'), up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(up.data(), up.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down.data(), down.size()), 0x113FDB5Cu);
}

TEST(Crc32c, ContinuesARunningValue) {
  std::string text = "The quick brown fox jumps over the lazy dog";
  uint32_t whole = crc32c(text.data(), text.size());
  EXPECT_EQ(whole, 0x22620404u);
  uint32_t first = crc32c(text.data(), 10);
  EXPECT_EQ(crc32c(text.data() + 10, text.size() - 10, first), whole);
}

TEST(TfRecord, FramesLengthDataAndMaskedCrcs) {
  uint32_t crc = 0xE3069283u;
  uint32_t masked = ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
  EXPECT_EQ(tfevents::masked_crc32c("123456789", 9), masked);

  std::string record = tfevents::frame_record("123456789");
  ASSERT_EQ(record.size(), 8u + 4 + 9 + 4);
  EXPECT_EQ(record.substr(0, 8), bytes({9, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(load_le(record, 8, 4), tfevents::masked_crc32c(record.data(), 8));
  EXPECT_EQ(record.substr(12, 9), "123456789");
  EXPECT_EQ(load_le(record, 21, 4), masked);
}

TEST(EventProto, ScalarEventBytes) {
  // Event { wall_time: 1.5, step: 300, summary { value { tag: "a", simple_value: 2 } } }, encoded by hand:
  // 09 <double 1.5>, 10 <varint 300 = AC 02>, 2A <len 10> [0A <len 8> [0A 01 'a', 15 <float 2.0>]].
  std::string expected = bytes(
      {0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F, 0x10, 0xAC, 0x02, 0x2A, 10, 0x0A, 8, 0x0A, 1, 'a', 0x15, 0, 0, 0, 0x40});
  EXPECT_EQ(tfevents::scalars_event(1.5, 300, {{"a", 2.0f}}), expected);
}

TEST(EventProto, FileVersionSessionStartAndNegativeStep) {
  std::string version = tfevents::file_version_event(0.0);
  EXPECT_EQ(version, bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1A, 13}) + "brain.Event:2");
  // SessionLog { status: START } at step 5: 3A <len 2> [08 01].
  EXPECT_EQ(tfevents::session_start_event(0.0, 5), bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 5, 0x3A, 2, 0x08, 1}));
  // A negative int64 is a ten-byte varint.
  std::string negative = tfevents::scalars_event(0.0, -1, {});
  EXPECT_EQ(negative.substr(9, 11), bytes({0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
}

TEST(EventProto, ImageEventBytes) {
  std::string png = "\x89PNG-not-really";
  std::string event = tfevents::image_event(0.0, 7, "samples/0", png, 640, 480, 3);
  // Image { height 480 (E0 03), width 640 (80 05), colorspace 3, encoded_image_string }.
  std::string image = bytes({0x08, 0xE0, 0x03, 0x10, 0x80, 0x05, 0x18, 3, 0x22, static_cast<int>(png.size())}) + png;
  std::string value = bytes({0x0A, 9}) + "samples/0" + bytes({0x22, static_cast<int>(image.size())}) + image;
  std::string summary = bytes({0x0A, static_cast<int>(value.size())}) + value;
  std::string expected =
      bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 7, 0x2A, static_cast<int>(summary.size())}) + summary;
  EXPECT_EQ(event, expected);
}

TEST(EventWriter, WritesReadableRecordsAndANewFilePerWriter) {
  fs::path dir = testing::fresh_dir("tfevents_writer") / "logs";
  std::string first_path, second_path;
  {
    EventWriter writer(dir.string());
    first_path = writer.path();
    writer.add_scalar("loss", 0.25, 1);
    writer.add_scalars({{"loss", 0.5}, {"lr", 1e-4}}, 2);
    writer.add_image_png("sample", "PNGDATA", 4, 2, 2, 4);
    writer.flush();
    EXPECT_THROW(writer.add_image_png("x", "", 1, 1, 1, 5), Error);
  }
  EXPECT_EQ(fs::path(first_path).parent_path(), dir);
  EXPECT_EQ(fs::path(first_path).filename().string().rfind("events.out.tfevents.", 0), 0u);
  std::vector<std::string> records = read_records(read_file(first_path));
  ASSERT_EQ(records.size(), 4u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_EQ(records[1].substr(9), tfevents::scalars_event(0, 1, {{"loss", 0.25f}}).substr(9));
  EXPECT_NE(records[3].find("PNGDATA"), std::string::npos);

  {
    EventWriter resumed(dir.string(), int64_t{2});
    second_path = resumed.path();
  }
  EXPECT_NE(first_path, second_path);
  records = read_records(read_file(second_path));
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].substr(9), tfevents::session_start_event(0, 2).substr(9));
}

TEST(EventWriter, UnwritableFolderIsAnError) {
  fs::path dir = testing::fresh_dir("tfevents_bad");
  std::ofstream(dir / "file") << "x";
  try {
    EventWriter writer((dir / "file" / "logs").string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create the TensorBoard log folder"), std::string::npos);
  }
}

std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST(MetricsLog, AppendsOrderedLines) {
  fs::path path = testing::fresh_dir("metrics_append") / "out" / "metrics.jsonl";
  {
    MetricsLog log(path.string());
    log.append(1, {{"loss", 0.5}, {"lr", 1e-4}});
    log.append(2, {{"loss", std::nan("")}, {"lr", 2e-4}});
    log.flush();
    EXPECT_THROW(log.append(3, {{"step", 1.0}}), Error);
  }
  std::string text = read_file(path);
  EXPECT_EQ(text.substr(0, 18), "{\"step\":1,\"time\":1");
  auto lines = read_jsonl(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["loss"].get<double>(), 0.5);
  EXPECT_EQ(lines[0]["lr"].get<double>(), 1e-4);
  EXPECT_TRUE(lines[1]["loss"].is_null());
  EXPECT_GT(lines[1]["time"].get<double>(), 1.7e9);
  // A second log on the same file appends.
  {
    MetricsLog log(path.string());
    log.append(3, {{"loss", 0.25}});
  }
  EXPECT_EQ(read_jsonl(path).size(), 3u);
}

TEST(MetricsLog, TruncateAfterKeepsEarlierStepsAndAppendsAfterThem) {
  fs::path path = testing::fresh_dir("metrics_truncate") / "metrics.jsonl";
  MetricsLog log(path.string());
  for (int step = 1; step <= 10; ++step) log.append(step, {{"loss", step * 0.1}});
  EXPECT_EQ(log.truncate_after(6), 4u);
  EXPECT_EQ(log.truncate_after(6), 0u);
  log.append(7, {{"loss", 7.5}});
  auto lines = read_jsonl(path);
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_EQ(lines[5]["step"].get<int>(), 6);
  EXPECT_EQ(lines[6]["step"].get<int>(), 7);
  EXPECT_EQ(lines[6]["loss"].get<double>(), 7.5);
  EXPECT_EQ(log.truncate_after(-1), 7u);
  EXPECT_EQ(read_file(path), "");
}

TEST(MetricsLog, TornLastLineIsCutAndBadLinesAreDropped) {
  fs::path path = testing::fresh_dir("metrics_torn") / "metrics.jsonl";
  std::ofstream(path, std::ios::binary)
      << "{\"step\":1,\"loss\":1}\nnot json\n{\"step\":2,\"loss\":2}\n{\"step\":3,\"lo";
  MetricsLog log(path.string());
  EXPECT_EQ(read_file(path), "{\"step\":1,\"loss\":1}\nnot json\n{\"step\":2,\"loss\":2}\n");
  log.append(3, {{"loss", 3}});
  EXPECT_EQ(log.truncate_after(100), 1u);  // the "not json" line
  auto lines = read_jsonl(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2]["step"].get<int>(), 3);
}

}  // namespace
}  // namespace fluxtrain
