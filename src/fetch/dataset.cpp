#include "fetch/dataset.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "core/strings.h"
#include "fetch/hub.h"
#include "fetch/kaggle.h"

namespace fluxtrain::fetch {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* const kMarker = "complete.json";

// A bare owner/name's source does not have the dataset: not there (404), or not for these credentials
// (401/403: Kaggle answers so for a private set, the Hub for a repository it does not show): the next
// source is asked.
bool source_lacks_it(const HttpStatusError& e) { return e.not_found || e.status == 401 || e.status == 403; }

bool valid_repo_part(std::string_view part) {
  if (part.empty() || part == "." || part == "..") return false;
  return std::all_of(part.begin(), part.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

bool is_repo_id(std::string_view text) {
  size_t slash = text.find('/');
  return slash != std::string_view::npos && valid_repo_part(text.substr(0, slash)) &&
         valid_repo_part(text.substr(slash + 1));
}

// A readable folder name: [A-Za-z0-9._-], at most 60 characters, never hidden.
std::string slug(std::string_view text) {
  std::string out;
  for (char c : text) {
    bool keep = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    out += keep ? c : '-';
  }
  while (!out.empty() && out.front() == '.') out.erase(out.begin());
  if (out.size() > 60) out.resize(60);
  return out.empty() ? "dataset" : out;
}

const char* kind_name(DatasetSourceKind kind) {
  switch (kind) {
    case DatasetSourceKind::hub: return "hub";
    case DatasetSourceKind::kaggle: return "kaggle";
    case DatasetSourceKind::url: return "url";
    case DatasetSourceKind::local: return "local";
    case DatasetSourceKind::any: return "any";
  }
  return "?";
}

// The URL up to its query or fragment.
std::string url_without_query(const std::string& url) {
  return url.substr(0, url.find_first_of("?#"));
}

// The query parameters of presigned URLs (S3 and compatibles, Google Cloud Storage, Azure SAS,
// CloudFront) that change each time the URL is signed again.
bool is_signing_parameter(std::string_view name) {
  // clang-format off
  static const std::set<std::string, std::less<>> kNames = {
      "signature", "expires", "googleaccessid", "awsaccesskeyid", "policy", "key-pair-id",  // S3 v2, GCS, CloudFront
      "sig", "se", "st", "sp", "sv", "sr", "spr", "ss", "srt", "ses",                      // Azure SAS
      "skoid", "sktid", "skt", "ske", "sks", "skv"};                                        // Azure user delegation
  // clang-format on
  const std::string lowered = lower(name);
  return lowered.starts_with("x-amz-") || lowered.starts_with("x-goog-") || kNames.contains(lowered);
}

// A URL's identity for the cache: without user info and signing parameters, so that the same object
// signed again (a presigned URL renewed after a pod restart) is the same cache entry, while other
// query parameters (?version=2) still tell datasets apart. Only hashed, never shown.
std::string url_identity(const std::string& url) {
  const size_t query = url.find('?');
  std::string out = url_without_query(url);
  if (size_t scheme = out.find("://"); scheme != std::string::npos) {
    const size_t authority = scheme + 3;
    const size_t at = out.rfind('@', out.find('/', authority));
    if (at != std::string::npos && at >= authority) out.erase(authority, at + 1 - authority);
  }
  if (query == std::string::npos) return out;
  const std::string params = url.substr(query + 1, url.find('#', query) - query - 1);
  std::string kept;
  for (size_t start = 0; start <= params.size();) {
    const size_t end = std::min(params.find('&', start), params.size());
    const std::string param = params.substr(start, end - start);
    if (!param.empty() && !is_signing_parameter(param.substr(0, param.find('=')))) kept += "&" + param;
    start = end + 1;
  }
  return kept.empty() ? out : out + "?" + kept.substr(1);
}

// The cache folder of one source at one revision.
struct Entry {
  fs::path dir;
  std::string source;    // shown to the user and stored in the marker (credentials stripped)
  std::string revision;  // as stored in the marker ("" when none applies)
  // The fixes of a 404 in the source's own message; off when the caller lists every try and the fixes
  // itself (a bare owner/name).
  bool hints = true;
};

// The dataset root recorded in a complete entry, if the entry is complete.
std::optional<fs::path> complete_root(const fs::path& dir) {
  std::ifstream in(dir / kMarker);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  json marker = json_depth(text.str()) <= kMaxJsonDepth ? json::parse(text.str(), nullptr, false) : json();
  if (marker.is_discarded() || !marker.is_object() || !marker.contains("root") || !marker["root"].is_string()) {
    log::warn("ignoring the unreadable completion marker ", dir / kMarker, "; fetching again");
    return std::nullopt;
  }
  std::string why;
  std::string root = normalize_relative_path(marker["root"].get<std::string>(), &why);
  fs::path path = root.empty() ? dir : dir / root;
  std::error_code ec;
  if (!why.empty() || root.empty() || !fs::is_directory(path, ec)) {
    log::warn("the cached dataset in ", dir, " is incomplete (", path, " is missing); fetching again");
    return std::nullopt;
  }
  return path;
}

// The folder a dataset is read from: `folder`, or its only entry when that is a folder.
fs::path choose_root(const fs::path& folder) {
  std::vector<fs::directory_entry> entries;
  for (const auto& entry : fs::directory_iterator(folder)) entries.push_back(entry);
  if (entries.size() == 1 && entries[0].is_directory() && !entries[0].is_symlink()) return entries[0].path();
  return folder;
}

void write_marker(const Entry& entry, const fs::path& root) {
  uint64_t files = 0, bytes = 0;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    if (it->is_regular_file()) {
      ++files;
      bytes += it->file_size();
    }
  }
  char when[32];
  std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json marker = {{"source", entry.source},
                 {"revision", entry.revision},
                 {"root", fs::relative(root, entry.dir).generic_string()},
                 {"files", files},
                 {"bytes", bytes},
                 {"fetched_at", when}};
  write_file_atomic((entry.dir / kMarker).string(), marker.dump(2) + "\n");
  log::info("dataset ready: ", format_count(static_cast<long long>(files)), " files, ", format_bytes(double(bytes)),
            " in ", root.string());
}

// Removes a failed entry that holds no file worth keeping for the next run, and its kind folder if
// that is then empty.
void remove_if_no_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) return;
  }
  fs::remove_all(dir, ec);
  fs::remove(dir.parent_path(), ec);  // fails harmlessly when not empty
}

