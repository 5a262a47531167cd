// What the live page reads from a run folder (OUTPUT_PATH), torch-free: the metrics lines as they are
// appended, the files (with the sample PNGs grouped per prompt), and a file named by a page link, resolved
// so that no link leaves the folder.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fluxtrain::monitor {

// The file `relative` (a '/'-separated path as a link names it, already URL-decoded) under `root`, or nullopt
// when it is not a regular file inside root: an absolute path, a ".." or empty component, a NUL, a
// symbolic link that points outside, a folder (no listings), the token file. The canonical path must start
// with root's canonical path, so neither "..", "%2e%2e" (decoded before) nor a link escapes.
std::optional<std::filesystem::path> resolve_in_folder(const std::filesystem::path& root, std::string_view relative);

// The name of the token file in OUTPUT_PATH (mode 0600), never served.
inline constexpr const char* kTokenFileName = "monitor-token";

// metrics.jsonl, read as it grows: refresh() reads what was appended since the last call (whole lines only;
// a line being written waits for its newline). A file that got shorter or was replaced (a resumed run
// rewrites it) is read again from its start.
class MetricsTail {
 public:
  explicit MetricsTail(std::filesystem::path file) : file_(std::move(file)) {}
  // True when lines were added (or the file was replaced).
  bool refresh();
  size_t size() const { return lines_.size(); }
  // Lines [from, size()) as JSON values (a line that is not JSON is left out of nothing: it becomes null,
  // so that the count stays the file's line count).
  nlohmann::json lines_from(size_t from) const;
  const nlohmann::json* last() const { return lines_.empty() ? nullptr : &lines_.back(); }
  // Bumped when the file was replaced (the page then reloads every point).
  uint64_t generation() const { return generation_; }

 private:
  std::filesystem::path file_;
  uint64_t offset_ = 0;
  uint64_t inode_ = 0;
  uint64_t generation_ = 0;
  std::string partial_;
  std::vector<nlohmann::json> lines_;
};

// The run folder's files for the page: {"files": [{"path", "size", "mtime"}...], "samples": [{"prompt": idx,
// "images": [{"step", "path", "seed"}...]}...], "states": [...]}, sorted; the cache folder, symbolic links and
// the token file are left out, at most `max_files` entries.
nlohmann::json list_run_files(const std::filesystem::path& root, size_t max_files = 5000);

// A sample's name as the sampler writes it: {name}_{step:06d}_{idx:02d}_{seed}.png. False when it is not one.
struct SampleName {
  std::string name;
  int64_t step = 0;
  int index = 0;
  uint64_t seed = 0;
};
std::optional<SampleName> parse_sample_name(std::string_view filename);

// The Content-Type of a file served by the page, by its extension.
std::string content_type_of(const std::filesystem::path& file);

}  // namespace fluxtrain::monitor
