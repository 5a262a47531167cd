// HTTP GETs for downloads of datasets and model files (torch-free, libcurl): into memory for JSON APIs,
// or into a file with retries, resume, redirects, progress, size and sha256 checks and an atomic final
// rename.
//
// Credentials (HttpAuth, and a user:password in the URL itself, which is moved into HttpAuth before the
// first request) go only to the origin they belong to: scheme, host and port (HttpAuth::origin, by
// default the URL first asked for). Redirects are followed here, not by libcurl, and each hop is checked:
// a redirect to another origin (the Hub's resolve URLs redirect to a CDN, Kaggle's downloads to cloud
// storage) or from https to plain http (another scheme, so another origin) drops them, and so does a
// Hub listing page on another origin. They never reach a log line or an error message: URLs are shown
// through core/strings.h's redact_url (user info and query values as "***": signed CDN URLs carry
// signatures there), curl's verbose mode is never on, and every message is scrubbed of the secrets
// before it is thrown.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain {
class Progress;
}

namespace fluxtrain::fetch {

struct HttpAuth {
  std::string bearer_token;  // sent as "Authorization: Bearer <token>"
  std::string basic_user;    // HTTP basic auth, with basic_password
  std::string basic_password;
  // The environment variables that carry these credentials, for 401/403 messages ("HF_TOKEN").
  // Empty: the source takes no credentials (a plain URL).
  std::string variables;
  // The URL whose scheme://host:port the credentials belong to; "" = the request's own URL. Requests
  // (pages, redirects) to any other origin go without them.
  std::string origin;
  bool empty() const { return bearer_token.empty() && basic_user.empty(); }
};

struct HttpOptions {
  // Tries per request. Connection errors, timeouts, 429 and 5xx are retried after a wait of
  // backoff_seconds, doubled per retry up to max_backoff_seconds (or the server's Retry-After, up to
  // 120 s); other 4xx are not.
  int max_attempts = 5;
  double backoff_seconds = 1.0;
  double max_backoff_seconds = 30.0;
  long connect_timeout_seconds = 30;
  // A transfer slower than low_speed_bytes_per_second for low_speed_seconds is aborted and retried.
  long low_speed_bytes_per_second = 1024;
  long low_speed_seconds = 60;
  int max_redirects = 10;
  // Report download progress through core/progress.h.
  bool progress = true;
  // A stop signal (core/stop.h) aborts a transfer and the wait before a retry. Uploads of the state a
  // stopping run saved last set it false: they are what the stop is waiting for.
  bool abort_on_stop = true;
  // Set (from any thread): the transfer in progress and any wait before a retry end with an Error.
  const std::atomic<bool>* cancel = nullptr;
};

struct HttpRequest {
  std::string url;
  HttpAuth auth;
  // What is fetched, for messages: "file 'a/b.png' of Hugging Face dataset owner/name".
  std::string what;
  // The fix after a 404: "check the name and revision at https://...".
  std::string not_found_hint;
  // More of the fix after a 401/403 ("a gated model: accept its licence at https://..."); "" = none.
  std::string access_hint;
  // The URL itself is a credential (a webhook's path holds its token): messages and logs show its origin
  // only.
  bool secret_url = false;
};

// The body of a POST or PUT: `data`, or when `file` is set the bytes [offset, offset + length) of that
// file (read again on every try).
struct HttpBody {
  std::string method = "POST";
  std::string content_type;          // "application/json"; "" = none
  std::vector<std::string> headers;  // more request headers, "Name: value"
  std::string data;
  std::filesystem::path file;
  uint64_t offset = 0;
  int64_t length = -1;  // -1: to the end of the file
};

struct HttpResponse {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // the final response's, names in lower case
  std::string url;                             // the final URL, after redirects
};

// The error of a request the server answered with a final error status (after any retries): the message
// as every other Error, and the status, so that a caller can tell "the source does not have it" from
// other failures (a bare DATASET_NAME tries the next source then: fetch/dataset.h).
class HttpStatusError : public Error {
 public:
  HttpStatusError(const std::string& message, long status, bool not_found)
      : Error(message), status(status), not_found(not_found) {}
  long status;
  // 404, or the Hub's 401 with an X-Error-Code ending in "NotFound" (a missing or private repository).
  bool not_found;
};

// A POST or PUT with `body`, its answer into memory (at most max_bytes). Retried as GETs are (connection
// errors, timeouts, 429, 5xx); throws Error unless the final status is 2xx (HttpStatusError for an error
// status).
HttpResponse http_send(const HttpRequest& request, const HttpBody& body, const HttpOptions& options = {},
                       size_t max_bytes = 16u << 20);

// GET into memory (JSON APIs), at most max_bytes of body. Throws Error unless the final status is 2xx
// (HttpStatusError for an error status).
HttpResponse http_get(const HttpRequest& request, const HttpOptions& options = {}, size_t max_bytes = 64u << 20);

struct DownloadTarget {
  std::filesystem::path path;
  int64_t expected_size = -1;   // -1: unknown (the server's Content-Length is still checked)
  std::string expected_sha256;  // lower-case hex; empty: unknown
  // Advanced by the bytes received (a shared total for many files); nullptr: the download reports its
  // own progress when HttpOptions::progress is set.
  Progress* progress = nullptr;
};

// GET into target.path. Bytes arrive in "<path>.part", which a later call resumes with a Range
// request (a 206 answer is appended after checking its Content-Range; a 200 starts over). When the
// transfer is complete and the size and hash match, the part file is fsync'd and renamed onto the
// path. A resumed file that fails the checks is downloaded once more from the start; a fresh one that
// fails is an error (and the part file is removed). Returns the bytes received by this call.
uint64_t http_download(const HttpRequest& request, const DownloadTarget& target, const HttpOptions& options = {});

// "scheme://host:port" of a URL (scheme and host in lower case, the scheme's default port filled in),
// the unit that credentials are bound to; "" when `url` is not a URL.
std::string url_origin(const std::string& url);

// The URL of rel="next" in an RFC 8288 Link header ("<url>; rel=\"next\", <url2>; rel=\"last\""), or "".
std::string link_next(std::string_view link_header);

// Percent-encodes everything but RFC 3986 unreserved characters (and '/' when keep_slash).
std::string url_encode(std::string_view text, bool keep_slash);

}  // namespace fluxtrain::fetch
