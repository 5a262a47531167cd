// libFuzzer target: any byte string given to the archive extractor (zip; tar plain, gzip, bzip2, xz or
// zstd; GNU and pax sparse entries) either extracts into the target folder, within the limits, or
// raises fluxtrain::Error and leaves nothing behind; never a crash, leak, hang, undefined behaviour or
// a file written outside the target. Extraction writes real files: they go to /dev/shm when it exists
// (a tmpfs, where the extractor's syncfs costs nothing).
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/error.h"
#include "fetch/archive.h"

namespace {

namespace fs = std::filesystem;

// The process's own folder, removed again when it exits.
struct WorkFolder {
  fs::path path;
  WorkFolder() {
    std::error_code ec;
    const fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    path = base / ("fluxtrain_fuzz_archive_" + std::to_string(::getpid()));
    fs::remove_all(path, ec);
    fs::create_directories(path / "out");
  }
  ~WorkFolder() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Every file extracted is a regular file or folder (links are never created) of at most `limit` bytes.
void check_tree(const fs::path& folder, uint64_t limit) {
  for (const auto& entry : fs::recursive_directory_iterator(folder)) {
    if (entry.is_symlink() || !(entry.is_regular_file() || entry.is_directory())) std::abort();
    if (entry.is_regular_file() && entry.file_size() > limit) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fluxtrain::fetch;
  static const WorkFolder folder;
  const fs::path& work = folder.path;
  ArchiveLimits limits;
  limits.max_total_bytes = 8u << 20;
  limits.max_entries = 2000;
  limits.ratio_allowance_bytes = 1u << 20;
  const fs::path out = work / "out";
  const fs::path target = out / "dataset";
  bool extracted = false;
  try {
    ExtractStats stats =
        extract_archive_bytes(std::string_view(reinterpret_cast<const char*>(data), size), target, limits, "fuzz");
    extracted = true;
    if (stats.bytes > limits.max_total_bytes) std::abort();
    check_tree(target, limits.max_total_bytes);
  } catch (const fluxtrain::Error&) {
  }
  // Nothing beside the target (no temporary folder left, nothing that climbed out of it), and no target
  // after a refusal.
  for (const auto& entry : fs::directory_iterator(out)) {
    if (entry.path() != target || !extracted) std::abort();
  }
  for (const auto& entry : fs::directory_iterator(work)) {
    if (entry.path() != out) std::abort();
  }
  std::error_code ec;
  fs::remove_all(target, ec);
  return 0;
}