// An exclusive lock on the cache folder for the time of a fetch (flock on the folder itself, so no
// lock file is left behind).
class CacheLock {
 public:
  explicit CacheLock(const fs::path& dir) {
    fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0) return;
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    if (errno == EWOULDBLOCK) {
      log::info("waiting for another fluxtrain process that is fetching into ", dir.string());
      if (::flock(fd_, LOCK_EX) == 0) return;
    }
    log::debug("cannot lock ", dir.string(), " (", std::strerror(errno), "); fetching without a lock");
  }
  ~CacheLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  CacheLock(const CacheLock&) = delete;
  CacheLock& operator=(const CacheLock&) = delete;

 private:
  int fd_ = -1;
};

// --- Hugging Face Hub ---

std::string hub_not_found_hint(const std::string& repo, const FetchOptions& options, const Entry& entry) {
  if (!entry.hints) return "";
  return cat("check the dataset name and the revision '", entry.revision, "' at ", options.hf_endpoint, "/datasets/",
             repo, " (a model repository is not a dataset); for a Kaggle dataset write kaggle:", repo, " (or ", repo,
             " to try Kaggle, then the Hub); and if a local folder was meant, ./", repo, " does not exist here");
}

bool have_file(const fs::path& path, const HubFile& file) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec)) ||
      fs::file_size(path, ec) != static_cast<uint64_t>(file.size)) {
    return false;
  }
  return file.sha256.empty() || sha256_file_hex(path) == file.sha256;
}

// Removes what an earlier revision left in `folder` and the listing no longer names, then empty folders.
void remove_unlisted(const fs::path& folder, const std::vector<HubFile>& files) {
  std::set<std::string> listed;
  for (const HubFile& file : files) listed.insert(file.path);
  std::vector<fs::path> stale, folders;
  for (auto it = fs::recursive_directory_iterator(folder); it != fs::recursive_directory_iterator(); ++it) {
    if (it->is_directory() && !it->is_symlink()) {
      folders.push_back(it->path());
    } else if (!listed.contains(fs::relative(it->path(), folder).generic_string())) {
      stale.push_back(it->path());
    }
  }
  for (const fs::path& path : stale) fs::remove(path);
  std::sort(folders.begin(), folders.end(),
            [](const fs::path& a, const fs::path& b) { return a.native().size() > b.native().size(); });
  std::error_code ec;
  for (const fs::path& path : folders) fs::remove(path, ec);  // only the empty ones go
}

