#include "app/environment_knobs.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "core/assets.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/strings.h"
#include "train/cpu_allocator.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

// The variable's value; "" when unset.
std::string text_of(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// Unset or empty: `fallback`. Otherwise a whole number in [min, max], or an Error naming the variable.
int whole_number(const char* name, int fallback, int min, int max) {
  const std::string text = text_of(name);
  if (text.empty()) return fallback;
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (*end != '\0' || value < min || value > max) {
    fail(name, "='", text, "' is not a whole number from ", min, " to ", max);
  }
  return static_cast<int>(value);
}

// As whole_number(), for any number in [min, max].
double number(const char* name, double fallback, double min, double max) {
  const std::string text = text_of(name);
  if (text.empty()) return fallback;
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (*end != '\0' || !(value >= min && value <= max))
    fail(name, "='", text, "' is not a number from ", min, " to ", max);
  return value;
}

// Unset or empty: `fallback` (which is also the example in the error). Otherwise an http(s) URL, without
// trailing slashes.
std::string http_url(const char* name, const std::string& fallback) {
  std::string text = text_of(name);
  if (text.empty()) return fallback;
  const std::string lowered = lower(text);
  if (!lowered.starts_with("http://") && !lowered.starts_with("https://"))
    fail(name, "='", text, "' is not an http(s) URL (e.g. ", fallback, ")");
  while (!text.empty() && text.back() == '/') text.pop_back();
  return text;
}

// Bytes, or a number with a K, M, G or T suffix (KiB, MiB, ... too) in powers of 1024; positive.
uint64_t byte_size(const char* name, const char* text) {
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text, &end, 10);
  uint64_t scale = 1;
  const std::string suffix = upper(end);
  if (suffix == "K" || suffix == "KIB")
    scale = uint64_t{1} << 10;
  else if (suffix == "M" || suffix == "MIB")
    scale = uint64_t{1} << 20;
  else if (suffix == "G" || suffix == "GIB")
    scale = uint64_t{1} << 30;
  else if (suffix == "T" || suffix == "TIB")
    scale = uint64_t{1} << 40;
  else if (!suffix.empty())
    scale = 0;
  if (end == text || *text == '-' || errno != 0 || scale == 0 || value == 0 || value > UINT64_MAX / scale) {
    fail(name, "='", text,
         "' is not a size: give a positive number of bytes, or one with a K, M, G or T suffix (powers "
         "of 1024), e.g. 500G");
  }
  return value * scale;
}

}  // namespace

// --- Downloads ---

std::string hf_endpoint() {
  return http_url("HF_ENDPOINT", fetch::FetchOptions{}.hf_endpoint);
}

std::string hf_token() {
  return text_of("HF_TOKEN");
}

std::string kaggle_endpoint() {
  return http_url("KAGGLE_API_ENDPOINT", fetch::FetchOptions{}.kaggle_endpoint);
}

std::string kaggle_username() {
  return text_of("KAGGLE_USERNAME");
}

std::string kaggle_key() {
  return text_of("KAGGLE_KEY");
}

int download_workers() {
  return whole_number("FLUXTRAIN_DOWNLOAD_WORKERS", fetch::FetchOptions{}.parallel_downloads, 1, 64);
}

int http_retries() {
  return whole_number("FLUXTRAIN_HTTP_RETRIES", fetch::HttpOptions{}.max_attempts - 1, 0, 100);
}

double http_backoff_seconds() {
  return number("FLUXTRAIN_HTTP_BACKOFF_SECONDS", fetch::HttpOptions{}.backoff_seconds, 0, 600);
}

uint64_t archive_max_bytes() {
  const std::string text = text_of("FLUXTRAIN_ARCHIVE_MAX_BYTES");
  if (text.empty()) return fetch::ArchiveLimits{}.max_total_bytes;
  return byte_size("FLUXTRAIN_ARCHIVE_MAX_BYTES", text.c_str());
}

uint64_t archive_max_entries() {
  const std::string text = text_of("FLUXTRAIN_ARCHIVE_MAX_ENTRIES");
  if (text.empty()) return fetch::ArchiveLimits{}.max_entries;
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || text[0] == '-' || errno != 0 || value == 0) {
    fail("FLUXTRAIN_ARCHIVE_MAX_ENTRIES='", text, "' is not a positive whole number");
  }
  return value;
}

double archive_max_ratio() {
  const std::string text = text_of("FLUXTRAIN_ARCHIVE_MAX_RATIO");
  if (text.empty()) return fetch::ArchiveLimits{}.max_ratio;
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (*end != '\0' || !(value >= 1)) fail("FLUXTRAIN_ARCHIVE_MAX_RATIO='", text, "' is not a number of at least 1");
  return value;
}

fetch::HttpOptions http_options_from_environment() {
  fetch::HttpOptions options;
  options.max_attempts = 1 + http_retries();
  options.backoff_seconds = http_backoff_seconds();
  options.max_backoff_seconds = std::max(options.max_backoff_seconds, options.backoff_seconds);
  return options;
}

fetch::ArchiveLimits archive_limits_from_environment() {
  fetch::ArchiveLimits limits;
  limits.max_total_bytes = archive_max_bytes();
  limits.max_entries = archive_max_entries();
  limits.max_ratio = archive_max_ratio();
  return limits;
}

fetch::FetchOptions fetch_options_from_environment() {
  fetch::FetchOptions options;
  options.hf_endpoint = hf_endpoint();
  options.hf_token = hf_token();
  options.kaggle_endpoint = kaggle_endpoint();
  options.kaggle_username = kaggle_username();
  options.kaggle_key = kaggle_key();
  options.parallel_downloads = download_workers();
  options.http = http_options_from_environment();
  options.limits = archive_limits_from_environment();
  return options;
}

fs::path default_dataset_cache_dir() {
  if (std::string dir = text_of("FLUXTRAIN_DATASET_CACHE"); !dir.empty()) return dir;
  if (std::string dir = text_of("FLUXTRAIN_CACHE"); !dir.empty()) return fs::path(dir) / "datasets";
  if (std::string dir = text_of("XDG_CACHE_HOME"); !dir.empty()) return fs::path(dir) / "fluxtrain" / "datasets";
  if (std::string home = text_of("HOME"); !home.empty()) return fs::path(home) / ".cache" / "fluxtrain" / "datasets";
  fail("no folder for the dataset cache: HOME is not set; set FLUXTRAIN_DATASET_CACHE (or --cache-dir)");
}

// --- Process-wide settings ---

double progress_seconds() {
  const char* text = std::getenv("FLUXTRAIN_PROGRESS_SECONDS");
  const double value = text != nullptr ? std::atof(text) : 0;
  return value > 0 ? value : 10.0;
}

fs::path assets_folder() {
  return text_of("FLUXTRAIN_ASSETS");
}

void apply_process_environment() {
  set_default_line_interval_seconds(progress_seconds());
  set_user_asset_root(assets_folder());
}

// --- Engine ---

int64_t cpu_cache_limit_bytes() {
  return int64_t{whole_number("FLUXTRAIN_CPU_CACHE_MB", train::kDefaultCpuCacheBytes >> 20, 0, 1 << 24)} << 20;
}

std::optional<int64_t> source_date_epoch() {
  const std::string text = text_of("SOURCE_DATE_EPOCH");
  if (text.empty()) return std::nullopt;
  return static_cast<int64_t>(std::strtoll(text.c_str(), nullptr, 10));
}

std::string engine_library() {
  return text_of("FLUXTRAIN_ENGINE");
}

}  // namespace fluxtrain::app
