// The environment knobs, as options of the tables like every other setting (llama.cpp's way: every
// argument also a variable), so that --help-env lists them, --print-config shows them with their source,
// and a bad value is the same named error as any option's. Code below src/app never reads the
// environment (tests/e2e/test_no_getenv.py); it takes the plain structs these fill.
//
//   downloads   HF_ENDPOINT, HF_TOKEN, DATASET_HOST, KAGGLE_API_ENDPOINT, KAGGLE_USERNAME, KAGGLE_KEY,
//               FLUXTRAIN_DOWNLOAD_WORKERS, FLUXTRAIN_HTTP_RETRIES, FLUXTRAIN_HTTP_BACKOFF_SECONDS,
//               FLUXTRAIN_ARCHIVE_MAX_BYTES / _ENTRIES / _RATIO, FLUXTRAIN_DATASET_CACHE, DATASET_PATH,
//               FLUXTRAIN_CACHE:
//               in the tables of the commands that download (train, cache, config, fetch, fetch-models)
//   engine      FLUXTRAIN_CPU_CACHE_MB, SOURCE_DATE_EPOCH: in the tables of the commands they affect
//   process     FLUXTRAIN_LOG_LEVEL, FLUXTRAIN_PROGRESS_SECONDS, FLUXTRAIN_ASSETS, FLUXTRAIN_ENGINE and the
//               test hooks FLUXTRAIN_TEST_*: the program's own table (`fluxtrain --help-env`), resolved
//               before any command runs
//
// Secrets (HF_TOKEN, KAGGLE_KEY) come from the environment only and are never printed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "app/option_builder.h"
#include "core/log.h"
#include "fetch/options.h"

namespace fluxtrain::app {

struct DownloadSettings {
  fetch::FetchOptions fetch;  // endpoints, credentials, parallel downloads, retries, archive limits
  std::string dataset_cache;  // FLUXTRAIN_DATASET_CACHE
  std::string dataset_path;   // DATASET_PATH, the seed's name for the folder the dataset lands in
  std::string cache_root;     // FLUXTRAIN_CACHE
  // DATASET_HOST was given: KAGGLE_API_ENDPOINT leaves fetch.kaggle_download as it is.
  bool dataset_host_given = false;
};

// Which download knobs a command has.
enum DownloadKnobs : unsigned {
  kHubKnobs = 1,           // HF_ENDPOINT, HF_TOKEN
  kKaggleKnobs = 2,        // DATASET_HOST, KAGGLE_*
  kWorkerKnobs = 4,        // FLUXTRAIN_DOWNLOAD_WORKERS
  kHttpKnobs = 8,          // FLUXTRAIN_HTTP_*
  kArchiveKnobs = 16,      // FLUXTRAIN_ARCHIVE_*
  kDatasetCacheKnob = 32,  // FLUXTRAIN_DATASET_CACHE
  kCacheRootKnob = 64,     // FLUXTRAIN_CACHE
  kDatasetPathKnob = 128,  // DATASET_PATH
  kAllDownloadKnobs = 255,
};
std::vector<Opt<DownloadSettings>> download_options(unsigned which, const std::string& group = "downloads");

// The dataset cache folder, where fetched datasets land: FLUXTRAIN_DATASET_CACHE, else DATASET_PATH, else
// FLUXTRAIN_CACHE/datasets, else the seed's /workspace/dataset when `workspace` (/workspace) is a folder,
// else $XDG_CACHE_HOME/fluxtrain/datasets, else $HOME/.cache/fluxtrain/datasets (an Error without HOME).
std::filesystem::path dataset_cache_dir(const DownloadSettings& settings,
                                        const std::filesystem::path& workspace = "/workspace");

struct EngineSettings {
  int64_t cpu_cache_mb = 2048;  // FLUXTRAIN_CPU_CACHE_MB (train/cpu_allocator.h; its kDefaultCpuCacheBytes)
  int64_t cpu_memory_limit_mb = 0;  // FLUXTRAIN_CPU_MEMORY_LIMIT_MB (train/cpu_allocator.h set_cpu_memory_limit)
  std::optional<int64_t> source_date_epoch;  // SOURCE_DATE_EPOCH: the LoRA files' modelspec.date
};
enum EngineKnobs : unsigned { kCpuCacheKnob = 1, kSourceDateKnob = 2 };
std::vector<Opt<EngineSettings>> engine_options(unsigned which, const std::string& group = "engine");

// The program's own settings, before any command.
struct ProcessSettings {
  log::Level log_level = log::Level::info;
  double progress_seconds = 10;  // between plain progress lines when stderr is not a terminal
  std::string assets;            // searched first for the shipped data files (core/assets.h)
  std::string engine;            // libfluxtrain_engine.so to load; "" = beside the executable
  std::string test_pause_in;     // test hook FLUXTRAIN_TEST_PAUSE_IN (core/stop.h pause_point)
  int64_t test_fail_write_after_bytes = 0;  // test hook (core/atomic_file.h set_test_write_limit)
};
const OptionTable& process_options();

// Resolves the program's table from the command line's global flags and `env`, and hands the settings to
// core (log level, progress interval, asset folder).
ProcessSettings apply_process_settings(const CliValues& cli, const EnvMap& env);

}  // namespace fluxtrain::app