fs::path fetch_hub(const std::string& repo, const Entry& entry, const FetchOptions& options) {
  const std::string& revision = entry.revision;
  log::info("fetching Hugging Face dataset ", repo, " (revision ", revision, ") from ", options.hf_endpoint);
  const fs::path partial = entry.dir / "partial";
  const fs::path dataset = entry.dir / "dataset";
  if (fs::exists(dataset)) {
    // A complete copy being refreshed, or one whose marker was never written: its files count.
    if (fs::exists(partial))
      fs::remove_all(dataset);
    else
      fs::rename(dataset, partial);
  }
  HubListing listing;
  listing.repo = repo;
  listing.revision = revision;
  listing.not_found_hint = hub_not_found_hint(repo, options, entry);
  const std::vector<HubFile> files = list_hub_files(listing, options);
  if (files.empty()) fail("Hugging Face dataset ", repo, " at revision '", revision, "' holds no files");

  std::vector<const HubFile*> missing;
  int64_t missing_bytes = 0;
  for (const HubFile& file : files) {
    if (have_file(partial / file.path, file)) continue;
    missing.push_back(&file);
    missing_bytes += file.size;
  }
  log::info(repo, ": ", files.size(), " files; ", missing.size(), " to download (", format_bytes(double(missing_bytes)),
            ")");
  fs::create_directories(partial);
  if (!missing.empty()) {
    std::unique_ptr<Progress> progress;
    if (options.http.progress) {
      ProgressOptions progress_options;
      progress_options.unit = "B";
      progress = std::make_unique<Progress>("download " + repo, missing_bytes, progress_options);
    }
    HttpOptions http = options.http;
    http.progress = false;  // the shared bar above
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::exception_ptr first_error;
    std::mutex error_mutex;
    auto worker = [&] {
      while (!stop) {
        size_t index = next++;
        if (index >= missing.size()) return;
        const HubFile& file = *missing[index];
        try {
          HttpRequest request;
          request.url = hub_file_url(HubRepoType::dataset, repo, revision, file.path, options);
          request.auth = hub_auth(options);
          request.what = cat("file '", file.path, "' of Hugging Face dataset ", repo);
          request.not_found_hint = hub_not_found_hint(repo, options, entry);
          http_download(request, {partial / file.path, file.size, file.sha256, progress.get()}, http);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!first_error) first_error = std::current_exception();
          stop = true;
        }
      }
    };
    size_t count = std::min<size_t>(std::max(1, options.parallel_downloads), missing.size());
    std::vector<std::thread> threads;
    for (size_t i = 1; i < count; ++i) threads.emplace_back(worker);
    worker();
    for (std::thread& thread : threads) thread.join();
    if (first_error) std::rethrow_exception(first_error);
  }
  remove_unlisted(partial, files);
  fs::rename(partial, dataset);
  fsync_directory(entry.dir.string());
  fs::path root = choose_root(dataset);
  write_marker(entry, root);
  return root;
}

// --- one file: a URL, a Kaggle zip, a local archive ---

