#include "core/metrics.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"

namespace fluxtrain {
namespace {

void write_all(int fd, const std::string& text, const std::string& path) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fail("cannot write ", path, ": ", n < 0 ? std::strerror(errno) : "nothing written",
           errno == ENOSPC ? " (the disk is full)" : "");
    }
    done += static_cast<size_t>(n);
  }
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, ": ", std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

MetricsLog::MetricsLog(std::string path) : path_(std::move(path)) {
  std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) fail("cannot create the folder of ", path_, ": ", ec.message());
  }
  open_for_append();
  // Cut a torn last line (no newline) so that the next line does not fuse with it.
  struct stat info {};
  if (::fstat(fd_, &info) == 0 && info.st_size > 0) {
    std::string text = read_whole(path_);
    if (!text.empty() && text.back() != '\n') {
      size_t keep = text.rfind('\n');
      keep = keep == std::string::npos ? 0 : keep + 1;
      log::warn(path_, ": its last line is incomplete (", text.size() - keep,
                " bytes, from a process that was stopped mid-write); removing it");
      if (::ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
        fail("cannot truncate ", path_, ": ", std::strerror(errno));
      }
    }
  }
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::open_for_append() {
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot open ", path_, " for appending: ", std::strerror(errno), "; check the folder is writable");
}

void MetricsLog::append(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  // nlohmann's ordered_json keeps insertion order, so "step" and "time" lead every line.
  nlohmann::ordered_json line;
  line["step"] = step;
  using namespace std::chrono;
  double now = duration<double>(system_clock::now().time_since_epoch()).count();
  line["time"] = std::round(now * 1000.0) / 1000.0;
  for (const auto& name_value : values) {
    if (name_value.first == "step" || name_value.first == "time") {
      fail("metrics.jsonl: the value name '", name_value.first, "' is reserved");
    }
    if (std::isfinite(name_value.second)) {
      line[name_value.first] = name_value.second;
    } else {
      line[name_value.first] = nullptr;
    }
  }
  write_all(fd_, line.dump() + "\n", path_);
}

void MetricsLog::flush() {
  if (::fdatasync(fd_) != 0) fail("cannot flush ", path_, ": ", std::strerror(errno));
}

size_t MetricsLog::truncate_after(int64_t step) {
  std::string text = read_whole(path_);
  std::string kept;
  size_t dropped = 0, bad = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    nlohmann::json parsed =
        json_depth(line) <= kMaxJsonDepth ? nlohmann::json::parse(line, nullptr, false) : nlohmann::json();
    if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("step") ||
        !parsed["step"].is_number_integer()) {
      ++bad;
      ++dropped;
      continue;
    }
    if (parsed["step"].get<int64_t>() > step) {
      ++dropped;
      continue;
    }
    kept.append(line);
    kept.push_back('\n');
  }
  if (bad > 0) log::warn(path_, ": dropped ", bad, " line(s) that are not JSON objects with a whole-number \"step\"");
  if (dropped == 0) return 0;
  write_file_atomic(path_, kept);
  // The old descriptor points at the replaced file; reopen the new one.
  ::close(fd_);
  fd_ = -1;
  open_for_append();
  return dropped;
}

}  // namespace fluxtrain
