// Crash-safe file output: everything is written to a temporary file in the destination folder, then
// fsync'd and renamed over the destination, then the folder is fsync'd. A reader (or a restarted pod)
// sees either the old complete file or the new complete file, never a half-written one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fluxtrain {

class AtomicFile {
 public:
  // Opens a temporary file beside `path` ("<dir>/.<name>.tmp-<pid>-<n>"). Throws Error on failure.
  explicit AtomicFile(std::string path);
  // Removes the temporary file unless commit() succeeded.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  uint64_t bytes_written() const { return written_; }
  // Flushes, fsyncs, renames onto the destination and fsyncs the folder.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void flush_buffer();
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;
  std::vector<char> buffer_;
};

// Writes a whole small file atomically.
void write_file_atomic(const std::string& path, std::string_view content);

// fsyncs a folder so that a rename inside it survives a power loss; an Error naming the folder when that
// fails (except EINVAL: a file system that cannot sync folders).
void fsync_directory(const std::string& dir);

}  // namespace fluxtrain
