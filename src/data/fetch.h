// DATASET_NAME -> a local dataset folder (torch-free): a local folder as it is, or a download from the
// Hugging Face Hub, Kaggle or an http(s) URL into a cache folder.
//
//   /data/my-set, ./my-set      a local folder: returned as it is (an error if it does not exist);
//                               a local archive file is extracted into the cache
//   https://host/set.tar.gz     a URL: an archive (zip, tar, tar.gz/bz2/xz/zst) is extracted, any
//                               other file is kept as the dataset's only file
//   owner/name, hf:owner/name   a Hugging Face Hub dataset repository, file by file
//   kaggle:owner/name           a Kaggle dataset (the zip of its files)
//
// Cache: <cache_dir>/<hub|kaggle|url|local>/<readable name>-<12 hex of a hash of source and revision>/
// holds `dataset/` and `complete.json`, the completion marker, written last. A dataset with a marker
// is returned without any request (so a moving revision such as the Hub's "main" stays as it was
// fetched until FetchOptions::refresh). Unfinished work stays for the next run: Hub files already
// downloaded (checked by size, and sha256 for LFS files), and ".part" files, which are resumed. A
// failed fetch that leaves no file behind removes its cache folder.
//
// The dataset root returned is the downloaded/extracted folder, or its only entry when that is a
// single folder (an archive of "my-set/..." gives ".../dataset/my-set").
//
// Fetches into one cache folder are serialised with a lock on it (flock), so that several processes
// of a multi-GPU run can all call fetch_dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/archive.h"
#include "data/http.h"

namespace fluxtrain::data {

enum class DatasetSourceKind { local, url, hub, kaggle };

struct DatasetSource {
  DatasetSourceKind kind = DatasetSourceKind::local;
  std::string repo;            // hub, kaggle: "owner/name"
  std::string url;             // url
  std::filesystem::path path;  // local
};

// Reads a DATASET_NAME. A bare "owner/name" that exists as a local path is the local path. Throws
// Error naming the spec when it is none of the forms above.
DatasetSource parse_dataset_source(const std::string& spec);

struct FetchOptions {
  // Hub: a branch, tag or commit (default "main"). Kaggle: a dataset version number (default: the
  // latest). Not allowed for URLs and local folders.
  std::string revision;
  // Check the source again even when the cache holds a complete copy (Hub: only changed files are
  // downloaded again).
  bool refresh = false;
  std::string hf_endpoint = "https://huggingface.co";
  std::string hf_token;
  // The Kaggle API: "<endpoint>/api/v1/datasets/download/<owner>/<name>" ("/api/v1" is added unless
  // the endpoint ends with it).
  std::string kaggle_endpoint = "https://www.kaggle.com";
  std::string kaggle_username;
  std::string kaggle_key;
  int parallel_downloads = 8;  // Hub files fetched at once
  HttpOptions http;
  ArchiveLimits limits;

  // Defaults with the environment: HF_TOKEN, HF_ENDPOINT, KAGGLE_USERNAME, KAGGLE_KEY,
  // KAGGLE_API_ENDPOINT, FLUXTRAIN_DOWNLOAD_WORKERS, and those of HttpOptions and ArchiveLimits.
  static FetchOptions from_environment();
};

// --- Hugging Face Hub files (datasets here; model files for `fluxtrain fetch-models`) ---

// One file of a Hub repository as its tree API lists it.
struct HubFile {
  std::string path;  // in the repository, '/'-separated
  int64_t size = 0;
  std::string sha256;  // LFS files only (the listing's lfs.oid); "" for small files kept in git
};

enum class HubRepoType { dataset, model };

struct HubListing {
  HubRepoType type = HubRepoType::dataset;
  std::string repo;  // owner/name
  std::string revision = "main";
  std::string folder;  // "" = the repository's root
  bool recursive = true;
  std::string not_found_hint;  // the fix after a 404
  std::string access_hint;     // the fix after a 401/403 ("accept the licence on ...")
};

// GET {hf_endpoint}/api/{datasets|models}/{repo}/tree/{revision}[/{folder}]?recursive=..., following
// rel="next" Link headers. Files only (no folders, no .gitattributes), sorted by path; unsafe paths are
// refused. Throws Error (401/403 naming HF_TOKEN, 404 with the hint).
std::vector<HubFile> list_hub_files(const HubListing& listing, const FetchOptions& options);

// The download URL of a file: {hf_endpoint}/[datasets/]{repo}/resolve/{revision}/{path}.
std::string hub_file_url(HubRepoType type, const std::string& repo, const std::string& revision,
                         const std::string& path, const FetchOptions& options);

// The Hub's credentials: HF_TOKEN as a bearer token (sent to the Hub's origin only).
HttpAuth hub_auth(const FetchOptions& options);

// $FLUXTRAIN_DATASET_CACHE, else $FLUXTRAIN_CACHE/datasets, else $XDG_CACHE_HOME/fluxtrain/datasets,
// else ~/.cache/fluxtrain/datasets.
std::filesystem::path default_dataset_cache_dir();

// The local folder of the dataset. Throws Error (401/403: which variable to set; 404: what to check;
// unsafe archives; limits) and never logs a credential.
std::filesystem::path fetch_dataset(const std::string& spec, const std::filesystem::path& cache_dir,
                                    const FetchOptions& options);

}  // namespace fluxtrain::data