// "the download is an HTML page" is the usual reason a URL gives no archive.
std::string content_hint(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(512, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head = lower(head.substr(0, static_cast<size_t>(in.gcount())));
  if (head.find("<html") != std::string::npos || head.find("<!doctype") != std::string::npos) {
    return " (it is an HTML page: a login or error page instead of the file?)";
  }
  return "";
}

fs::path fetch_file(const DatasetSource& source, const Entry& entry, const FetchOptions& options) {
  const fs::path download_dir = entry.dir / "download";
  const fs::path dataset = entry.dir / "dataset";
  fs::path file;
  bool must_extract = false;
  if (source.kind == DatasetSourceKind::local) {
    file = source.path;
    must_extract = true;
  } else {
    HttpRequest request;
    std::string name;
    if (source.kind == DatasetSourceKind::kaggle) {
      request = kaggle_download_request(source.repo, entry.revision, options, entry.hints);
      name = slug(source.repo.substr(source.repo.find('/') + 1)) + ".zip";
      must_extract = true;
      log::info("fetching Kaggle dataset ", source.repo,
                entry.revision.empty() ? "" : " (version " + entry.revision + ")", " from ", redact_url(request.url),
                " (DATASET_HOST, ",
                options.kaggle_username.empty() ? "no credentials" : "with KAGGLE_USERNAME and KAGGLE_KEY", ")");
    } else {
      request.url = source.url;
      request.what = cat("the dataset at ", entry.source);
      request.not_found_hint = "check the URL";
      const std::string shown = url_without_query(entry.source);
      std::string path = shown.substr(shown.find("://") + 3);
      size_t slash = path.find('/');
      path = slash == std::string::npos ? "" : path.substr(path.rfind('/') + 1);
      name = slug(path);
      must_extract = has_archive_extension(name);
      log::info("fetching ", entry.source);
    }
    file = download_dir / name;
    if (!fs::exists(file)) http_download(request, DownloadTarget{file, -1, "", nullptr}, options.http);
  }
  const bool archive = is_archive(file);
  if (must_extract && !archive) {
    fail(entry.source, ": ", source.kind == DatasetSourceKind::local ? "the file" : "the download", " (", file.string(),
         ", ", format_bytes(double(fs::file_size(file))), ") is not a zip or tar archive", content_hint(file),
         source.kind == DatasetSourceKind::local ? "" : "; delete it to download it again");
  }
  std::error_code ec;
  fs::remove_all(dataset, ec);  // a stale copy without a marker
  if (archive) {
    ExtractStats stats;
    try {
      stats = extract_archive(file, dataset, options.limits, entry.source);
    } catch (const Error& e) {
      if (source.kind == DatasetSourceKind::local) throw;
      // The download is complete: a run with raised limits extracts it again without downloading.
      fail(e.what(), " (the downloaded file stays at ", file.string(), "; delete it to download again)");
    }
    log::info("extracted ", format_count(static_cast<long long>(stats.files)), " files (",
              format_bytes(double(stats.bytes)), ")",
              stats.skipped ? cat(", skipped ", stats.skipped, " entries") : "");
  } else {
    // A single file (an image, a parquet file, ...): the dataset folder holds it alone.
    fs::path temp = entry.dir / ".dataset.tmp";
    fs::remove_all(temp, ec);
    fs::create_directories(temp);
    fs::rename(file, temp / file.filename());
    fs::rename(temp, dataset);
    fsync_directory(entry.dir.string());
  }
  fs::path root = choose_root(dataset);
  write_marker(entry, root);
  fs::remove_all(download_dir, ec);
  return root;
}

// The cache entry of a source: a local archive, a URL, a Hub or a Kaggle dataset (a bare owner/name has
// the entries of both of its sources).
Entry plan_entry(const DatasetSource& source, const fs::path& cache_dir, const FetchOptions& options) {
  Entry entry;
  std::string identity;
  switch (source.kind) {
    case DatasetSourceKind::local: {
      const fs::path absolute = fs::absolute(source.path).lexically_normal();
      entry.source = absolute.string();
      auto mtime = fs::last_write_time(source.path).time_since_epoch().count();
      identity = cat("local\n", entry.source, "\n", fs::file_size(source.path), "\n", mtime);
      break;
    }
    case DatasetSourceKind::url:
      entry.source = redact_url(source.url);
      identity = cat("url\n", url_identity(source.url));
      break;
    case DatasetSourceKind::hub:
      entry.source = cat(options.hf_endpoint, "/datasets/", source.repo);
      entry.revision = options.revision.empty() ? "main" : options.revision;
      identity = cat("hub\n", options.hf_endpoint, "\n", source.repo, "\n", entry.revision);
      break;
    case DatasetSourceKind::kaggle:
      entry.source = cat("kaggle:", source.repo);
      entry.revision = options.revision;
      identity = cat("kaggle\n", options.kaggle_download, "\n", source.repo, "\n", options.revision);
      break;
    case DatasetSourceKind::any: fail("internal: a bare owner/name has no cache entry of its own");
  }
  std::string readable = source.kind == DatasetSourceKind::hub || source.kind == DatasetSourceKind::kaggle
                             ? source.repo + (entry.revision.empty() ? "" : "@" + entry.revision)
                             : fs::path(url_without_query(entry.source)).filename().string();
  entry.dir = cache_dir / kind_name(source.kind) / cat(slug(readable), "-", sha256_hex(identity).substr(0, 12));
  return entry;
}

void create_cache_dir(const fs::path& cache_dir) {
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  if (ec) {
    fail("cannot create the dataset cache folder ", cache_dir, ": ", ec.message(),
         "; point DATASET_PATH (or FLUXTRAIN_DATASET_CACHE, --cache-dir) at a writable folder");
  }
}

// Fetches one source into its entry (or returns its complete copy).
fs::path fetch_entry(const DatasetSource& source, const Entry& entry, const fs::path& cache_dir,
                     const FetchOptions& options) {
  if (!options.refresh) {
    if (auto root = complete_root(entry.dir)) {
      log::info("using the cached copy of ", entry.source, " (", root->string(), ")");
      return *root;
    }
  }
  create_cache_dir(cache_dir);
  CacheLock lock(cache_dir);
  if (!options.refresh) {
    if (auto root = complete_root(entry.dir)) return *root;  // another process finished it meanwhile
  }
  std::error_code ec;
  try {
    fs::create_directories(entry.dir);
    // From here on the entry is incomplete until the marker is written again.
    fs::remove(entry.dir / kMarker, ec);
    if (source.kind == DatasetSourceKind::hub) return fetch_hub(source.repo, entry, options);
    return fetch_file(source, entry, options);
  } catch (const fs::filesystem_error& e) {
    remove_if_no_files(entry.dir);
    fail("fetching ", entry.source, " into ", entry.dir, ": ", e.what());
  } catch (...) {
    remove_if_no_files(entry.dir);
    throw;
  }
}

// A bare owner/name, as the seed's container reads DATASET_NAME: the zip at DATASET_HOST/owner/name
// (Kaggle's download API), and when that source does not have it, the Hugging Face Hub's dataset
// repository. A copy of either in the cache is used without any request (Kaggle's first); --refresh
// checks the source that copy came from again.
fs::path fetch_any(const std::string& repo, const fs::path& cache_dir, const FetchOptions& options) {
  DatasetSource kaggle{DatasetSourceKind::kaggle, repo, "", {}};
  DatasetSource hub{DatasetSourceKind::hub, repo, "", {}};
  const bool kaggle_applies = is_kaggle_version(options.revision);
  check_kaggle_source(repo, "", options);  // both credentials or neither, even when only the Hub is asked
  Entry kaggle_entry, hub_entry = plan_entry(hub, cache_dir, options);
  if (kaggle_applies) kaggle_entry = plan_entry(kaggle, cache_dir, options);
  kaggle_entry.hints = hub_entry.hints = false;
  // A complete copy: from the cache, or, with --refresh, checked again at its own source.
  for (auto [source, entry] : {std::pair{&kaggle, &kaggle_entry}, std::pair{&hub, &hub_entry}}) {
    if (entry->dir.empty() || !complete_root(entry->dir)) continue;
    if (options.refresh) log::info(repo, ": refreshing the copy from ", entry->source);
    return fetch_entry(*source, *entry, cache_dir, options);
  }
  std::vector<std::string> tried;
  if (!kaggle_applies) {
    tried.push_back(cat("Kaggle (DATASET_HOST ", options.kaggle_download, "): not asked, the revision '",
                        options.revision, "' is not a Kaggle version number"));
    log::info(repo, ": not asking Kaggle (DATASET_HOST): the revision '", options.revision,
              "' is not a Kaggle version number; trying the Hugging Face Hub");
  } else {
    try {
      fs::path root = fetch_entry(kaggle, kaggle_entry, cache_dir, options);
      log::info("dataset ", repo, " was served by Kaggle (DATASET_HOST ", options.kaggle_download, ")");
      return root;
    } catch (const HttpStatusError& e) {
      // Other failures (5xx after the retries, a broken download) end the fetch: a dataset that Kaggle has
      // is never swapped for the Hub's.
      if (!source_lacks_it(e)) throw;
      tried.push_back(cat("Kaggle (DATASET_HOST): ", e.what()));
      log::info(repo, ": Kaggle does not have it (HTTP ", e.status, "); trying the Hugging Face Hub (HF_ENDPOINT ",
                options.hf_endpoint, ")");
    }
  }
  try {
    fs::path root = fetch_entry(hub, hub_entry, cache_dir, options);
    log::info("dataset ", repo, " was served by the Hugging Face Hub (HF_ENDPOINT ", options.hf_endpoint, ")");
    return root;
  } catch (const HttpStatusError& e) {
    if (!source_lacks_it(e)) throw;
    tried.push_back(cat("the Hugging Face Hub (HF_ENDPOINT): ", e.what()));
  }
  std::string list;
  for (size_t i = 0; i < tried.size(); ++i) list += cat(i ? "; " : "", i + 1, ") ", tried[i]);
  fail("dataset '", repo, "' was found neither on Kaggle nor on the Hugging Face Hub; tried ", list,
       ". Fix: check the name (https://www.kaggle.com/datasets/", repo, ", ", options.hf_endpoint, "/datasets/", repo,
       options.revision.empty() ? "" : cat(", revision '", options.revision, "'"),
       "); a private dataset needs credentials (KAGGLE_USERNAME and KAGGLE_KEY for Kaggle, HF_TOKEN for the Hub); "
       "write kaggle:",
       repo, " or hf:", repo, " to ask one source only; and if a local folder was meant, ./", repo,
       " does not exist here");
}

}  // namespace

