#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace fluxtrain {
namespace {

constexpr size_t kBufferSize = 1 << 20;

std::string errno_text(int err) {
  if (err == ENOSPC) return "no space left on the device: free some disk space or choose another folder";
  if (err == EDQUOT) return "disk quota exceeded: free some space or choose another folder";
  if (err == EACCES || err == EPERM) return "permission denied: choose a writable folder";
  if (err == ENOENT) return "the folder does not exist: create it first";
  if (err == EROFS) return "the file system is read-only: choose a writable folder";
  return std::strerror(err);
}

std::atomic<int> g_counter{0};
std::atomic<uint64_t> g_write_limit{0};  // the test hook (0 = off)
std::atomic<uint64_t> g_written{0};      // bytes written through atomic files by this process

// ::write, but for the test hook: past its limit the disk is "full" (a short write, then ENOSPC).
ssize_t write_some(int fd, const char* data, size_t size) {
  const uint64_t limit = g_write_limit.load();
  if (limit != 0) {
    const uint64_t done = g_written.load();
    if (done >= limit) {
      errno = ENOSPC;
      return -1;
    }
    size = static_cast<size_t>(std::min<uint64_t>(size, limit - done));
  }
  const ssize_t n = ::write(fd, data, size);
  if (n > 0) g_written += static_cast<uint64_t>(n);
  return n;
}

std::string folder_of(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  namespace fs = std::filesystem;
  fs::path target(path_);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  temp_path_ = (dir / ("." + target.filename().string() + ".tmp-" + std::to_string(getpid()) + "-" +
                       std::to_string(g_counter.fetch_add(1))))
                   .string();
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create ", path_, " (temporary ", temp_path_, "): ", errno_text(errno));
  buffer_.reserve(kBufferSize);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

[[noreturn]] void AtomicFile::fail_write(int err) {
  if (err == ENOSPC || err == EDQUOT) {
    const std::string dir = folder_of(path_);
    uint64_t free = 0;
    try {
      free = free_bytes(dir);
    } catch (const Error&) {
    }
    const uint64_t needed = std::max(expected_, written_);
    fail("cannot write ", path_, ": ", err == ENOSPC ? "no space left on the device" : "disk quota exceeded",
         " in ", dir, " (the file needs ", format_count(static_cast<long long>(needed)), " bytes, ",
         format_bytes(double(needed)), "; ", format_count(static_cast<long long>(free)), " bytes are free): free "
         "some space or choose a folder on a larger disk");
  }
  fail("cannot write ", path_, ": ", errno_text(err));
}

void AtomicFile::flush_buffer() {
  const char* p = buffer_.data();
  size_t left = buffer_.size();
  while (left > 0) {
    ssize_t n = write_some(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_write(errno);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  buffer_.clear();
}

void AtomicFile::write(const void* data, size_t size) {
  if (committed_) fail("internal: write to ", path_, " after commit");
  const char* p = static_cast<const char*>(data);
  written_ += size;
  if (buffer_.size() + size <= kBufferSize) {
    buffer_.insert(buffer_.end(), p, p + size);
    return;
  }
  flush_buffer();
  if (size < kBufferSize) {
    buffer_.insert(buffer_.end(), p, p + size);
    return;
  }
  // Large blocks go straight to the file: no second copy of a big tensor.
  while (size > 0) {
    ssize_t n = write_some(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_write(errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  flush_buffer();
  if (::fsync(fd_) != 0) fail_write(errno);  // ENOSPC may show only here (network file systems)
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail("cannot write ", path_, " (close): ", errno_text(errno));
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    fail("cannot move ", temp_path_, " onto ", path_, ": ", errno_text(errno));
  }
  committed_ = true;
  std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  fsync_directory(dir.empty() ? "." : dir.string());
}

uint64_t free_bytes(const std::string& folder) {
  struct statvfs info {};
  if (::statvfs(folder.c_str(), &info) != 0) fail("cannot ask for the free space in ", folder, ": ", errno_text(errno));
  // The test hook fails writes only: this check sees the real disk.
  return static_cast<uint64_t>(info.f_bavail) * static_cast<uint64_t>(info.f_frsize);
}

void ensure_free_space(const std::string& folder, uint64_t needed, const std::string& what, const std::string& then) {
  const uint64_t free = free_bytes(folder);
  if (free >= needed) return;
  fail("not enough free space in ", folder, " to save ", what, ": it needs ", format_count(static_cast<long long>(needed)),
       " bytes (", format_bytes(double(needed)), ") and ", format_count(static_cast<long long>(free)), " bytes (",
       format_bytes(double(free)), ") are free", then.empty() ? "" : "; " + then,
       then.empty() ? "; free some space or choose a folder on a larger disk" : "");
}

void set_test_write_limit(uint64_t bytes) { g_write_limit.store(bytes); }

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicFile file(path);
  file.write(content);
  file.commit();
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open the folder ", dir, " to make its new entries durable (fsync): ", errno_text(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  // EINVAL: the file system cannot sync a folder (some network and FUSE mounts); its renames are as durable
  // as it makes them. Any other failure (EIO, ENOSPC, EDQUOT) means the new entries may be lost.
  if (rc != 0 && error != EINVAL) fail("cannot make the new entries of ", dir, " durable (fsync): ", errno_text(error));
}

}  // namespace fluxtrain
