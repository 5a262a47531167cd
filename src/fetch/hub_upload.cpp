#include "fetch/hub_upload.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "core/strings.h"
#include "fetch/hub.h"

namespace fluxtrain::fetch {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The first `n` bytes of a file or content (the preupload's "sample", from which the Hub guesses text/binary).
std::string head_of(const HubUploadFile& file, size_t n) {
  if (file.local.empty()) return file.content.substr(0, n);
  std::ifstream in(file.local, std::ios::binary);
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

std::string read_whole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, " to upload it");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The file's SHA-256 (the LFS oid). Not core's sha256_file_hex, which a stop signal ends: the sender goes
// on through a stop (HttpOptions::abort_on_stop) and ends with its cancel flag.
std::string file_sha256(const fs::path& path, const HttpOptions& http) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, " to upload it");
  Sha256 hash;
  std::vector<char> chunk(1 << 20);
  while (in) {
    if (http.abort_on_stop) stop::check("hashing");
    if (http.cancel != nullptr && http.cancel->load()) fail("the upload of ", path, ": cancelled");
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    hash.update(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) fail("read error while hashing ", path);
  return hash.hex_digest();
}

json parse_answer(const HttpResponse& response, const std::string& what) {
  check_json_depth(response.body, what);
  json value = json::parse(response.body, nullptr, false);
  if (value.is_discarded() || !value.is_object()) {
    fail(what, ": the Hub's answer is not a JSON object (", redact_url(response.url), "); is HF_ENDPOINT a Hub?");
  }
  return value;
}

HttpRequest hub_request(const std::string& url, const std::string& what, const FetchOptions& options) {
  HttpRequest request;
  request.url = url;
  request.auth = hub_auth(options);
  request.what = what;
  return request;
}

HttpBody json_body(const json& value, const std::string& content_type = "application/json") {
  HttpBody body;
  body.content_type = content_type;
  body.data = value.dump();
  return body;
}

struct PendingFile {
  const HubUploadFile* file = nullptr;
  uint64_t size = 0;
  std::string sha256;
  bool lfs = false;
};

// One LFS object's upload action (basic or multipart), then its verify action.
uint64_t upload_object(const PendingFile& pending, const json& actions, const HubCommit& commit,
                       const FetchOptions& options) {
  const std::string what = cat("the upload of '", pending.file->path, "' to Hugging Face model ", commit.repo);
  const json& upload = actions.at("upload");
  if (!upload.is_object() || !upload.contains("href") || !upload["href"].is_string())
    fail(what, ": the LFS batch answer has no upload href: ", json_excerpt(upload, 200));
  const std::string href = upload["href"].get<std::string>();
  const json header = upload.value("header", json::object());
  std::vector<std::string> extra;
  std::map<int, std::string> parts;
  int64_t chunk_size = 0;
  for (const auto& [key, value] : header.items()) {
    const std::string text = value.is_string() ? value.get<std::string>() : value.dump();
    if (key == "chunk_size") {
      chunk_size = std::atoll(text.c_str());
    } else if (!key.empty() && std::all_of(key.begin(), key.end(),
                                           [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      parts[std::atoi(key.c_str())] = text;
    } else {
      extra.push_back(key + ": " + text);
    }
  }
  HttpBody body;
  body.method = "PUT";
  body.file = pending.file->local;
  body.content_type = "application/octet-stream";
  if (pending.file->local.empty()) body.data = pending.file->content;
  // An upload href on another origin (a storage bucket) gets no Hub token: hub_auth's origin rule.
  if (chunk_size <= 0) {
    body.headers = extra;
    http_send(hub_request(href, what, options), body, options.http);
  } else {
    const uint64_t expected_parts =
        (pending.size + static_cast<uint64_t>(chunk_size) - 1) / static_cast<uint64_t>(chunk_size);
    if (parts.size() != expected_parts)
      fail(what, ": the Hub offers ", parts.size(), " part URLs for ", pending.size, " bytes in parts of ", chunk_size,
           " (expected ", expected_parts, ")");
    json done = json::array();
    uint64_t offset = 0;
    for (const auto& [number, url] : parts) {
      body.offset = offset;
      body.length = chunk_size;
      if (pending.file->local.empty())
        body.data = pending.file->content.substr(offset, static_cast<size_t>(chunk_size));
      HttpResponse response =
          http_send(hub_request(url, cat(what, " (part ", number, ")"), options), body, options.http);
      auto etag = response.headers.find("etag");
      if (etag == response.headers.end() || etag->second.empty())
        fail(what, ": part ", number, " was answered without an ETag");
      done.push_back({{"partNumber", number}, {"etag", etag->second}});
      offset += static_cast<uint64_t>(chunk_size);
    }
    HttpBody complete = json_body({{"oid", pending.sha256}, {"parts", done}}, "application/vnd.git-lfs+json");
    complete.headers = {"Accept: application/vnd.git-lfs+json"};
    http_send(hub_request(href, what + " (completion)", options), complete, options.http);
  }
  if (actions.contains("verify") && actions["verify"].is_object() && actions["verify"].contains("href")) {
    const json& verify = actions["verify"];
    HttpBody check = json_body({{"oid", pending.sha256}, {"size", pending.size}}, "application/vnd.git-lfs+json");
    check.headers = {"Accept: application/vnd.git-lfs+json"};
    const json verify_header = verify.value("header", json::object());
    for (const auto& [key, value] : verify_header.items())
      check.headers.push_back(key + ": " + (value.is_string() ? value.get<std::string>() : value.dump()));
    http_send(hub_request(verify["href"].get<std::string>(), what + " (verify)", options), check, options.http);
  }
  return pending.size;
}

}  // namespace

std::string hub_repo_id_problem(const std::string& repo) {
  const size_t slash = repo.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == repo.size() ||
      repo.find('/', slash + 1) != std::string::npos)
    return "not an owner/name repository id";
  for (const std::string& part : {repo.substr(0, slash), repo.substr(slash + 1)}) {
    if (part.size() > 96) return "a part longer than 96 characters";
    for (char c : part) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
        return cat("'", std::string(1, c), "' is not allowed (letters, digits, '-', '_' and '.' only)");
    }
    if (part.find("--") != std::string::npos || part.find("..") != std::string::npos)
      return "'--' and '..' are not allowed";
    if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.')
      return "a part may not start or end with '-' or '.'";
  }
  return "";
}

