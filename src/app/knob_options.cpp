#include "app/knob_options.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "core/assets.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/stop.h"
#include "core/strings.h"
#include "fetch/kaggle.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

// An http(s) URL; the setter drops trailing slashes.
std::string check_http_url(const OptionValue& value) {
  const std::string lowered = lower(std::get<std::string>(value));
  return lowered.starts_with("http://") || lowered.starts_with("https://") ? "" : "not an http(s) URL";
}

std::string without_trailing_slashes(std::string text) {
  while (!text.empty() && text.back() == '/') text.pop_back();
  return text;
}

// Bytes, or a number with a K, M, G or T suffix (KiB, MiB, ... too) in powers of 1024; positive.
std::optional<uint64_t> byte_size(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
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
  if (end == text.c_str() || text[0] == '-' || errno != 0 || scale == 0 || value == 0 || value > UINT64_MAX / scale)
    return std::nullopt;
  return value * scale;
}

std::string env_text(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

}  // namespace

std::vector<Opt<DownloadSettings>> download_options(unsigned which, const std::string& group) {
  using S = DownloadSettings;
  using F = fetch::FetchOptions;
  std::vector<Opt<S>> out;
  if (which & kHubKnobs) {
    out.push_back(Opt<S>("hf_endpoint", kString, group, "https://huggingface.co",
                         "The Hugging Face Hub's address, as huggingface_hub reads it (a mirror, a test server).")
                      .env("HF_ENDPOINT")
                      .check(check_http_url)
                      .allowed("an http(s) URL")
                      .safe_on_resume()
                      .set([](S& s, const std::string& v) { s.fetch.hf_endpoint = without_trailing_slashes(v); }));
    out.push_back(Opt<S>("hf_token", kString, group, "",
                         "A Hub access token, sent to the Hub's own address only (gated models such as FLUX.1-dev, "
                         "private datasets). Never printed.")
                      .env("HF_TOKEN")
                      .secret()
                      .safe_on_resume()
                      .to(&S::fetch, &F::hf_token));
  }
  if (which & kKaggleKnobs) {
    // DATASET_HOST, given, wins over KAGGLE_API_ENDPOINT whichever is applied first.
    out.push_back(Opt<S>("dataset_host", kString, group, "https://www.kaggle.com/api/v1/datasets/download",
                         "The seed's download address: a bare or kaggle: owner/name is the zip at DATASET_HOST/owner/"
                         "name (Kaggle's download API; a bare name not there comes from the Hugging Face Hub). "
                         "Unset: KAGGLE_API_ENDPOINT's /api/v1/datasets/download.")
                      .env("DATASET_HOST")
                      .check(check_http_url)
                      .allowed("an http(s) URL")
                      .safe_on_resume()
                      .set([](S& s, const std::string& v, const ResolvedOption& option) {
                        if (option.source == Source::default_value) return;
                        s.fetch.kaggle_download = without_trailing_slashes(v);
                        s.dataset_host_given = true;
                      }));
    out.push_back(Opt<S>("kaggle_api_endpoint", kString, group, "https://www.kaggle.com",
                         "Kaggle's address, as the kaggle client reads it (\"/api/v1\" is added unless it ends so); "
                         "the downloads go to its /api/v1/datasets/download unless DATASET_HOST is given.")
                      .env("KAGGLE_API_ENDPOINT")
                      .check(check_http_url)
                      .allowed("an http(s) URL")
                      .safe_on_resume()
                      .set([](S& s, const std::string& v) {
                        if (!s.dataset_host_given)
                          s.fetch.kaggle_download = fetch::kaggle_download_host(without_trailing_slashes(v));
                      }));
    out.push_back(Opt<S>("kaggle_username", kString, group, "",
                         "Kaggle API user name (kaggle.com -> Settings -> API), with KAGGLE_KEY: sent (basic auth) to "
                         "DATASET_HOST only, for private datasets; public ones need none.")
                      .env("KAGGLE_USERNAME")
                      .safe_on_resume()
                      .to(&S::fetch, &F::kaggle_username));
    out.push_back(Opt<S>("kaggle_key", kString, group, "", "Kaggle API key, with KAGGLE_USERNAME. Never printed.")
                      .env("KAGGLE_KEY")
                      .secret()
                      .safe_on_resume()
                      .to(&S::fetch, &F::kaggle_key));
  }
  if (which & kWorkerKnobs) {
    out.push_back(Opt<S>("download_workers", kInt, group, "8", "Hub files downloaded at once.")
                      .env("FLUXTRAIN_DOWNLOAD_WORKERS")
                      .min(1)
                      .max(64)
                      .safe_on_resume()
                      .to(&S::fetch, &F::parallel_downloads));
  }
  if (which & kHttpKnobs) {
    out.push_back(Opt<S>("http_retries", kInt, group, "4",
                         "Retries of a failed request after its first try (connection errors, timeouts, 429, 5xx).")
                      .env("FLUXTRAIN_HTTP_RETRIES")
                      .min(0)
                      .max(100)
                      .safe_on_resume()
                      .set([](S& s, const int64_t& v) { s.fetch.http.max_attempts = 1 + static_cast<int>(v); }));
    out.push_back(Opt<S>("http_backoff_seconds", kReal, group, "1",
                         "The wait before the first retry, doubled per retry (at most 30 s, or the server's "
                         "Retry-After up to 120 s).")
                      .env("FLUXTRAIN_HTTP_BACKOFF_SECONDS")
                      .min(0)
                      .max(600)
                      .safe_on_resume()
                      .set([](S& s, const double& v) {
                        s.fetch.http.backoff_seconds = v;
                        s.fetch.http.max_backoff_seconds = std::max(s.fetch.http.max_backoff_seconds, v);
                      }));
  }
  if (which & kArchiveKnobs) {
    out.push_back(
        Opt<S>("archive_max_bytes", kString, group, "64G", "The most bytes an archive may extract to, in total.")
            .env("FLUXTRAIN_ARCHIVE_MAX_BYTES")
            .check([](const OptionValue& v) { return byte_size(std::get<std::string>(v)) ? "" : "not a size"; })
            .allowed("a positive number of bytes, or one with a K, M, G or T suffix (powers of 1024), e.g. 500G")
            .safe_on_resume()
            .set([](S& s, const std::string& v) { s.fetch.limits.max_total_bytes = *byte_size(v); }));
    out.push_back(Opt<S>("archive_max_entries", kInt, group, "1000000",
                         "The most entries (files, folders, links) an archive may hold.")
                      .env("FLUXTRAIN_ARCHIVE_MAX_ENTRIES")
                      .min(1)
                      .safe_on_resume()
                      .to(&S::fetch, &F::limits, &fetch::ArchiveLimits::max_entries));
    out.push_back(Opt<S>("archive_max_ratio", kReal, group, "200",
                         "Per archive entry, the most bytes written per compressed byte read (decompression bombs).")
                      .env("FLUXTRAIN_ARCHIVE_MAX_RATIO")
                      .min(1)
                      .safe_on_resume()
                      .to(&S::fetch, &F::limits, &fetch::ArchiveLimits::max_ratio));
  }
  if (which & kDatasetCacheKnob) {
    out.push_back(Opt<S>("dataset_cache", kPath, group, "",
                         "Folder of the dataset cache; unset: DATASET_PATH, else FLUXTRAIN_CACHE/datasets, else "
                         "/workspace/dataset where /workspace exists, else $XDG_CACHE_HOME/fluxtrain/datasets, else "
                         "~/.cache/fluxtrain/datasets.")
                      .env("FLUXTRAIN_DATASET_CACHE")
                      .safe_on_resume()
                      .to(&S::dataset_cache));
  }
  if (which & kDatasetPathKnob) {
    out.push_back(Opt<S>("dataset_path", kPath, group, "",
                         "The seed's dataset folder: fetched datasets land in it, each in SOURCE/NAME-HASH/dataset "
                         "beside its completion marker. Unset: FLUXTRAIN_CACHE/datasets, else /workspace/dataset (the "
                         "seed's default) where /workspace exists, else $XDG_CACHE_HOME/fluxtrain/datasets, else "
                         "~/.cache/fluxtrain/datasets. FLUXTRAIN_DATASET_CACHE (or --cache-dir) wins over it.")
                      .env("DATASET_PATH")
                      .safe_on_resume()
                      .to(&S::dataset_path));
  }
  if (which & kCacheRootKnob) {
    out.push_back(
        Opt<S>("cache_root", kPath, group, "", "Folder of fluxtrain's caches (the datasets in its datasets/ folder).")
            .env("FLUXTRAIN_CACHE")
            .safe_on_resume()
            .to(&S::cache_root));
  }
  return out;
}

