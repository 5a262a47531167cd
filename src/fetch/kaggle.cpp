#include "fetch/kaggle.h"

#include <algorithm>

#include "core/error.h"

namespace fluxtrain::fetch {

void check_kaggle_source(const std::string& repo, const std::string& version, const FetchOptions& options) {
  if (!version.empty() && (version.size() > 9 ||
                           !std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; }))) {
    fail("kaggle:", repo, ": the revision '", version,
         "' is not a dataset version number (1, 2, ...; empty for the latest)");
  }
  if (options.kaggle_username.empty() || options.kaggle_key.empty()) {
    fail("kaggle:", repo,
         " needs Kaggle API credentials: set KAGGLE_USERNAME and KAGGLE_KEY (kaggle.com -> "
         "Settings -> API -> Create New Token gives both)");
  }
}

std::string kaggle_api(const FetchOptions& options) {
  return options.kaggle_endpoint.ends_with("/api/v1") ? options.kaggle_endpoint : options.kaggle_endpoint + "/api/v1";
}

HttpRequest kaggle_download_request(const std::string& repo, const std::string& version, const FetchOptions& options) {
  HttpRequest request;
  request.url =
      cat(kaggle_api(options), "/datasets/download/", repo, version.empty() ? "" : "?datasetVersionNumber=" + version);
  request.auth.basic_user = options.kaggle_username;
  request.auth.basic_password = options.kaggle_key;
  request.auth.variables = "KAGGLE_USERNAME and KAGGLE_KEY";
  request.what = cat("Kaggle dataset ", repo);
  request.not_found_hint = cat("check the name (and version) at https://www.kaggle.com/datasets/", repo);
  return request;
}

}  // namespace fluxtrain::fetch
