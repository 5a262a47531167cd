// The Hugging Face Hub's file API (torch-free): listing a dataset or model repository and the download
// URL and credentials of its files. Used for Hub datasets (fetch/dataset.h) and the model files of
// `fluxtrain fetch-models`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fetch/http.h"
#include "fetch/options.h"

namespace fluxtrain::fetch {

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
// rel="next" Link headers (HF_TOKEN goes only to pages on the hf_endpoint's origin: a next page
// elsewhere is asked for without it). Files only (no folders, no .gitattributes), sorted by path; unsafe paths are
// refused. Throws Error (401/403 naming HF_TOKEN, 404 with the hint).
std::vector<HubFile> list_hub_files(const HubListing& listing, const FetchOptions& options);

// The download URL of a file: {hf_endpoint}/[datasets/]{repo}/resolve/{revision}/{path}.
std::string hub_file_url(HubRepoType type, const std::string& repo, const std::string& revision,
                         const std::string& path, const FetchOptions& options);

// The Hub's credentials: HF_TOKEN as a bearer token (sent to the Hub's origin only).
HttpAuth hub_auth(const FetchOptions& options);

}  // namespace fluxtrain::fetch