DatasetSource parse_dataset_source(const std::string& spec) {
  const std::string forms =
      "a local folder, an http(s) URL, a dataset 'owner/name' (Kaggle, then the Hugging Face Hub), "
      "'kaggle:owner/name' or 'hf:owner/name'";
  if (spec.empty()) fail("the dataset name (DATASET_NAME) is empty: give ", forms);
  DatasetSource source;
  std::string lowered = lower(spec);
  if (lowered.starts_with("kaggle:") || lowered.starts_with("hf:")) {
    bool kaggle = lowered.starts_with("kaggle:");
    source.kind = kaggle ? DatasetSourceKind::kaggle : DatasetSourceKind::hub;
    source.repo = spec.substr(spec.find(':') + 1);
    if (!is_repo_id(source.repo)) {
      fail("dataset '", spec, "': expected ",
           kaggle ? "kaggle:" : "hf:", "owner/name (letters, digits, '-', '_', '.'), got '", source.repo, "'");
    }
    return source;
  }
  if (lowered.starts_with("http://") || lowered.starts_with("https://")) {
    source.kind = DatasetSourceKind::url;
    source.url = spec;
    return source;
  }
  if (size_t scheme = spec.find("://"); scheme != std::string::npos) {
    fail("dataset '", redact_url(spec), "': the scheme '", spec.substr(0, scheme), "://' is not supported; give ",
         forms);
  }
  std::error_code ec;
  if (!fs::exists(spec, ec) && is_repo_id(spec)) {
    source.kind = DatasetSourceKind::any;
    source.repo = spec;
    return source;
  }
  source.kind = DatasetSourceKind::local;
  source.path = spec;
  return source;
}

