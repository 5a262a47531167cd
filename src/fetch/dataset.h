// DATASET_NAME -> a local dataset folder (torch-free): a local folder as it is, or a download from
// Kaggle, the Hugging Face Hub or an http(s) URL into a cache folder.
//
//   /data/my-set, ./my-set      a local folder: returned as it is (an error if it does not exist);
//                               a local archive file is extracted into the cache
//   https://host/set.tar.gz     a URL: an archive (zip, tar, tar.gz/bz2/xz/zst) is extracted, any
//                               other file is kept as the dataset's only file
//   owner/name                  as the seed's container: the zip at DATASET_HOST/owner/name (Kaggle's
//                               download API, no credentials needed for a public set), and when that
//                               source does not have it (404, or 401/403: private or absent), the
//                               Hugging Face Hub's dataset repository; the log says which served it, and
//                               when neither has it, one error lists every try and the fixes
//   kaggle:owner/name           Kaggle only (the zip of its files)
//   hf:owner/name               the Hub only, file by file
//
// Cache (the cache_dir: DATASET_PATH, the seed's folder for the dataset, or FLUXTRAIN_DATASET_CACHE, ...:
// app/knob_options.h dataset_cache_dir):
// <cache_dir>/<hub|kaggle|url|local>/<readable name>-<12 hex of a hash of source and revision>/
// holds `dataset/` and `complete.json`, the completion marker, written last. A dataset with a marker
// is returned without any request (so a moving revision such as the Hub's "main" stays as it was
// fetched until FetchOptions::refresh; a bare owner/name finds the copy of either source, Kaggle's
// first, and a refresh asks that source again). Unfinished work stays for the next run: Hub files already
// downloaded (checked by size, and sha256 for LFS files), and ".part" files, which are resumed. A
// failed fetch that leaves no file behind removes its cache folder.
//
// The dataset root returned is the downloaded/extracted folder, or its only entry when that is a
// single folder (an archive of "my-set/..." gives ".../dataset/my-set").
//
// Fetches into one cache folder are serialised with a lock on it (flock), so that several processes
// of a multi-GPU run can all call fetch_dataset.
#pragma once

#include <filesystem>
#include <string>

#include "fetch/options.h"

namespace fluxtrain::fetch {

// any: a bare owner/name (Kaggle through DATASET_HOST, then the Hub).
enum class DatasetSourceKind { local, url, hub, kaggle, any };

struct DatasetSource {
  DatasetSourceKind kind = DatasetSourceKind::local;
  std::string repo;            // hub, kaggle, any: "owner/name"
  std::string url;             // url
  std::filesystem::path path;  // local
};

// Reads a DATASET_NAME. A bare "owner/name" that exists as a local path is the local path. Throws
// Error naming the spec when it is none of the forms above.
DatasetSource parse_dataset_source(const std::string& spec);

// The local folder of the dataset. Throws Error (401/403: which variable to set; 404: what was tried and
// what to check; unsafe archives; limits) and never logs a credential.
std::filesystem::path fetch_dataset(const std::string& spec, const std::filesystem::path& cache_dir,
                                    const FetchOptions& options);

}  // namespace fluxtrain::fetch