HubUser hub_whoami(const FetchOptions& options) {
  HttpRequest request =
      hub_request(options.hf_endpoint + "/api/whoami-v2", "the Hub's check of HF_TOKEN (whoami)", options);
  const json answer = parse_answer(http_get(request, options.http), request.what);
  HubUser user;
  user.name = answer.value("name", "");
  if (answer.contains("auth") && answer["auth"].is_object() && answer["auth"].contains("accessToken") &&
      answer["auth"]["accessToken"].is_object()) {
    user.role = answer["auth"]["accessToken"].value("role", "");
  }
  return user;
}

void hub_create_repo(const std::string& repo, bool private_repo, const FetchOptions& options) {
  const size_t slash = repo.find('/');
  HttpRequest request = hub_request(options.hf_endpoint + "/api/repos/create",
                                    cat("creating the Hugging Face model repository ", repo), options);
  request.access_hint = cat("the token needs write access to ", repo.substr(0, slash),
                            " (a \"write\" token, or a fine-grained one with write access to that namespace)");
  const json payload = {{"name", repo.substr(slash + 1)},
                        {"organization", repo.substr(0, slash)},
                        {"private", private_repo},
                        {"type", "model"}};
  try {
    http_send(request, json_body(payload), options.http);
    log::info("created the Hugging Face model repository ", repo, private_repo ? " (private)" : " (public)");
  } catch (const HttpStatusError& e) {
    if (e.status == 409) return;  // it exists
    if (e.status != 401 && e.status != 402 && e.status != 403) throw;
    // A token that may write to an existing repository but not create one (a fine-grained token): fine
    // when the repository is there, as huggingface_hub's create_repo(exist_ok=True) decides.
    try {
      http_get(hub_request(cat(options.hf_endpoint, "/api/models/", repo), request.what, options), options.http);
    } catch (const Error&) {
      throw e;
    }
  }
}

