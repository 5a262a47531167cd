#include "monitor/run_folder.h"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>

namespace fluxtrain::monitor {

namespace fs = std::filesystem;

std::optional<fs::path> resolve_in_folder(const fs::path& root, std::string_view relative) {
  if (relative.empty() || relative.front() == '/' || relative.find('\0') != std::string_view::npos ||
      relative.find('\\') != std::string_view::npos)
    return std::nullopt;
  fs::path joined = root;
  size_t start = 0;
  while (start <= relative.size()) {
    const size_t end = std::min(relative.find('/', start), relative.size());
    const std::string_view part = relative.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return std::nullopt;
    joined /= std::string(part);
    start = end + 1;
  }
  if (joined.filename() == kTokenFileName) return std::nullopt;
  std::error_code ec;
  const fs::path base = fs::canonical(root, ec);
  if (ec) return std::nullopt;
  const fs::path target = fs::canonical(joined, ec);  // follows every link
  if (ec) return std::nullopt;
  // Inside root: root's components are a prefix of the target's (a string prefix would let /out2 pass
  // for /out).
  auto [base_end, target_it] = std::mismatch(base.begin(), base.end(), target.begin(), target.end());
  if (base_end != base.end() || target_it == target.end()) return std::nullopt;
  if (!fs::is_regular_file(target, ec) || target.filename() == kTokenFileName) return std::nullopt;
  return target;
}

bool MetricsTail::refresh() {
  struct stat st {};
  if (::stat(file_.c_str(), &st) != 0) {
    if (lines_.empty() && offset_ == 0) return false;
    lines_.clear(), partial_.clear(), offset_ = 0, inode_ = 0, ++generation_;
    return true;
  }
  bool replaced = false;
  if (static_cast<uint64_t>(st.st_ino) != inode_ || static_cast<uint64_t>(st.st_size) < offset_) {
    replaced = offset_ != 0 || !lines_.empty();
    lines_.clear(), partial_.clear(), offset_ = 0;
    inode_ = static_cast<uint64_t>(st.st_ino);
    if (replaced) ++generation_;
  }
  if (static_cast<uint64_t>(st.st_size) == offset_) return replaced;
  std::ifstream in(file_, std::ios::binary);
  if (!in) return replaced;
  in.seekg(static_cast<std::streamoff>(offset_));
  std::string chunk(static_cast<size_t>(st.st_size) - offset_, '\0');
  in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  chunk.resize(static_cast<size_t>(in.gcount()));
  offset_ += chunk.size();
  partial_ += chunk;
  size_t begin = 0, added = 0;
  for (size_t nl; (nl = partial_.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    const std::string_view line(partial_.data() + begin, nl - begin);
    if (line.empty()) continue;
    lines_.push_back(nlohmann::json::parse(line, nullptr, false));
    if (lines_.back().is_discarded()) lines_.back() = nullptr;
    ++added;
  }
  partial_.erase(0, begin);
  return replaced || added > 0;
}

nlohmann::json MetricsTail::lines_from(size_t from) const {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = from; i < lines_.size(); ++i) out.push_back(lines_[i]);
  return out;
}

std::optional<SampleName> parse_sample_name(std::string_view filename) {
  if (!filename.ends_with(".png")) return std::nullopt;
  std::string_view stem = filename.substr(0, filename.size() - 4);
  // From the right: seed, index (2+ digits), step (6+ digits); the name may hold underscores itself.
  std::string_view fields[3];
  for (int i = 2; i >= 0; --i) {
    const size_t cut = stem.rfind('_');
    if (cut == std::string_view::npos) return std::nullopt;
    fields[i] = stem.substr(cut + 1);
    stem = stem.substr(0, cut);
  }
  SampleName out;
  out.name = std::string(stem);
  auto number = [](std::string_view text, auto& value) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    return !text.empty() && ec == std::errc() && end == text.data() + text.size();
  };
  if (out.name.empty() || fields[0].size() < 6 || fields[1].size() < 2 || !number(fields[0], out.step) ||
      !number(fields[1], out.index) || !number(fields[2], out.seed))
    return std::nullopt;
  return out;
}

nlohmann::json list_run_files(const fs::path& root, size_t max_files) {
  nlohmann::json files = nlohmann::json::array();
  std::map<int, std::vector<nlohmann::json>> samples;
  std::vector<std::string> states;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  for (; !ec && it != end && files.size() < max_files; it.increment(ec)) {
    const fs::directory_entry& entry = *it;
    const std::string name = entry.path().filename().string();
    const fs::path relative = entry.path().lexically_relative(root);
    std::error_code type_ec;
    if (entry.is_symlink(type_ec) || name.starts_with(".")) {
      if (entry.is_directory(type_ec)) it.disable_recursion_pending();
      continue;
    }
    if (entry.is_directory(type_ec)) {
      // The caches are many and large, and nobody downloads them from a page; nested runs have their own.
      if ((it.depth() == 0 && (name == "cache" || name.starts_with("run-"))) || it.depth() >= 3)
        it.disable_recursion_pending();
      if (it.depth() == 1 && relative.begin()->string() == "state") states.push_back(relative.generic_string());
      continue;
    }
    if (!entry.is_regular_file(type_ec) || name == kTokenFileName || name.ends_with(".tmp") || name.ends_with(".part"))
      continue;
    const std::string path = relative.generic_string();
    const auto size = entry.file_size(type_ec);
    const auto mtime = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::file_clock::to_sys(entry.last_write_time(type_ec)).time_since_epoch())
                           .count();
    files.push_back({{"path", path}, {"size", type_ec ? 0 : size}, {"mtime", mtime}});
    if (it.depth() == 1 && relative.begin()->string() == "samples") {
      if (auto sample = parse_sample_name(name))
        samples[sample->index].push_back({{"step", sample->step}, {"path", path}, {"seed", sample->seed}});
    }
  }
  std::sort(files.begin(), files.end(),
            [](const nlohmann::json& a, const nlohmann::json& b) { return a["path"] < b["path"]; });
  nlohmann::json prompts = nlohmann::json::array();
  for (auto& [index, images] : samples) {
    std::sort(images.begin(), images.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
      return a["step"].get<int64_t>() < b["step"].get<int64_t>();
    });
    prompts.push_back({{"prompt", index}, {"images", images}});
  }
  std::sort(states.begin(), states.end());
  return {{"files", files}, {"samples", prompts}, {"states", states}};
}

std::string content_type_of(const fs::path& file) {
  static const std::map<std::string, std::string> types = {
      {".png", "image/png"},
      {".jpg", "image/jpeg"},
      {".jpeg", "image/jpeg"},
      {".webp", "image/webp"},
      {".svg", "image/svg+xml"},
      {".html", "text/html; charset=utf-8"},
      {".json", "application/json"},
      {".jsonl", "text/plain; charset=utf-8"},
      {".toml", "text/plain; charset=utf-8"},
      {".txt", "text/plain; charset=utf-8"},
      {".log", "text/plain; charset=utf-8"},
      {".md", "text/plain; charset=utf-8"},
  };
  const auto found = types.find(file.extension().string());
  return found != types.end() ? found->second : "application/octet-stream";
}

}  // namespace fluxtrain::monitor
