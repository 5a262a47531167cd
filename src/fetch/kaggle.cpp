#include "fetch/kaggle.h"

#include <algorithm>

#include "core/error.h"

namespace fluxtrain::fetch {

bool is_kaggle_version(const std::string& version) {
  return version.empty() || (version.size() <= 9 &&
                             std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; }));
}

void check_kaggle_source(const std::string& repo, const std::string& version, const FetchOptions& options) {
  if (!is_kaggle_version(version)) {
    fail("kaggle:", repo, ": the revision '", version,
         "' is not a dataset version number (1, 2, ...; empty for the latest)");
  }
  if (options.kaggle_username.empty() != options.kaggle_key.empty()) {
    fail(options.kaggle_username.empty() ? "KAGGLE_KEY is set but KAGGLE_USERNAME is not"
                                         : "KAGGLE_USERNAME is set but KAGGLE_KEY is not",
         ": set both for a private Kaggle dataset (kaggle.com -> Settings -> API -> Create New Token gives both), "
         "or neither for a public one");
  }
}

std::string kaggle_download_host(const std::string& endpoint) {
  return cat(endpoint.ends_with("/api/v1") ? endpoint : endpoint + "/api/v1", "/datasets/download");
}

HttpRequest kaggle_download_request(const std::string& repo, const std::string& version, const FetchOptions& options,
                                    bool hints) {
  HttpRequest request;
  request.url = cat(options.kaggle_download, "/", repo, version.empty() ? "" : "?datasetVersionNumber=" + version);
  request.auth.basic_user = options.kaggle_username;
  request.auth.basic_password = options.kaggle_key;
  request.auth.variables = "KAGGLE_USERNAME and KAGGLE_KEY";
  // DATASET_HOST's origin only: the download's redirect to cloud storage goes without them.
  request.auth.origin = options.kaggle_download;
  request.what = cat("Kaggle dataset ", repo);
  if (hints) {
    request.not_found_hint =
        cat("check the name (and version) at https://www.kaggle.com/datasets/", repo,
            options.kaggle_username.empty() ? "; a private dataset needs KAGGLE_USERNAME and KAGGLE_KEY" : "",
            "; for a Hugging Face dataset write hf:", repo, " (or ", repo, " to try Kaggle, then the Hub)");
  }
  return request;
}

}  // namespace fluxtrain::fetch
