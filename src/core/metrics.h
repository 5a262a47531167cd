// metrics.jsonl: the training's numbers as one JSON object per line, for scripts and plots without
// TensorBoard:
//   {"step":120,"time":1718000000.125,"loss":0.1423,"lr":0.0001}
// "step" and "time" (Unix seconds) come first, then the values in the order given. A value that is not
// finite (NaN, inf) is written as null (JSON has no NaN).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain {

class MetricsLog {
 public:
  // Opens `path` for appending, creating it (and its folder) if needed. A last line without its newline
  // (a process killed mid-write) is cut off, so appended lines stay whole. Throws Error naming the file.
  explicit MetricsLog(std::string path);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Appends one line with one write() call (a killed process leaves whole lines only, but the last).
  // The names "step" and "time" are reserved.
  void append(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // Makes the appended lines durable (fdatasync).
  void flush();
  // For a resumed run: keeps only the lines whose step is <= `step` (lines written after the checkpoint
  // that is resumed would otherwise appear twice), and lines that are not valid JSON objects with a
  // "step" are dropped too. The file is rewritten atomically (temp file, fsync, rename). Returns the
  // number of lines dropped. step = -1 empties the file.
  size_t truncate_after(int64_t step);

  const std::string& path() const { return path_; }

 private:
  void open_for_append();
  std::string path_;
  int fd_ = -1;
};

}  // namespace fluxtrain
