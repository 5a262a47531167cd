// The environment variables that set something below app/, all read here and nowhere else: code under
// src/ outside src/app never reads the environment (tests/e2e/test_no_getenv.py checks it). The lower
// layers take plain values instead (fetch::FetchOptions, fetch::HttpOptions, fetch::ArchiveLimits, a
// progress interval, an asset folder, the CPU cache limit, a LoRA file's creation time).
//
// One function per knob: the comment above it gives the variable, its default, the values it allows
// and what it does. An unset or empty variable means the default; a value outside what is allowed is an
// Error naming the variable, its value and what is expected. (The option table of app/options.h covers
// the commands' own settings: PARAMS_*, MODEL_*, DATASET_*, ...)
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "fetch/options.h"

namespace fluxtrain::app {

// --- Downloads (src/fetch) ---

// HF_ENDPOINT: the Hugging Face Hub's address, as huggingface_hub reads it (a mirror, a test server).
// Default https://huggingface.co; an http(s) URL, trailing '/' dropped.
std::string hf_endpoint();

// HF_TOKEN: a Hub access token, sent as a bearer token to the Hub's origin only (gated and private
// repositories). Default none.
std::string hf_token();

// KAGGLE_API_ENDPOINT: Kaggle's address, as the kaggle and kagglehub clients read it. Default
// https://www.kaggle.com; an http(s) URL, trailing '/' dropped ("/api/v1" is added unless it ends so).
std::string kaggle_endpoint();

// KAGGLE_USERNAME, KAGGLE_KEY: Kaggle API credentials (kaggle.com -> Settings -> API). Default none;
// needed for kaggle:owner/name datasets.
std::string kaggle_username();
std::string kaggle_key();

// FLUXTRAIN_DOWNLOAD_WORKERS: Hub files downloaded at once. Default 8; a whole number from 1 to 64.
int download_workers();

// FLUXTRAIN_HTTP_RETRIES: retries of a failed request after its first try (connection errors, timeouts,
// 429, 5xx). Default 4; a whole number from 0 to 100.
int http_retries();

// FLUXTRAIN_HTTP_BACKOFF_SECONDS: the wait before the first retry, doubled per retry (at most 30 s, or
// the server's Retry-After up to 120 s). Default 1; a number from 0 to 600.
double http_backoff_seconds();

// FLUXTRAIN_ARCHIVE_MAX_BYTES: the most bytes an archive may extract to, in total. Default 64 GiB; a
// positive number of bytes, or with a K, M, G or T suffix in powers of 1024 ("500G").
uint64_t archive_max_bytes();

// FLUXTRAIN_ARCHIVE_MAX_ENTRIES: the most entries (files, folders, links) an archive may hold. Default
// 1,000,000; a positive whole number.
uint64_t archive_max_entries();

// FLUXTRAIN_ARCHIVE_MAX_RATIO: per entry, the most bytes written per compressed byte read (decompression
// bombs). Default 200; a number of at least 1.
double archive_max_ratio();

// The structs of src/fetch from the knobs above, read in this order (so the first bad variable is the
// one named): HF_ENDPOINT, HF_TOKEN, KAGGLE_API_ENDPOINT, KAGGLE_USERNAME, KAGGLE_KEY,
// FLUXTRAIN_DOWNLOAD_WORKERS, FLUXTRAIN_HTTP_*, FLUXTRAIN_ARCHIVE_MAX_BYTES / _ENTRIES / _RATIO.
fetch::HttpOptions http_options_from_environment();
fetch::ArchiveLimits archive_limits_from_environment();
fetch::FetchOptions fetch_options_from_environment();

// FLUXTRAIN_DATASET_CACHE: the dataset cache folder; else FLUXTRAIN_CACHE/datasets, else
// XDG_CACHE_HOME/fluxtrain/datasets, else HOME/.cache/fluxtrain/datasets (an Error when HOME is unset).
std::filesystem::path default_dataset_cache_dir();

// --- Process-wide settings, applied by apply_process_environment() ---

// FLUXTRAIN_PROGRESS_SECONDS: seconds between the plain progress lines written when stderr is not a
// terminal (core/progress.h, core/train_progress.h). Default 10; a value that is not a positive number
// gives the default.
double progress_seconds();

// FLUXTRAIN_ASSETS: a folder searched for the shipped data files (tokenizers, the demo's models) before
// the installed and source trees (core/assets.h). Default none.
std::filesystem::path assets_folder();

// Hands progress_seconds() and assets_folder() to core. run() calls it before any command.
void apply_process_environment();

// --- Engine ---

// FLUXTRAIN_CPU_CACHE_MB: the most MiB the caching CPU allocator keeps cached (train/cpu_allocator.h).
// Default 2048; a whole number from 0 to 16777216 (0: nothing is kept).
int64_t cpu_cache_limit_bytes();

// SOURCE_DATE_EPOCH: the time (seconds since 1970) written as modelspec.date in LoRA files, so that two
// runs with the same seed write byte-identical files (the reproducible-builds convention). Default: the
// time of each save. Parsed leniently, as strtoll does.
std::optional<int64_t> source_date_epoch();

// FLUXTRAIN_ENGINE: the path of libfluxtrain_engine.so to load; default: beside the executable, then
// ../lib/fluxtrain/ (app/engine_loader.cpp).
std::string engine_library();

}  // namespace fluxtrain::app