fs::path dataset_cache_dir(const DownloadSettings& settings, const fs::path& workspace) {
  if (!settings.dataset_cache.empty()) return settings.dataset_cache;
  if (!settings.dataset_path.empty()) return settings.dataset_path;
  if (!settings.cache_root.empty()) return fs::path(settings.cache_root) / "datasets";
  // The seed's DATASET_PATH default, where the seed runs (its image, a pod's volume).
  std::error_code ec;
  if (!workspace.empty() && fs::is_directory(workspace, ec)) return workspace / "dataset";
  // The XDG base-directory convention, as every cache on the machine follows it.
  if (std::string dir = env_text("XDG_CACHE_HOME"); !dir.empty()) return fs::path(dir) / "fluxtrain" / "datasets";
  if (std::string home = env_text("HOME"); !home.empty()) return fs::path(home) / ".cache" / "fluxtrain" / "datasets";
  fail("no folder for the dataset cache: HOME is not set; set DATASET_PATH (or FLUXTRAIN_DATASET_CACHE, --cache-dir)");
}

std::vector<Opt<EngineSettings>> engine_options(unsigned which, const std::string& group) {
  using S = EngineSettings;
  std::vector<Opt<S>> out;
  if (which & kCpuCacheKnob) {
    out.push_back(Opt<S>("cpu_cache_mb", kInt, group, "2048",
                         "MiB of freed tensor memory the caching CPU allocator keeps for reuse (computing on the "
                         "CPU); 0 keeps none.")
                      .env("FLUXTRAIN_CPU_CACHE_MB")
                      .min(0)
                      .max(1 << 24)
                      .memory_only()
                      .to(&S::cpu_cache_mb));
    out.push_back(Opt<S>("cpu_memory_limit_mb", kInt, group, "0",
                         "Computing on the CPU: the most MiB tensors may hold at once, like a GPU's memory (an "
                         "allocation beyond it is an out-of-memory error; the memory planner plans for it); 0: no "
                         "limit (the planner then plans for the available memory).")
                      .env("FLUXTRAIN_CPU_MEMORY_LIMIT_MB")
                      .min(0)
                      .max(int64_t{1} << 30)
                      .memory_only()
                      .to(&S::cpu_memory_limit_mb));
  }
  if (which & kSourceDateKnob) {
    out.push_back(Opt<S>("source_date_epoch", kInt, group, "",
                         "Seconds since 1970 written as the LoRA files' modelspec.date, so that two runs with the "
                         "same seed write byte-identical files (the reproducible-builds convention); unset: the time "
                         "of each save.")
                      .env("SOURCE_DATE_EPOCH")
                      .safe_on_resume()
                      .to(&S::source_date_epoch));
  }
  return out;
}

