#include "core/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"

namespace fluxtrain {

FolderLock::FolderLock(const std::filesystem::path& folder, const std::string& what) {
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec) fail(what, "=", folder.string(), ": cannot create the folder: ", ec.message());
  const std::string path = (folder / kFileName).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(what, "=", folder.string(), ": cannot open its lock file ", path, ": ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char buffer[32] = {};
    const ssize_t n = ::pread(fd_, buffer, sizeof(buffer) - 1, 0);
    std::string holder = n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(fd_);
    fd_ = -1;
    if (error != EWOULDBLOCK) fail(what, "=", folder.string(), ": cannot lock ", path, ": ", std::strerror(error));
    fail(what, "=", folder.string(), " is in use by another fluxtrain (pid ", holder.empty() ? "unknown" : holder,
         "): two trainers in one folder would overwrite each other's states and files. Wait for it to end, stop "
         "it, or give this run another ",
         what);
  }
  // The pid is for a second process's refusal message only; the lock holds without it.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race a new holder)
}

}  // namespace fluxtrain
