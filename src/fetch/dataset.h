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

#include <filesystem>
#include <string>

#include "fetch/options.h"

namespace fluxtrain::fetch {

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

// The local folder of the dataset. Throws Error (401/403: which variable to set; 404: what to check;
// unsafe archives; limits) and never logs a credential.
std::filesystem::path fetch_dataset(const std::string& spec, const std::filesystem::path& cache_dir,
                                    const FetchOptions& options);

}  // namespace fluxtrain::fetch