fs::path fetch_dataset(const std::string& spec, const fs::path& cache_dir, const FetchOptions& options) {
  const DatasetSource source = parse_dataset_source(spec);
  std::error_code ec;
  switch (source.kind) {
    case DatasetSourceKind::local: {
      if (!options.revision.empty()) {
        fail("a revision ('", options.revision,
             "') applies only to Hugging Face and Kaggle datasets, not to the local "
             "path '",
             spec, "'");
      }
      const fs::path absolute = fs::absolute(source.path).lexically_normal();
      auto status = fs::status(source.path, ec);
      if (fs::is_directory(status)) return absolute;
      if (!fs::is_regular_file(status)) {
        fail("dataset '", spec, "': no such folder (", absolute.string(), "); give ",
             "a local folder, an http(s) URL, a dataset 'owner/name' (Kaggle, then the Hugging Face Hub), "
             "'kaggle:owner/name' or 'hf:owner/name'");
      }
      if (!is_archive(source.path)) {
        fail("dataset '", spec,
             "' is a file, but neither a folder nor a zip or tar archive: give the folder that holds "
             "the images and captions");
      }
      break;
    }
    case DatasetSourceKind::url:
      if (!options.revision.empty()) {
        fail("a revision ('", options.revision, "') applies only to Hugging Face and Kaggle datasets, not to the URL ",
             redact_url(source.url));
      }
      break;
    case DatasetSourceKind::kaggle: check_kaggle_source(source.repo, options.revision, options); break;
    case DatasetSourceKind::hub: break;
    case DatasetSourceKind::any: return fetch_any(source.repo, cache_dir, options);
  }
  return fetch_entry(source, plan_entry(source, cache_dir, options), cache_dir, options);
}

}  // namespace fluxtrain::fetch
