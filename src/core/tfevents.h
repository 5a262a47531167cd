// TensorBoard event files, written natively (no protobuf or TensorFlow library), so that `tensorboard
// --logdir OUTPUT_PATH/logs` shows the training curves and sample images.
//
// Format (tensorflow/core/lib/io/record_writer.cc, tensorboard/compat/proto/event.proto, summary.proto):
// a file is a sequence of TFRecords
//   uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
// whose data are serialized `Event` messages: wall_time (1, double), step (2, int64), and one of
// file_version (3, "brain.Event:2", the first record of every file), summary (5) or session_log (7).
// Summary.value (1) holds Summary.Value { tag (1), simple_value (2, float) | image (4) }, with
// Summary.Image { height (1), width (2), colorspace (3), encoded_image_string (4) }.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fluxtrain {

namespace tfevents {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven. `crc` continues a running value.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// TFRecord's masking: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);
// One record: length, masked CRC of the length, data, masked CRC of the data.
std::string frame_record(std::string_view data);

// Serialized Event messages.
std::string file_version_event(double wall_time);
std::string scalars_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values);
// colorspace: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA.
std::string image_event(double wall_time, int64_t step, const std::string& tag, std::string_view png_bytes, int width,
                        int height, int colorspace);
// SessionLog { status: START }: TensorBoard drops the events of earlier files with step >= `step`
// (what a resumed run writes so that steps after its checkpoint are not shown twice).
std::string session_start_event(double wall_time, int64_t step);

}  // namespace tfevents

class EventWriter {
 public:
  // Creates `dir` if needed and a new file `events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>` in it
  // (a resumed run adds a new file; TensorBoard reads all files of a folder as one run), then writes the
  // file_version record. With `purge_step` (a resumed run: the resumed step + 1), also a SessionLog START
  // at that step, so TensorBoard hides the earlier run's points at or after it. Throws Error naming the
  // folder when it cannot be created or written.
  explicit EventWriter(const std::string& dir, std::optional<int64_t> purge_step = std::nullopt);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // Each add_* writes one whole record with one write() call (no user-space buffer), so a process that is
  // killed leaves every earlier record readable (TensorBoard ignores a torn last record).
  void add_scalar(const std::string& tag, double value, int64_t step);
  // Several scalars of one step in one record.
  void add_scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step);
  // An encoded PNG; channels 1..4 (gray, gray + alpha, RGB, RGBA).
  void add_image_png(const std::string& tag, std::string_view png_bytes, int width, int height, int64_t step,
                     int channels = 3);
  // Makes the records durable (fdatasync).
  void flush();

  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::string path_;
  int fd_ = -1;
  std::mutex mutex_;
};

}  // namespace fluxtrain
