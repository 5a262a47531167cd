// The environment knobs (src/app/environment_knobs.h): every variable's default, range and message. The
// archive and fetch tests were in test_archive.cpp and test_fetch_helpers.cpp when src/fetch read the
// environment itself; they keep their names.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "app/environment_knobs.h"
#include "core/assets.h"
#include "core/error.h"
#include "core/progress.h"
#include "temp_dir.h"

using namespace fluxtrain::app;
using fluxtrain::Error;
using fluxtrain::fetch::ArchiveLimits;
using fluxtrain::fetch::FetchOptions;
using fluxtrain::fetch::HttpOptions;

TEST(ArchiveLimitsEnv, ParsesAndRejects) {
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_BYTES", "2G", 1);
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_RATIO", "50", 1);
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_ENTRIES", "10", 1);
  ArchiveLimits limits = archive_limits_from_environment();
  EXPECT_EQ(limits.max_total_bytes, uint64_t{2} << 30);
  EXPECT_EQ(limits.max_ratio, 50);
  EXPECT_EQ(limits.max_entries, 10u);
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_BYTES", "12345", 1);
  EXPECT_EQ(archive_limits_from_environment().max_total_bytes, 12345u);
  for (const char* bad : {"lots", "-1", "5X", "0"}) {
    ::setenv("FLUXTRAIN_ARCHIVE_MAX_BYTES", bad, 1);
    try {
      archive_limits_from_environment();
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("FLUXTRAIN_ARCHIVE_MAX_BYTES"), std::string::npos);
    }
  }
  ::unsetenv("FLUXTRAIN_ARCHIVE_MAX_BYTES");
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_RATIO", "0.5", 1);
  EXPECT_THROW(archive_limits_from_environment(), Error);
  ::unsetenv("FLUXTRAIN_ARCHIVE_MAX_RATIO");
  ::unsetenv("FLUXTRAIN_ARCHIVE_MAX_ENTRIES");
  EXPECT_EQ(archive_limits_from_environment().max_entries, ArchiveLimits{}.max_entries);
}

TEST(FetchHelpers, EnvironmentIsValidated) {
  ::setenv("FLUXTRAIN_HTTP_RETRIES", "two", 1);
  try {
    http_options_from_environment();
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FLUXTRAIN_HTTP_RETRIES='two'"), std::string::npos) << e.what();
  }
  ::setenv("FLUXTRAIN_HTTP_RETRIES", "0", 1);
  EXPECT_EQ(http_options_from_environment().max_attempts, 1);
  ::unsetenv("FLUXTRAIN_HTTP_RETRIES");
  ::setenv("HF_ENDPOINT", "huggingface.co", 1);
  EXPECT_THROW(fetch_options_from_environment(), Error);
  ::setenv("HF_ENDPOINT", "https://hf-mirror.example/", 1);
  EXPECT_EQ(fetch_options_from_environment().hf_endpoint, "https://hf-mirror.example");
  ::unsetenv("HF_ENDPOINT");
}

