#include "fetch/hub.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/strings.h"
#include "fetch/archive.h"

namespace fluxtrain::fetch {
namespace {

using json = nlohmann::json;

// scheme://host[:port] of an endpoint, to resolve root-relative links.
std::string origin_of(const std::string& url) {
  size_t authority = url.find("://");
  if (authority == std::string::npos) return url;
  return url.substr(0, url.find('/', authority + 3));
}

bool is_sha256(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

HttpAuth hub_auth(const FetchOptions& options) {
  HttpAuth auth;
  auth.bearer_token = options.hf_token;
  auth.variables = "HF_TOKEN";
  // The Hub's origin only: a listing page, redirect or download elsewhere (a CDN) goes without it.
  auth.origin = options.hf_endpoint;
  return auth;
}

std::string hub_file_url(HubRepoType type, const std::string& repo, const std::string& revision,
                         const std::string& path, const FetchOptions& options) {
  return cat(options.hf_endpoint, type == HubRepoType::dataset ? "/datasets/" : "/", repo, "/resolve/",
             url_encode(revision, false), "/", url_encode(path, true));
}

std::vector<HubFile> list_hub_files(const HubListing& listing, const FetchOptions& options) {
  const std::string& repo = listing.repo;
  const bool dataset = listing.type == HubRepoType::dataset;
  const std::string what =
      cat("the file list of Hugging Face ", dataset ? "dataset " : "model ", repo,
          listing.folder.empty() ? "" : " (folder " + listing.folder + ")", " at revision '", listing.revision, "'");
  std::string url =
      cat(options.hf_endpoint, dataset ? "/api/datasets/" : "/api/models/", repo, "/tree/",
          url_encode(listing.revision, false), listing.folder.empty() ? "" : "/" + url_encode(listing.folder, true),
          "?recursive=", listing.recursive ? "true" : "false", "&expand=false");
  HttpRequest request;
  request.auth = hub_auth(options);
  request.what = what;
  request.not_found_hint = listing.not_found_hint;
  request.access_hint = listing.access_hint;
  std::vector<HubFile> files;
  std::set<std::string> seen_pages;
  while (!url.empty()) {
    if (!seen_pages.insert(url).second)
      fail(what, ": the listing's next page is one seen before (", redact_url(url), ")");
    request.url = url;
    HttpResponse response = http_get(request, options.http);
    check_json_depth(response.body, cat(what, ": the answer from ", redact_url(url)));
    json page = json::parse(response.body, nullptr, false);
    if (page.is_discarded() || !page.is_array()) {
      fail(what, ": the answer from ", redact_url(url), " is not a JSON list; is HF_ENDPOINT (", options.hf_endpoint,
           ") a Hugging Face Hub?");
    }
    for (const json& item : page) {
      if (!item.is_object() || item.value("type", "") != "file") continue;
      if (!item.contains("path") || !item["path"].is_string() || !item.contains("size") ||
          !item["size"].is_number_unsigned()) {
        fail(what, ": an entry without a path or size: ", json_excerpt(item, 200));
      }
      HubFile file;
      std::string why;
      std::string raw = item["path"].get<std::string>();
      file.path = normalize_relative_path(raw, &why);
      if (!why.empty() || file.path.empty()) {
        fail(what, ": the listing names an unsafe path '", raw, "' (", why.empty() ? "empty" : why, "); refusing it");
      }
      file.size = item["size"].get<int64_t>();
      if (item.contains("lfs") && item["lfs"].is_object()) {
        const json& lfs = item["lfs"];
        std::string oid = lfs.contains("oid") && lfs["oid"].is_string() ? lfs["oid"].get<std::string>() : "";
        if (is_sha256(oid)) file.sha256 = oid;
        if (lfs.contains("size") && lfs["size"].is_number_unsigned()) file.size = lfs["size"].get<int64_t>();
      }
      if (file.path == ".gitattributes") continue;  // git metadata of the repository, not data
      files.push_back(std::move(file));
    }
    auto link = response.headers.find("link");
    url = link == response.headers.end() ? "" : link_next(link->second);
    if (url.starts_with("/")) url = origin_of(options.hf_endpoint) + url;
  }
  std::sort(files.begin(), files.end(), [](const HubFile& a, const HubFile& b) { return a.path < b.path; });
  return files;
}

}  // namespace fluxtrain::fetch