const OptionTable& process_options() {
  using S = ProcessSettings;
  static const OptionTable table = [] {
    std::vector<Opt<S>> own = {
        Opt<S>("log_level", kChoice, "process", "info", "What is logged: debug, info, warn, error or quiet.")
            .env("FLUXTRAIN_LOG_LEVEL")
            .choices_of<log::Level>()
            .choice_alias("warning", "warn")
            .to(&S::log_level),
        Opt<S>("progress_seconds", kReal, "process", "10",
               "Seconds between the plain progress lines written when stderr is not a terminal.")
            .env("FLUXTRAIN_PROGRESS_SECONDS")
            .min(0, true)
            .to(&S::progress_seconds),
        Opt<S>("assets", kPath, "process", "",
               "A folder searched first for the shipped data files (tokenizer vocabularies, the demo's models).")
            .env("FLUXTRAIN_ASSETS")
            .path(PathCheck::directory)
            .to(&S::assets),
        Opt<S>("engine", kPath, "process", "",
               "The libfluxtrain_engine.so to load; unset: beside the executable, then ../lib/fluxtrain/.")
            .env("FLUXTRAIN_ENGINE")
            .no_flag()
            .to(&S::engine),
        Opt<S>("test_pause_in", kString, "process", "",
               "Test hook, not for production: the first poll point of this phase (download, extraction, cache "
               "filling, model loading, sampling, training, saving) waits there until a stop signal, so that a test "
               "can stop a phase that is too fast to hit on tiny models.")
            .env("FLUXTRAIN_TEST_PAUSE_IN")
            .no_flag()
            .to(&S::test_pause_in),
        Opt<S>("test_fail_write_after_bytes", kInt, "process", "0",
               "Test hook, not for production: once the process has written this many bytes through its atomic "
               "files (LoRA files, states, cache entries), every further write fails with ENOSPC, as on a full "
               "disk; 0 = off.")
            .env("FLUXTRAIN_TEST_FAIL_WRITE_AFTER_BYTES")
            .min(0)
            .no_flag()
            .to(&S::test_fail_write_after_bytes),
    };
    return OptionTable("fluxtrain", "", {{"process", "The program"}}, std::vector<OptionSpec>(own.begin(), own.end()));
  }();
  return table;
}

ProcessSettings apply_process_settings(const CliValues& cli, const EnvMap& env) {
  const ProcessSettings settings = resolve(process_options(), {cli, env}).bind<ProcessSettings>();
  log::set_level(settings.log_level);
  set_default_line_interval_seconds(settings.progress_seconds);
  set_user_asset_root(settings.assets);
  stop::set_test_pause(settings.test_pause_in);
  set_test_write_limit(static_cast<uint64_t>(settings.test_fail_write_after_bytes));
  return settings;
}

}  // namespace fluxtrain::app
