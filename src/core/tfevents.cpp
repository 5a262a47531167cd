#include "core/tfevents.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"

namespace fluxtrain {
namespace tfevents {
namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? 0x82F63B78u : 0u);
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ---
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_tag(std::string& out, uint32_t field, WireType type) {
  put_varint(out, (uint64_t{field} << 3) | type);
}

void put_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// int32/int64 fields: negative values are sign-extended to 64 bits (10-byte varints), as protobuf does.
void put_int(std::string& out, uint32_t field, int64_t value) {
  put_tag(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(value));
}

void put_double(std::string& out, uint32_t field, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_tag(out, field, kFixed64);
  put_little_endian(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_tag(out, field, kFixed32);
  put_little_endian(out, bits, 4);
}

// Event fields (event.proto).
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5, kEventSessionLog = 7;
// Summary (summary.proto): Summary.value; Value.tag, Value.simple_value, Value.image.
constexpr uint32_t kSummaryValue = 1, kValueTag = 1, kValueSimpleValue = 2, kValueImage = 4;
// Summary.Image.
constexpr uint32_t kImageHeight = 1, kImageWidth = 2, kImageColorspace = 3, kImageEncoded = 4;
// SessionLog.status; SessionStatus START.
constexpr uint32_t kSessionLogStatus = 1;
constexpr int64_t kSessionStart = 1;

// The common head of every Event. Proto3 leaves default (zero) fields out; so does this.
std::string event_head(double wall_time, int64_t step) {
  std::string out;
  put_double(out, kEventWallTime, wall_time);
  if (step != 0) put_int(out, kEventStep, step);
  return out;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = kCrc32cTable[(crc ^ bytes[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

std::string frame_record(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_little_endian(out, data.size(), 8);
  put_little_endian(out, masked_crc32c(out.data(), 8), 4);
  out.append(data);
  put_little_endian(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

std::string file_version_event(double wall_time) {
  std::string out = event_head(wall_time, 0);
  put_bytes(out, kEventFileVersion, "brain.Event:2");
  return out;
}

std::string scalars_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& tag_value : values) {
    std::string value;
    put_bytes(value, kValueTag, tag_value.first);
    put_float(value, kValueSimpleValue, tag_value.second);
    put_bytes(summary, kSummaryValue, value);
  }
  std::string out = event_head(wall_time, step);
  put_bytes(out, kEventSummary, summary);
  return out;
}

std::string image_event(double wall_time, int64_t step, const std::string& tag, std::string_view png_bytes, int width,
                        int height, int colorspace) {
  std::string image;
  put_int(image, kImageHeight, height);
  put_int(image, kImageWidth, width);
  put_int(image, kImageColorspace, colorspace);
  put_bytes(image, kImageEncoded, png_bytes);
  std::string value;
  put_bytes(value, kValueTag, tag);
  put_bytes(value, kValueImage, image);
  std::string summary;
  put_bytes(summary, kSummaryValue, value);
  std::string out = event_head(wall_time, step);
  put_bytes(out, kEventSummary, summary);
  return out;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string session_log;
  put_int(session_log, kSessionLogStatus, kSessionStart);
  std::string out = event_head(wall_time, step);
  put_bytes(out, kEventSessionLog, session_log);
  return out;
}

}  // namespace tfevents

namespace {

double unix_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string hostname_for_file() {
  char buffer[256] = {};
  if (gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0') return "localhost";
  std::string name(buffer);
  for (char& c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
  }
  return name;
}

}  // namespace

EventWriter::EventWriter(const std::string& dir, std::optional<int64_t> purge_step) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("cannot create the TensorBoard log folder ", dir, ": ", ec.message());
  double now = unix_now();
  std::string stem = cat("events.out.tfevents.", static_cast<long long>(now), ".", hostname_for_file(), ".",
                         static_cast<long long>(getpid()));
  for (int n = 0; fd_ < 0; ++n) {
    path_ = (fs::path(dir) / cat(stem, ".", n)).string();
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0 && (errno != EEXIST || n > 1000)) {
      fail("cannot create the TensorBoard event file ", path_, ": ", std::strerror(errno),
           "; check that the folder is writable");
    }
  }
  fsync_directory(dir);
  write_record(tfevents::file_version_event(now));
  if (purge_step) write_record(tfevents::session_start_event(now, *purge_step));
}

EventWriter::~EventWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void EventWriter::write_record(const std::string& event) {
  std::string record = tfevents::frame_record(event);
  std::lock_guard<std::mutex> lock(mutex_);
  size_t done = 0;
  while (done < record.size()) {
    ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fail("cannot write the TensorBoard event file ", path_, ": ", n < 0 ? std::strerror(errno) : "nothing written",
           errno == ENOSPC ? " (the disk is full)" : "");
    }
    done += static_cast<size_t>(n);
  }
}

void EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  add_scalars({{tag, value}}, step);
}

void EventWriter::add_scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step) {
  std::vector<std::pair<std::string, float>> floats;
  floats.reserve(values.size());
  for (const auto& tag_value : values) floats.emplace_back(tag_value.first, static_cast<float>(tag_value.second));
  write_record(tfevents::scalars_event(unix_now(), step, floats));
}

void EventWriter::add_image_png(const std::string& tag, std::string_view png_bytes, int width, int height, int64_t step,
                                int channels) {
  if (channels < 1 || channels > 4) fail("add_image_png(", tag, "): channels is ", channels, "; expected 1 to 4");
  write_record(tfevents::image_event(unix_now(), step, tag, png_bytes, width, height, channels));
}

void EventWriter::flush() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (::fdatasync(fd_) != 0) fail("cannot flush the TensorBoard event file ", path_, ": ", std::strerror(errno));
}

}  // namespace fluxtrain
