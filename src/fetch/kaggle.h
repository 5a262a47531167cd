// Kaggle datasets (torch-free): the API's download of all of a dataset's files as one zip, as the seed's
// container fetches DATASET_NAME,
//   GET {DATASET_HOST}/{owner}/{name}[?datasetVersionNumber=N]
// DATASET_HOST (FetchOptions::kaggle_download) defaults to https://www.kaggle.com/api/v1/datasets/download.
// Public datasets need no credentials; KAGGLE_USERNAME:KAGGLE_KEY, when given, go as HTTP basic auth to
// DATASET_HOST's origin only (a redirect to cloud storage goes without them).
#pragma once

#include <string>

#include "fetch/http.h"
#include "fetch/options.h"

namespace fluxtrain::fetch {

// True for "" (the latest) and a version number (1, 2, ...).
bool is_kaggle_version(const std::string& version);

// Throws Error unless `version` is a Kaggle version (above) and the credentials are both given or both
// absent.
void check_kaggle_source(const std::string& repo, const std::string& version, const FetchOptions& options);

// DATASET_HOST from a KAGGLE_API_ENDPOINT as the kaggle client reads it: "<endpoint>/api/v1/datasets/download"
// ("/api/v1" is added unless the endpoint ends with it).
std::string kaggle_download_host(const std::string& endpoint);

// The request for the zip of `repo` ("owner/name") at `version` ("" = the latest). `hints`: the fixes of a
// 404 in its message (off when the caller lists the tries and the fixes itself).
HttpRequest kaggle_download_request(const std::string& repo, const std::string& version, const FetchOptions& options,
                                    bool hints = true);

}  // namespace fluxtrain::fetch
