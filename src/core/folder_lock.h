// One writer per folder: an advisory lock (flock) on FOLDER/.fluxtrain.lock, held for the life of the
// object and released by the kernel when the process ends in any way (kill -9 included), so a stale lock
// never blocks a restarted pod. The file holds the holder's pid, for the refusal message.
#pragma once

#include <filesystem>
#include <string>

namespace fluxtrain {

class FolderLock {
 public:
  // Creates the folder if needed and takes the lock; an Error naming the folder, the holder's pid and the
  // ways out when another process holds it. `what` names the folder's role in messages ("OUTPUT_PATH").
  FolderLock(const std::filesystem::path& folder, const std::string& what);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

  static constexpr const char* kFileName = ".fluxtrain.lock";

 private:
  int fd_ = -1;
};

}  // namespace fluxtrain
