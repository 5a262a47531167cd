// The environment knobs as options (src/app/knob_options.h): every variable's default, range and
// message, resolved by the same tables as every other option. ArchiveLimitsEnv and FetchHelpers keep the
// names they had when src/fetch read the environment itself.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "app/knob_options.h"
#include "app/tool_options.h"
#include "app/train_options.h"
#include "core/assets.h"
#include "core/error.h"
#include "core/progress.h"

using namespace fluxtrain::app;
using fluxtrain::Error;
using fluxtrain::fetch::ArchiveLimits;
using fluxtrain::fetch::FetchOptions;
using fluxtrain::fetch::HttpOptions;

namespace {

// The download settings of `fluxtrain train` from these variables.
DownloadSettings downloads(const EnvMap& env) {
  return resolve(train_options(), {{}, env}).bind<TrainSettings>().downloads;
}

std::string message_of(const EnvMap& env) {
  try {
    downloads(env);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ArchiveLimitsEnv, ParsesAndRejects) {
  ArchiveLimits limits = downloads({{"FLUXTRAIN_ARCHIVE_MAX_BYTES", "2G"},
                                    {"FLUXTRAIN_ARCHIVE_MAX_RATIO", "50"},
                                    {"FLUXTRAIN_ARCHIVE_MAX_ENTRIES", "10"}})
                             .fetch.limits;
  EXPECT_EQ(limits.max_total_bytes, uint64_t{2} << 30);
  EXPECT_EQ(limits.max_ratio, 50);
  EXPECT_EQ(limits.max_entries, 10u);
  EXPECT_EQ(downloads({{"FLUXTRAIN_ARCHIVE_MAX_BYTES", "12345"}}).fetch.limits.max_total_bytes, 12345u);
  for (const char* bad : {"lots", "-1", "5X", "0"}) {
    EXPECT_NE(message_of({{"FLUXTRAIN_ARCHIVE_MAX_BYTES", bad}}).find("FLUXTRAIN_ARCHIVE_MAX_BYTES"), std::string::npos)
        << bad;
  }
  EXPECT_THROW(downloads({{"FLUXTRAIN_ARCHIVE_MAX_RATIO", "0.5"}}), Error);
  EXPECT_EQ(downloads({}).fetch.limits.max_entries, ArchiveLimits{}.max_entries);
}

TEST(FetchHelpers, EnvironmentIsValidated) {
  EXPECT_NE(message_of({{"FLUXTRAIN_HTTP_RETRIES", "two"}}).find("FLUXTRAIN_HTTP_RETRIES=\"two\""), std::string::npos)
      << message_of({{"FLUXTRAIN_HTTP_RETRIES", "two"}});
  EXPECT_EQ(downloads({{"FLUXTRAIN_HTTP_RETRIES", "0"}}).fetch.http.max_attempts, 1);
  EXPECT_THROW(downloads({{"HF_ENDPOINT", "huggingface.co"}}), Error);
  EXPECT_EQ(downloads({{"HF_ENDPOINT", "https://hf-mirror.example/"}}).fetch.hf_endpoint, "https://hf-mirror.example");
}

TEST(KnobOptions, DefaultsAreTheStructs) {
  const FetchOptions options = downloads({}).fetch;
  const FetchOptions defaults;
  EXPECT_EQ(options.hf_endpoint, "https://huggingface.co");
  EXPECT_EQ(options.kaggle_download, "https://www.kaggle.com/api/v1/datasets/download");
  EXPECT_EQ(options.kaggle_download, defaults.kaggle_download);
  EXPECT_EQ(options.hf_token, "");
  EXPECT_EQ(options.parallel_downloads, 8);
  EXPECT_EQ(options.http.max_attempts, defaults.http.max_attempts);
  EXPECT_EQ(options.http.backoff_seconds, defaults.http.backoff_seconds);
  EXPECT_EQ(options.http.max_backoff_seconds, defaults.http.max_backoff_seconds);
  EXPECT_EQ(options.limits.max_total_bytes, defaults.limits.max_total_bytes);
  EXPECT_EQ(options.limits.max_ratio, defaults.limits.max_ratio);
  EXPECT_EQ(options.limits.max_entries, defaults.limits.max_entries);
}

TEST(KnobOptions, DownloadSettingsAndTheirMessages) {
  EXPECT_EQ(message_of({{"KAGGLE_API_ENDPOINT", "ftp://kaggle.example"}}),
            "KAGGLE_API_ENDPOINT=\"ftp://kaggle.example\": not an http(s) URL; allowed: an http(s) URL");
  EXPECT_EQ(downloads({{"KAGGLE_API_ENDPOINT", "HTTP://kaggle.example//"}}).fetch.kaggle_download,
            "HTTP://kaggle.example/api/v1/datasets/download");
  EXPECT_EQ(downloads({{"KAGGLE_API_ENDPOINT", "https://k.example/api/v1"}}).fetch.kaggle_download,
            "https://k.example/api/v1/datasets/download");
  // DATASET_HOST, the seed's, is the download address as it is, and wins over KAGGLE_API_ENDPOINT.
  EXPECT_EQ(downloads({{"DATASET_HOST", "http://127.0.0.1:9/dl/"}}).fetch.kaggle_download, "http://127.0.0.1:9/dl");
  EXPECT_EQ(downloads({{"DATASET_HOST", "http://h.example/dl"}, {"KAGGLE_API_ENDPOINT", "https://k.example"}})
                .fetch.kaggle_download,
            "http://h.example/dl");
  EXPECT_EQ(message_of({{"DATASET_HOST", "www.kaggle.com/api/v1/datasets/download"}}),
            "DATASET_HOST=\"www.kaggle.com/api/v1/datasets/download\": not an http(s) URL; allowed: an http(s) URL");
  EXPECT_EQ(message_of({{"FLUXTRAIN_DOWNLOAD_WORKERS", "65"}}),
            "FLUXTRAIN_DOWNLOAD_WORKERS=\"65\": out of range; allowed: an integer in [1, 64]");
  EXPECT_EQ(downloads({{"FLUXTRAIN_DOWNLOAD_WORKERS", "3"}}).fetch.parallel_downloads, 3);
  EXPECT_EQ(downloads({{"FLUXTRAIN_HTTP_BACKOFF_SECONDS", "45"}}).fetch.http.max_backoff_seconds, 45);
  EXPECT_EQ(message_of({{"FLUXTRAIN_HTTP_BACKOFF_SECONDS", "601"}}),
            "FLUXTRAIN_HTTP_BACKOFF_SECONDS=\"601\": out of range; allowed: a number in [0, 600]");
  EXPECT_EQ(message_of({{"FLUXTRAIN_ARCHIVE_MAX_ENTRIES", "-3"}}),
            "FLUXTRAIN_ARCHIVE_MAX_ENTRIES=\"-3\": out of range; allowed: an integer >= 1");
  // Secrets: read, never printed, never in a message.
  const ResolvedConfig config =
      resolve(train_options(), {{}, {{"HF_TOKEN", "hf_secret123"}, {"KAGGLE_KEY", "kaggle_secret456"}}});
  EXPECT_EQ(config.bind<TrainSettings>().downloads.fetch.hf_token, "hf_secret123");
  for (const std::string& text : {config.print(), config.to_toml(), config.describe("hf_token")}) {
    EXPECT_EQ(text.find("secret"), std::string::npos) << text;
  }
  for (const auto& [name, value] : config.value_texts()) EXPECT_EQ(value.find("secret"), std::string::npos) << name;
}

TEST(KnobOptions, DatasetCacheFolder) {
  ::setenv("XDG_CACHE_HOME", "/x", 1);
  ::setenv("HOME", "/h", 1);
  const std::filesystem::path no_workspace = "/no-such-workspace-folder";
  EXPECT_EQ(dataset_cache_dir(downloads({{"FLUXTRAIN_DATASET_CACHE", "/d"}, {"FLUXTRAIN_CACHE", "/c"}})), "/d");
  EXPECT_EQ(dataset_cache_dir(downloads({{"FLUXTRAIN_CACHE", "/c"}})), "/c/datasets");
  // DATASET_PATH, the seed's: after fluxtrain's own FLUXTRAIN_DATASET_CACHE, before the rest.
  EXPECT_EQ(dataset_cache_dir(downloads({{"DATASET_PATH", "/p"}, {"FLUXTRAIN_CACHE", "/c"}})), "/p");
  EXPECT_EQ(dataset_cache_dir(downloads({{"DATASET_PATH", "/p"}, {"FLUXTRAIN_DATASET_CACHE", "/d"}})), "/d");
  // Its default, /workspace/dataset, where /workspace is a folder (here "/", which always is).
  EXPECT_EQ(dataset_cache_dir(downloads({}), "/"), "/dataset");
  EXPECT_EQ(dataset_cache_dir(downloads({{"FLUXTRAIN_CACHE", "/c"}}), "/"), "/c/datasets");
  EXPECT_EQ(dataset_cache_dir(downloads({}), no_workspace), "/x/fluxtrain/datasets");
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(dataset_cache_dir(downloads({}), no_workspace), "/h/.cache/fluxtrain/datasets");
  const std::string home = "/h";
  ::unsetenv("HOME");
  try {
    dataset_cache_dir(downloads({}), no_workspace);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("set DATASET_PATH (or FLUXTRAIN_DATASET_CACHE"), std::string::npos);
  }
  ::setenv("HOME", home.c_str(), 1);
}

TEST(KnobOptions, ProgressIntervalAndAssetFolderReachCore) {
  const std::string folder = fluxtrain::asset_roots().back().string();
  apply_process_settings({}, {{"FLUXTRAIN_PROGRESS_SECONDS", "2.5"}, {"FLUXTRAIN_ASSETS", folder}});
  EXPECT_EQ(fluxtrain::default_line_interval_seconds(), 2.5);
  EXPECT_EQ(fluxtrain::asset_roots().front(), folder);
  for (const char* bad : {"soon", "-1", "0"}) {
    EXPECT_THROW(apply_process_settings({}, {{"FLUXTRAIN_PROGRESS_SECONDS", bad}}), Error) << bad;
  }
  apply_process_settings({{"progress_seconds", "4"}}, {});  // --progress-seconds 4
  EXPECT_EQ(fluxtrain::default_line_interval_seconds(), 4);
  apply_process_settings({}, {});
  EXPECT_EQ(fluxtrain::default_line_interval_seconds(), 10);
  EXPECT_NE(fluxtrain::asset_roots().size(), 0u);
}

TEST(KnobOptions, CpuCacheLimitAndSourceDateEpoch) {
  auto sample = [](const EnvMap& env) {
    return resolve(sample_options(), {{{"out", "/tmp/o"}}, env}).bind<SampleSettings>().engine;
  };
  EXPECT_EQ(sample({}).cpu_cache_mb, 2048);
  EXPECT_EQ(sample({{"FLUXTRAIN_CPU_CACHE_MB", "0"}}).cpu_cache_mb, 0);
  try {
    sample({{"FLUXTRAIN_CPU_CACHE_MB", "lots"}});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "FLUXTRAIN_CPU_CACHE_MB=\"lots\": not an integer; allowed: an integer in [0, 16777216]");
  }
  auto merge = [](const EnvMap& env) {
    return resolve(merge_options(), {{{"out", "/tmp/o"}, {"lora", "a"}}, env}).bind<MergeSettings>().engine;
  };
  EXPECT_FALSE(merge({}).source_date_epoch.has_value());
  EXPECT_EQ(merge({{"SOURCE_DATE_EPOCH", "1700000000"}}).source_date_epoch, 1700000000);
  EXPECT_THROW(merge({{"SOURCE_DATE_EPOCH", "12abc"}}), Error);
}
