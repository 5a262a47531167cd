// Kaggle datasets (torch-free): the API's download of all of a dataset's files as one zip,
//   GET {kaggle_endpoint}/api/v1/datasets/download/{owner}/{name}[?datasetVersionNumber=N]
// with HTTP basic auth KAGGLE_USERNAME:KAGGLE_KEY ("/api/v1" is added unless the endpoint ends with it).
#pragma once

#include <string>

#include "fetch/http.h"
#include "fetch/options.h"

namespace fluxtrain::fetch {

// Throws Error unless `version` is empty (the latest) or a version number, and the credentials are set.
void check_kaggle_source(const std::string& repo, const std::string& version, const FetchOptions& options);

// The API's base URL: the endpoint with "/api/v1".
std::string kaggle_api(const FetchOptions& options);

// The request for the zip of `repo` ("owner/name") at `version` ("" = the latest).
HttpRequest kaggle_download_request(const std::string& repo, const std::string& version, const FetchOptions& options);

}  // namespace fluxtrain::fetch