namespace {

std::string message_of(void (*call)()) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(EnvironmentKnobs, DefaultsAreTheStructs) {
  for (const char* name :
       {"HF_ENDPOINT", "HF_TOKEN", "KAGGLE_API_ENDPOINT", "KAGGLE_USERNAME", "KAGGLE_KEY", "FLUXTRAIN_DOWNLOAD_WORKERS",
        "FLUXTRAIN_HTTP_RETRIES", "FLUXTRAIN_HTTP_BACKOFF_SECONDS", "FLUXTRAIN_ARCHIVE_MAX_BYTES",
        "FLUXTRAIN_ARCHIVE_MAX_ENTRIES", "FLUXTRAIN_ARCHIVE_MAX_RATIO"}) {
    ::unsetenv(name);
  }
  const FetchOptions options = fetch_options_from_environment();
  const FetchOptions defaults;
  EXPECT_EQ(options.hf_endpoint, "https://huggingface.co");
  EXPECT_EQ(options.kaggle_endpoint, "https://www.kaggle.com");
  EXPECT_EQ(options.hf_token, "");
  EXPECT_EQ(options.parallel_downloads, 8);
  EXPECT_EQ(options.http.max_attempts, defaults.http.max_attempts);
  EXPECT_EQ(options.http.backoff_seconds, defaults.http.backoff_seconds);
  EXPECT_EQ(options.http.max_backoff_seconds, defaults.http.max_backoff_seconds);
  EXPECT_EQ(options.limits.max_total_bytes, defaults.limits.max_total_bytes);
  EXPECT_EQ(options.limits.max_ratio, defaults.limits.max_ratio);
}

TEST(EnvironmentKnobs, DownloadSettingsAndTheirMessages) {
  ::setenv("KAGGLE_API_ENDPOINT", "ftp://kaggle.example", 1);
  EXPECT_EQ(message_of([] { fetch_options_from_environment(); }),
            "KAGGLE_API_ENDPOINT='ftp://kaggle.example' is not an http(s) URL (e.g. https://www.kaggle.com)");
  ::setenv("KAGGLE_API_ENDPOINT", "HTTP://kaggle.example//", 1);
  EXPECT_EQ(kaggle_endpoint(), "HTTP://kaggle.example");
  ::unsetenv("KAGGLE_API_ENDPOINT");
  ::setenv("FLUXTRAIN_DOWNLOAD_WORKERS", "65", 1);
  EXPECT_EQ(message_of([] { fetch_options_from_environment(); }),
            "FLUXTRAIN_DOWNLOAD_WORKERS='65' is not a whole number from 1 to 64");
  ::setenv("FLUXTRAIN_DOWNLOAD_WORKERS", "3", 1);
  EXPECT_EQ(fetch_options_from_environment().parallel_downloads, 3);
  ::unsetenv("FLUXTRAIN_DOWNLOAD_WORKERS");
  ::setenv("FLUXTRAIN_HTTP_BACKOFF_SECONDS", "45", 1);
  EXPECT_EQ(http_options_from_environment().max_backoff_seconds, 45);
  ::setenv("FLUXTRAIN_HTTP_BACKOFF_SECONDS", "601", 1);
  EXPECT_EQ(message_of([] { http_options_from_environment(); }),
            "FLUXTRAIN_HTTP_BACKOFF_SECONDS='601' is not a number from 0 to 600");
  ::unsetenv("FLUXTRAIN_HTTP_BACKOFF_SECONDS");
  ::setenv("FLUXTRAIN_ARCHIVE_MAX_ENTRIES", "-3", 1);
  EXPECT_EQ(message_of([] { archive_limits_from_environment(); }),
            "FLUXTRAIN_ARCHIVE_MAX_ENTRIES='-3' is not a positive whole number");
  ::unsetenv("FLUXTRAIN_ARCHIVE_MAX_ENTRIES");
}

TEST(EnvironmentKnobs, DatasetCacheFolder) {
  ::setenv("FLUXTRAIN_DATASET_CACHE", "/d", 1);
  ::setenv("FLUXTRAIN_CACHE", "/c", 1);
  ::setenv("XDG_CACHE_HOME", "/x", 1);
  ::setenv("HOME", "/h", 1);
  EXPECT_EQ(default_dataset_cache_dir(), "/d");
  ::unsetenv("FLUXTRAIN_DATASET_CACHE");
  EXPECT_EQ(default_dataset_cache_dir(), "/c/datasets");
  ::unsetenv("FLUXTRAIN_CACHE");
  EXPECT_EQ(default_dataset_cache_dir(), "/x/fluxtrain/datasets");
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(default_dataset_cache_dir(), "/h/.cache/fluxtrain/datasets");
  ::unsetenv("HOME");
  EXPECT_NE(message_of([] { default_dataset_cache_dir(); }).find("set FLUXTRAIN_DATASET_CACHE"), std::string::npos);
}

TEST(EnvironmentKnobs, ProgressIntervalAndAssetFolderReachCore) {
  ::setenv("FLUXTRAIN_PROGRESS_SECONDS", "2.5", 1);
  ::setenv("FLUXTRAIN_ASSETS", "/my/assets", 1);
  apply_process_environment();
  EXPECT_EQ(fluxtrain::default_line_interval_seconds(), 2.5);
  EXPECT_EQ(fluxtrain::asset_roots().front(), "/my/assets");
  for (const char* lenient : {"soon", "-1", "0", ""}) {
    ::setenv("FLUXTRAIN_PROGRESS_SECONDS", lenient, 1);
    EXPECT_EQ(progress_seconds(), 10) << lenient;
  }
  ::unsetenv("FLUXTRAIN_PROGRESS_SECONDS");
  ::unsetenv("FLUXTRAIN_ASSETS");
  apply_process_environment();
  EXPECT_EQ(fluxtrain::default_line_interval_seconds(), 10);
  EXPECT_NE(fluxtrain::asset_roots().front(), "/my/assets");
}

TEST(EnvironmentKnobs, CpuCacheLimitAndSourceDateEpoch) {
  ::unsetenv("FLUXTRAIN_CPU_CACHE_MB");
  EXPECT_EQ(cpu_cache_limit_bytes(), int64_t{2048} << 20);
  ::setenv("FLUXTRAIN_CPU_CACHE_MB", "0", 1);
  EXPECT_EQ(cpu_cache_limit_bytes(), 0);
  ::setenv("FLUXTRAIN_CPU_CACHE_MB", "lots", 1);
  EXPECT_EQ(message_of([] { cpu_cache_limit_bytes(); }),
            "FLUXTRAIN_CPU_CACHE_MB='lots' is not a whole number from 0 to 16777216");
  ::unsetenv("FLUXTRAIN_CPU_CACHE_MB");
  ::unsetenv("SOURCE_DATE_EPOCH");
  EXPECT_FALSE(source_date_epoch().has_value());
  ::setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
  EXPECT_EQ(source_date_epoch(), 1700000000);
  ::setenv("SOURCE_DATE_EPOCH", "12abc", 1);
  EXPECT_EQ(source_date_epoch(), 12);  // strtoll's reading, as before
  ::unsetenv("SOURCE_DATE_EPOCH");
}