HubCommitResult hub_commit(const HubCommit& commit, const FetchOptions& options) {
  HubCommitResult result;
  const std::string api = cat(options.hf_endpoint, "/api/models/", commit.repo);
  const std::string revision = url_encode(commit.revision, false);
  std::vector<PendingFile> pending;
  for (const HubUploadFile& file : commit.files) {
    PendingFile p;
    p.file = &file;
    if (file.local.empty()) {
      p.size = file.content.size();
      p.sha256 = sha256_hex(file.content);
    } else {
      std::error_code ec;
      p.size = fs::file_size(file.local, ec);
      if (ec) fail("cannot upload ", file.local, ": ", ec.message());
      p.sha256 = file_sha256(file.local, options.http);
    }
    pending.push_back(p);
  }
  // Which files are LFS.
  if (!pending.empty()) {
    json files = json::array();
    for (const PendingFile& p : pending)
      files.push_back({{"path", p.file->path}, {"size", p.size}, {"sample", base64_encode(head_of(*p.file, 512))}});
    HttpRequest request =
        hub_request(cat(api, "/preupload/", revision), cat("the upload to ", commit.repo, " (preupload)"), options);
    const json answer = parse_answer(http_send(request, json_body({{"files", files}}), options.http), request.what);
    std::map<std::string, std::string> modes;
    if (answer.contains("files") && answer["files"].is_array()) {
      for (const json& f : answer["files"]) {
        if (f.is_object() && f.contains("path") && f["path"].is_string())
          modes[f["path"].get<std::string>()] = f.value("uploadMode", "lfs");
      }
    }
    for (PendingFile& p : pending) {
      auto it = modes.find(p.file->path);
      if (it == modes.end()) fail(request.what, ": the Hub's answer does not mention '", p.file->path, "'");
      p.lfs = it->second == "lfs";
    }
  }
  // The LFS objects the Hub does not have yet.
  json objects = json::array();
  std::map<std::string, const PendingFile*> by_oid;
  for (const PendingFile& p : pending) {
    if (!p.lfs || by_oid.count(p.sha256)) continue;
    objects.push_back({{"oid", p.sha256}, {"size", p.size}});
    by_oid[p.sha256] = &p;
  }
  if (!objects.empty()) {
    HttpRequest request = hub_request(cat(options.hf_endpoint, "/", commit.repo, ".git/info/lfs/objects/batch"),
                                      cat("the upload to ", commit.repo, " (LFS batch)"), options);
    HttpBody body = json_body({{"operation", "upload"},
                               {"transfers", {"basic", "multipart"}},
                               {"objects", objects},
                               {"hash_algo", "sha256"},
                               {"ref", {{"name", commit.revision}}}},
                              "application/vnd.git-lfs+json");
    body.headers = {"Accept: application/vnd.git-lfs+json"};
    const json answer = parse_answer(http_send(request, body, options.http), request.what);
    if (!answer.contains("objects") || !answer["objects"].is_array())
      fail(request.what, ": the answer has no objects list: ", json_excerpt(answer, 200));
    for (const json& object : answer["objects"]) {
      const std::string oid = object.value("oid", "");
      auto it = by_oid.find(oid);
      if (it == by_oid.end()) continue;
      if (object.contains("error")) {
        fail(request.what, ": the Hub refuses '", it->second->file->path, "': ", json_excerpt(object["error"], 200));
      }
      if (!object.contains("actions") || !object["actions"].is_object() || !object["actions"].contains("upload")) {
        ++result.lfs_present;  // the Hub has it (an earlier attempt, or another file with the same bytes)
        log::debug("'", it->second->file->path, "' is on the Hub already");
        continue;
      }
      result.bytes_sent += upload_object(*it->second, object["actions"], commit, options);
      ++result.lfs_uploaded;
    }
  }
  // The commit: header, then one line per operation.
  std::string ndjson =
      json{{"key", "header"}, {"value", {{"summary", commit.summary}, {"description", ""}}}}.dump() + "\n";
  for (const std::string& folder : commit.deleted_folders)
    ndjson += json{{"key", "deletedFolder"}, {"value", {{"path", folder}}}}.dump() + "\n";
  for (const PendingFile& p : pending) {
    if (p.lfs) {
      ndjson += json{{"key", "lfsFile"},
                     {"value", {{"path", p.file->path}, {"algo", "sha256"}, {"oid", p.sha256}, {"size", p.size}}}}
                    .dump() +
                "\n";
    } else {
      const std::string content = p.file->local.empty() ? p.file->content : read_whole(p.file->local);
      ndjson += json{{"key", "file"},
                     {"value", {{"content", base64_encode(content)}, {"path", p.file->path}, {"encoding", "base64"}}}}
                    .dump() +
                "\n";
      result.bytes_sent += content.size();
    }
  }
  HttpRequest request = hub_request(cat(api, "/commit/", revision), cat("the commit to ", commit.repo), options);
  HttpBody body;
  body.content_type = "application/x-ndjson";
  body.data = std::move(ndjson);
  const json answer = parse_answer(http_send(request, body, options.http), request.what);
  result.commit_url = answer.value("commitUrl", "");
  return result;
}

}  // namespace fluxtrain::fetch
