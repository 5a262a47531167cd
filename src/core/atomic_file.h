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

  // The file's whole size when known (a safetensors file's header and tensors): named in the message of a
  // full disk, with the free space.
  void expect_size(uint64_t bytes) { expected_ = bytes; }
  void write(const void* data, size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  uint64_t bytes_written() const { return written_; }
  // Flushes, fsyncs, renames onto the destination and fsyncs the folder.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void flush_buffer();
  [[noreturn]] void fail_write(int err);
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;
  uint64_t expected_ = 0;
  std::vector<char> buffer_;
};

// The bytes an unprivileged process may still write in `folder` (statvfs: f_bavail * f_frsize); an Error
// naming the folder when it cannot be asked.
uint64_t free_bytes(const std::string& folder);

// Before a save of `needed` bytes into `folder`: an Error naming the folder, `what` is saved, the bytes it
// needs and the bytes that are free, when they do not fit; `then` is added (what is kept, what to do).
void ensure_free_space(const std::string& folder, uint64_t needed, const std::string& what,
                       const std::string& then = "");

// Test hook (FLUXTRAIN_TEST_FAIL_WRITE_AFTER_BYTES, tests/e2e/test_disk_full.py): once the process has
// written `bytes` through atomic files, every further write fails with ENOSPC, as on a full disk (the free
// space check does not know). 0 (the default) turns it off.
void set_test_write_limit(uint64_t bytes);

// Writes a whole small file atomically.
void write_file_atomic(const std::string& path, std::string_view content);
// Reads a whole small file (a picture, a config); an Error naming it when it cannot be read.
std::string read_file_bytes(const std::string& path);

// fsyncs a folder so that a rename inside it survives a power loss; an Error naming the folder when that
// fails (except EINVAL: a file system that cannot sync folders).
void fsync_directory(const std::string& dir);

}  // namespace fluxtrain
