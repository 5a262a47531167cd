#include "fetch/http.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "core/strings.h"
#include "core/version.h"

namespace fluxtrain::fetch {
namespace {

namespace fs = std::filesystem;
using Headers = std::map<std::string, std::string>;

// One curl handle per thread, reset before each request, so that connections to a host are reused.
CURL* thread_handle() {
  struct Deleter {
    void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
  };
  thread_local std::unique_ptr<CURL, Deleter> handle;
  if (!handle) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    handle.reset(curl_easy_init());
    if (!handle) fail("cannot initialise libcurl (curl_easy_init failed: out of memory?)");
  }
  curl_easy_reset(handle.get());
  return handle.get();
}

// HTTP's blanks in header lines and their parameters.
constexpr std::string_view kHttpBlanks = " \t\r\n";

// Blanks the secrets out of a message (a server might echo them; curl's messages never should).
std::string scrub(std::string text, const std::vector<std::string>& secrets) {
  for (const std::string& secret : secrets) {
    if (secret.size() < 4) continue;
    for (size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at)) {
      text.replace(at, secret.size(), "<redacted>");
    }
  }
  return text;
}

std::string url_part(CURLU* url, CURLUPart part, unsigned flags = 0) {
  char* value = nullptr;
  if (curl_url_get(url, part, &value, flags) != CURLUE_OK || value == nullptr) return "";
  std::string text = value;
  curl_free(value);
  return text;
}

struct UrlHandle {
  CURLU* url = curl_url();
  ~UrlHandle() { curl_url_cleanup(url); }
};

// What a message must never show of a request: its credentials, and the password and (long) query
// values of its URL (signed URLs carry their signatures in the query).
std::vector<std::string> secrets_of(const HttpRequest& request) {
  std::vector<std::string> secrets = {request.auth.bearer_token, request.auth.basic_password};
  UrlHandle u;
  if (curl_url_set(u.url, CURLUPART_URL, request.url.c_str(), 0) == CURLUE_OK) {
    for (unsigned flags : {0u, static_cast<unsigned>(CURLU_URLDECODE)}) {
      secrets.push_back(url_part(u.url, CURLUPART_PASSWORD, flags));
    }
    if (request.secret_url) {
      secrets.push_back(url_part(u.url, CURLUPART_PATH));
      secrets.push_back(url_part(u.url, CURLUPART_PATH, CURLU_URLDECODE));
    }
    std::string query = url_part(u.url, CURLUPART_QUERY);
    for (size_t start = 0; start < query.size();) {
      size_t end = std::min(query.find('&', start), query.size());
      std::string param = query.substr(start, end - start);
      size_t equals = param.find('=');
      std::string value = equals == std::string::npos ? param : param.substr(equals + 1);
      // Signatures and tokens are long; short values ("true", "2") would blank ordinary words.
      if (value.size() >= 8) secrets.push_back(std::move(value));
      start = end + 1;
    }
  }
  return secrets;
}

// The request with a user:password of its URL moved into its credentials (bound to the URL's origin),
// so that they follow the same rule as any other credentials; the URL keeps no user info.
HttpRequest with_url_credentials(const HttpRequest& request) {
  UrlHandle u;
  if (curl_url_set(u.url, CURLUPART_URL, request.url.c_str(), 0) != CURLUE_OK) return request;
  const std::string user = url_part(u.url, CURLUPART_USER, CURLU_URLDECODE);
  const std::string password = url_part(u.url, CURLUPART_PASSWORD, CURLU_URLDECODE);
  if (user.empty() && password.empty()) return request;
  HttpRequest out = request;
  if (out.auth.empty()) {
    out.auth.basic_user = user;
    out.auth.basic_password = password;
    out.auth.variables = "the user info of the URL";
    out.auth.origin = request.url;
  }
  curl_url_set(u.url, CURLUPART_USER, nullptr, 0);
  curl_url_set(u.url, CURLUPART_PASSWORD, nullptr, 0);
  out.url = url_part(u.url, CURLUPART_URL);
  return out;
}

// `location` (absolute or relative, as a Location header gives it) resolved against `base`.
std::string resolve_url(const std::string& base, const std::string& location) {
  UrlHandle u;
  if (curl_url_set(u.url, CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      curl_url_set(u.url, CURLUPART_URL, location.c_str(), CURLU_URLENCODE) != CURLUE_OK) {
    return "";
  }
  return url_part(u.url, CURLUPART_URL);
}

// Receives the body of a 2xx answer.
class BodySink {
 public:
  virtual ~BodySink() = default;
  // Before the first byte (or at the end of an empty body). false: abort this try and retry at once.
  virtual bool begin(long status, const Headers& headers) = 0;
  // Throws Error on failure (not retried).
  virtual void write(const char* data, size_t size) = 0;
};

struct Hop {
  CURLcode code = CURLE_OK;
  std::string curl_error;
  long status = 0;
  Headers headers;
  std::string error_body;  // the body of a non-2xx answer, cut at 16 KB
  bool retry_now = false;
  std::exception_ptr sink_error;
  BodySink* sink = nullptr;
  bool begun = false;
};

bool is_success(long status) {
  return status >= 200 && status < 300;
}
bool is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// curl calls it about once a second and after each block, also while the server sends nothing: a stop
// signal aborts the transfer (CURLE_ABORTED_BY_CALLBACK), a download's part file stays for the restart.
// An HttpOptions::cancel set does the same.
int on_transfer_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  const auto& options = *static_cast<const HttpOptions*>(user);
  if (options.abort_on_stop && stop::requested()) return 1;
  return options.cancel != nullptr && options.cancel->load() ? 1 : 0;
}

// Throws when a transfer or a wait must end now: the stop signal (when it aborts) or the cancel flag.
void check_cancel(const HttpOptions& options, const std::string& what) {
  if (options.abort_on_stop) stop::check("download");
  if (options.cancel != nullptr && options.cancel->load()) fail(what, ": cancelled");
}

// Reads an upload's file body: [offset, offset + length) of the file.
struct FileBodyReader {
  std::FILE* file = nullptr;
  uint64_t left = 0;
  ~FileBodyReader() {
    if (file != nullptr) std::fclose(file);
  }
};

size_t on_read(char* buffer, size_t size, size_t count, void* user) {
  auto& reader = *static_cast<FileBodyReader*>(user);
  const size_t want = static_cast<size_t>(std::min<uint64_t>(reader.left, size * count));
  const size_t got = want == 0 ? 0 : std::fread(buffer, 1, want, reader.file);
  if (got < want) return CURL_READFUNC_ABORT;  // the file shrank under us
  reader.left -= got;
  return got;
}

size_t on_header(char* buffer, size_t size, size_t count, void* user) {
  auto& hop = *static_cast<Hop*>(user);
  std::string_view line(buffer, size * count);
  if (line.starts_with("HTTP/")) {
    hop.headers.clear();
    size_t space = line.find(' ');
    hop.status = space == std::string_view::npos ? 0 : std::atol(std::string(line.substr(space + 1, 3)).c_str());
  } else if (size_t colon = line.find(':'); colon != std::string_view::npos) {
    std::string name = lower(trim(line.substr(0, colon), kHttpBlanks));
    std::string value = trim(line.substr(colon + 1), kHttpBlanks);
    std::string& slot = hop.headers[name];
    slot = slot.empty() ? value : slot + ", " + value;
  }
  return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto& hop = *static_cast<Hop*>(user);
  size_t bytes = size * count;
  if (!is_success(hop.status)) {
    if (!is_redirect(hop.status) && hop.error_body.size() < 16384) hop.error_body.append(data, bytes);
    return bytes;
  }
  try {
    if (!hop.begun) {
      hop.begun = true;
      if (!hop.sink->begin(hop.status, hop.headers)) {
        hop.retry_now = true;
        return 0;
      }
    }
    hop.sink->write(data, bytes);
  } catch (...) {
    hop.sink_error = std::current_exception();
    return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
  }
  return bytes;
}

struct RequestSetup {
  std::vector<std::string> headers;  // extra request headers ("Range: bytes=10-")
  bool compressed = false;           // accept gzip/deflate/... encodings (never for file downloads)
  const HttpBody* body = nullptr;    // a POST or PUT
};

Hop perform_hop(const std::string& url, const HttpAuth* auth, const RequestSetup& setup, const HttpOptions& options,
                BodySink& sink) {
  CURL* curl = thread_handle();
  Hop hop;
  hop.sink = &sink;
  char error_buffer[CURL_ERROR_SIZE] = "";
  struct SlistDeleter {
    void operator()(curl_slist* list) const { curl_slist_free_all(list); }
  };
  std::unique_ptr<curl_slist, SlistDeleter> header_list;
  auto add_header = [&](const std::string& line) {
    curl_slist* grown = curl_slist_append(header_list.get(), line.c_str());
    if (grown == nullptr) fail("out of memory building an HTTP request");
    header_list.release();
    header_list.reset(grown);
  };
  for (const std::string& line : setup.headers) add_header(line);
  FileBodyReader reader;
  if (setup.body != nullptr) {
    for (const std::string& line : setup.body->headers) add_header(line);
    if (!setup.body->content_type.empty()) add_header("Content-Type: " + setup.body->content_type);
    add_header("Expect:");  // no 100-continue round trip
  }
  if (auth != nullptr && !auth->bearer_token.empty()) add_header("Authorization: Bearer " + auth->bearer_token);
  const std::string user_agent = cat("fluxtrain/", kVersion);

  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);  // redirects are followed by the caller
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_VERBOSE, 0L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, options.connect_timeout_seconds);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, options.low_speed_bytes_per_second);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, options.low_speed_seconds);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &hop);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &hop);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_transfer_progress);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &options);
  if (setup.compressed) curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");
  if (const HttpBody* body = setup.body; body != nullptr) {
    if (body->file.empty()) {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->data.size()));
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data.c_str());
    } else {
      std::error_code ec;
      const uint64_t file_size = fs::file_size(body->file, ec);
      reader.file = ec ? nullptr : std::fopen(body->file.c_str(), "rb");
      if (reader.file == nullptr || body->offset > file_size ||
          ::fseeko(reader.file, static_cast<off_t>(body->offset), SEEK_SET) != 0) {
        fail("cannot read ", body->file, " to upload it: ", ec ? ec.message() : std::strerror(errno));
      }
      reader.left = body->length >= 0
                        ? std::min<uint64_t>(static_cast<uint64_t>(body->length), file_size - body->offset)
                        : file_size - body->offset;
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(curl, CURLOPT_READDATA, &reader);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(reader.left));
    }
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, body->method.c_str());
  }
  if (header_list) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, header_list.get());
  if (auth != nullptr && !auth->basic_user.empty()) {
    curl_easy_setopt(curl, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BASIC));
    curl_easy_setopt(curl, CURLOPT_USERNAME, auth->basic_user.c_str());
    curl_easy_setopt(curl, CURLOPT_PASSWORD, auth->basic_password.c_str());
  }
  hop.code = curl_easy_perform(curl);
  // Drop the pointers into this frame before returning (the handle is reused).
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, nullptr);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(curl, CURLOPT_READDATA, nullptr);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, nullptr);
  long status = 0;
  if (curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status != 0) hop.status = status;
  if (hop.sink_error) std::rethrow_exception(hop.sink_error);
  if (hop.code == CURLE_ABORTED_BY_CALLBACK) check_cancel(options, "the transfer");
  hop.curl_error = error_buffer[0] != '\0' ? std::string(error_buffer) : std::string(curl_easy_strerror(hop.code));
  if (hop.code == CURLE_OK && is_success(hop.status) && !hop.begun) {
    hop.begun = true;
    if (!sink.begin(hop.status, hop.headers)) hop.retry_now = true;
  }
  return hop;
}

bool transport_error_is_retryable(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR: return true;
    default: return false;
  }
}

// The server's own explanation: the Hub's X-Error-Message header, or "error"/"message" of a JSON body.
std::string server_message(const Hop& hop) {
  std::string message;
  if (auto it = hop.headers.find("x-error-message"); it != hop.headers.end()) {
    message = it->second;
  } else if (!hop.error_body.empty() && hop.error_body.front() == '{') {
    auto json = json_depth(hop.error_body) <= kMaxJsonDepth ? nlohmann::json::parse(hop.error_body, nullptr, false)
                                                            : nlohmann::json();
    if (json.is_object()) {
      for (const char* key : {"error", "message"}) {
        if (json.contains(key) && json[key].is_string()) {
          message = json[key].get<std::string>();
          break;
        }
      }
    }
  }
  for (char& c : message) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (message.size() > 300) message = message.substr(0, 300) + "...";
  return message.empty() ? "" : " (server: \"" + message + "\")";
}

bool hop_not_found(const Hop& hop) {
  auto code = hop.headers.find("x-error-code");
  return hop.status == 404 || (hop.status == 401 && code != hop.headers.end() && code->second.ends_with("NotFound"));
}

std::string status_error(const HttpRequest& request, const Hop& hop, const std::string& url) {
  const std::string where = " from " + redact_url(url);
  const std::string said = server_message(hop);
  // The Hub answers 401 (not 404) for a repository that does not exist or that the token cannot see,
  // and says which in X-Error-Code.
  auto code = hop.headers.find("x-error-code");
  if (hop.status == 401 && code != hop.headers.end() && code->second.ends_with("NotFound")) {
    return cat(request.what, " was not found, or is private (HTTP 401 ", code->second, where, ")", said,
               request.not_found_hint.empty() ? "" : "; " + request.not_found_hint,
               request.auth.empty() ? cat("; if it is private or gated, set ", request.auth.variables) : "",
               request.access_hint.empty() ? "" : "; " + request.access_hint);
  }
  if (hop.status == 401 || hop.status == 403) {
    std::string fix;
    if (request.auth.variables.empty()) {
      fix =
          "the server wants credentials, which fluxtrain sends only to the Hugging Face Hub (HF_TOKEN) and Kaggle "
          "(KAGGLE_USERNAME/KAGGLE_KEY): make the URL public, or download it yourself and give the local folder";
    } else if (request.auth.empty()) {
      fix = cat("no credentials were sent: set ", request.auth.variables,
                " (if it is private or gated, the token must have read access to it)");
    } else {
      fix = cat("the credentials from ", request.auth.variables,
                " were refused: check that they are valid, not expired, and have access to it (a gated repository must "
                "also be accepted on its page)");
    }
    if (!request.access_hint.empty()) fix += "; " + request.access_hint;
    return cat(request.what, ": access denied (HTTP ", hop.status, where, ")", said, "; ", fix);
  }
  if (hop.status == 404) {
    return cat(request.what, " was not found (HTTP 404", where, ")", said,
               request.not_found_hint.empty() ? "" : "; " + request.not_found_hint);
  }
  if (hop.status == 429 || hop.status >= 500) {
    return cat(request.what, ": the server answered HTTP ", hop.status, where, said,
               hop.status == 429 ? " (too many requests)" : "",
               " to every try; it may be down or overloaded: try again "
               "later (FLUXTRAIN_HTTP_RETRIES and FLUXTRAIN_HTTP_BACKOFF_SECONDS set how long fluxtrain keeps trying)");
  }
  if (is_redirect(hop.status)) return cat(request.what, ": HTTP ", hop.status, where, " without a Location to follow");
  return cat(request.what, ": HTTP ", hop.status, where, said);
}

// Runs one request with redirects and retries. `setup_for_try` is called before every try (a resumed
// download asks for a new Range each time). Returns the final hop: 2xx, or `extra_ok` when given.
Hop run_request(const HttpRequest& original, const HttpOptions& options,
                const std::function<RequestSetup()>& setup_for_try, BodySink& sink, long extra_ok = 0,
                std::string* final_url = nullptr) {
  const int tries = std::max(1, options.max_attempts);
  const std::vector<std::string> secrets = secrets_of(original);
  const HttpRequest request = with_url_credentials(original);
  const std::string auth_origin = url_origin(request.auth.origin.empty() ? request.url : request.auth.origin);
  for (int attempt = 1;; ++attempt) {
    const RequestSetup setup = setup_for_try();
    std::string url = request.url;
    Hop hop;
    for (int redirects = 0;; ++redirects) {
      // Credentials go to their own origin only: never to another host or port, nor over plain http
      // when they belong to an https origin.
      const bool send_auth = !request.auth.empty() && url_origin(url) == auth_origin;
      if (!request.auth.empty() && !send_auth) {
        log::debug(scrub(cat("no credentials for ", redact_url(url), " (they belong to ", auth_origin, ")"), secrets));
      }
      log::debug(scrub(cat(setup.body != nullptr ? setup.body->method : std::string("GET"), " ", redact_url(url),
                           send_auth ? " (with credentials)" : ""),
                       secrets));
      hop = perform_hop(url, send_auth ? &request.auth : nullptr, setup, options, sink);
      if (hop.code != CURLE_OK || !is_redirect(hop.status)) break;
      auto location = hop.headers.find("location");
      if (location == hop.headers.end() || location->second.empty()) break;
      if (redirects >= options.max_redirects) {
        fail(scrub(cat(request.what, ": more than ", options.max_redirects, " redirects, the last to ",
                       redact_url(location->second), " (a redirect loop on the server?)"),
                   secrets));
      }
      std::string next = resolve_url(url, location->second);
      const std::string next_origin = url_origin(next);
      if (next.empty() || !(next_origin.starts_with("http://") || next_origin.starts_with("https://"))) {
        fail(scrub(cat(request.what, ": ", redact_url(url), " redirects to '", redact_url(location->second),
                       "', which is not an http(s) URL"),
                   secrets));
      }
      if (url.starts_with("https://") && next_origin.starts_with("http://")) {
        log::warn(scrub(cat(request.what, ": ", redact_url(url), " redirects to plain http (", redact_url(next),
                            "); following it without credentials"),
                        secrets));
      }
      url = std::move(next);
    }
    if (final_url != nullptr) *final_url = url;
    std::string problem;
    bool retryable = false;
    if (hop.retry_now) {
      problem = "the answer did not continue the partial download";
      retryable = true;
    } else if (hop.code != CURLE_OK) {
      problem = hop.curl_error;
      retryable = transport_error_is_retryable(hop.code);
      if (!retryable) {
        fail(scrub(cat(request.what, ": cannot download ", redact_url(url), ": ", problem), secrets));
      }
    } else if (is_success(hop.status) || (extra_ok != 0 && hop.status == extra_ok)) {
      return hop;
    } else if (hop.status == 429 || hop.status >= 500) {
      problem = cat("HTTP ", hop.status, server_message(hop));
      retryable = true;
    } else {
      throw HttpStatusError(scrub(status_error(request, hop, url), secrets), hop.status, hop_not_found(hop));
    }
    if (attempt >= tries) {
      if (hop.retry_now) fail(scrub(cat(request.what, ": ", problem, " (", redact_url(url), ")"), secrets));
      if (hop.code != CURLE_OK) {
        fail(scrub(cat(request.what, ": cannot download ", redact_url(url), ": ", problem, " (", tries,
                       " tries); check the network connection, the URL and any proxy (https_proxy, no_proxy)"),
                   secrets));
      }
      throw HttpStatusError(scrub(status_error(request, hop, url), secrets), hop.status, hop_not_found(hop));
    }
    double wait =
        std::min(options.max_backoff_seconds, options.backoff_seconds * double(1LL << std::min(attempt - 1, 20)));
    if (auto it = hop.headers.find("retry-after"); it != hop.headers.end()) {
      char* end = nullptr;
      long seconds = std::strtol(it->second.c_str(), &end, 10);
      if (end != it->second.c_str() && *end == '\0' && seconds >= 0) wait = std::min<double>(seconds, 120);
    }
    if (hop.retry_now) wait = 0;
    log::warn(scrub(cat(request.what, ": ", problem, " from ", redact_url(url), "; retry ", attempt, " of ", tries - 1,
                        wait > 0 ? cat(" in ", wait, " s") : std::string()),
                    secrets));
    // The wait before a retry, in slices, so that a stop signal ends it.
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait);
    while (std::chrono::steady_clock::now() < until) {
      check_cancel(options, request.what);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

class MemorySink : public BodySink {
 public:
  MemorySink(const HttpRequest& request, size_t max_bytes) : request_(request), max_bytes_(max_bytes) {}
  bool begin(long, const Headers&) override {
    body.clear();
    return true;
  }
  void write(const char* data, size_t size) override {
    if (body.size() + size > max_bytes_) {
      fail(request_.what, ": the answer is larger than ", format_bytes(double(max_bytes_)), " (",
           request_.secret_url ? url_origin(request_.url) : redact_url(request_.url), "); is this the right endpoint?");
    }
    body.append(data, size);
  }
  std::string body;

 private:
  const HttpRequest& request_;
  size_t max_bytes_;
};

uint64_t file_size_or_zero(const fs::path& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  return ec ? 0 : size;
}

// Writes a download's body into its part file: appends a 206 that continues it, starts over on a 200.
class FileSink : public BodySink {
 public:
  FileSink(const HttpRequest& request, const DownloadTarget& target, fs::path part, const HttpOptions& options)
      : request_(request), target_(target), part_(std::move(part)), options_(options) {}
  ~FileSink() override { close_file(); }

  // Called before each try: the bytes already in the part file.
  uint64_t prepare() {
    close_file();
    offset_ = file_size_or_zero(part_);
    return offset_;
  }

  bool begin(long status, const Headers& headers) override {
    close_file();
    uint64_t start = 0;
    server_total_ = -1;
    if (status == 206) {
      // "bytes START-END/TOTAL" (TOTAL may be "*").
      auto it = headers.find("content-range");
      unsigned long long first = 0, last = 0;
      char total[32] = "";
      if (it == headers.end() || std::sscanf(it->second.c_str(), "bytes %llu-%llu/%31s", &first, &last, total) != 3 ||
          first != offset_) {
        log::warn(request_.what, ": the server's partial answer does not continue the ", offset_,
                  " bytes already downloaded (Content-Range '", it == headers.end() ? "" : it->second,
                  "'); starting over");
        fs::remove(part_);
        discard(offset_);
        offset_ = 0;
        return false;
      }
      if (std::strcmp(total, "*") != 0) server_total_ = std::atoll(total);
      start = offset_;
    } else {
      if (offset_ > 0) {
        log::debug(request_.what, ": the server sent the whole file (HTTP ", status,
                   ") instead of the rest; starting over");
        discard(offset_);
      }
      if (auto it = headers.find("content-length"); it != headers.end()) server_total_ = std::atoll(it->second.c_str());
    }
    fd_ = ::open(part_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create ", part_, ": ", std::strerror(errno));
    if (::ftruncate(fd_, static_cast<off_t>(start)) != 0 || ::lseek(fd_, static_cast<off_t>(start), SEEK_SET) < 0) {
      fail("cannot write ", part_, ": ", std::strerror(errno));
    }
    if (target_.progress != nullptr) {
      if (!counted_offset_) target_.progress->advance(static_cast<int64_t>(start));
    } else if (options_.progress && !own_progress_) {
      // A 206's Content-Range total and a 200's Content-Length are both the whole file's size.
      int64_t total = target_.expected_size >= 0 ? target_.expected_size : std::max<int64_t>(server_total_, 0);
      ProgressOptions progress_options;
      progress_options.unit = "B";
      own_progress_ =
          std::make_unique<Progress>("download " + target_.path.filename().string(), total, progress_options);
      own_progress_->set_done(static_cast<int64_t>(start));
    } else if (own_progress_) {
      own_progress_->set_done(static_cast<int64_t>(start));
    }
    counted_offset_ = true;
    return true;
  }

  void write(const char* data, size_t size) override {
    while (size > 0) {
      ssize_t written = ::write(fd_, data, size);
      if (written < 0 && errno == EINTR) continue;
      if (written <= 0) {
        int error = errno;
        fail("cannot write ", part_, ": ", std::strerror(error),
             error == ENOSPC ? " (the disk is full: free space, or use another cache folder)" : "");
      }
      data += written;
      size -= static_cast<size_t>(written);
      received_ += static_cast<uint64_t>(written);
      if (target_.progress != nullptr) target_.progress->advance(written);
      if (own_progress_) own_progress_->advance(written);
    }
  }

  // fsyncs and closes the part file.
  void finish() {
    if (fd_ >= 0 && ::fsync(fd_) != 0) fail("cannot write ", part_, ": fsync failed: ", std::strerror(errno));
    close_file();
  }

  void discard(uint64_t bytes) {
    if (target_.progress != nullptr && counted_offset_) target_.progress->advance(-static_cast<int64_t>(bytes));
  }

  int64_t server_total() const { return server_total_; }
  uint64_t received() const { return received_; }
  void end_progress() { own_progress_.reset(); }

 private:
  void close_file() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  const HttpRequest& request_;
  const DownloadTarget& target_;
  fs::path part_;
  const HttpOptions& options_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  uint64_t received_ = 0;
  int64_t server_total_ = -1;
  bool counted_offset_ = false;
  std::unique_ptr<Progress> own_progress_;
};

}  // namespace

HttpResponse http_get(const HttpRequest& request, const HttpOptions& options, size_t max_bytes) {
  MemorySink sink(request, max_bytes);
  HttpResponse response;
  Hop hop = run_request(
      request, options,
      [] {
        return RequestSetup{{}, true};
      },
      sink, 0, &response.url);
  response.status = hop.status;
  response.headers = std::move(hop.headers);
  response.body = std::move(sink.body);
  return response;
}

HttpResponse http_send(const HttpRequest& request, const HttpBody& body, const HttpOptions& options, size_t max_bytes) {
  MemorySink sink(request, max_bytes);
  HttpResponse response;
  Hop hop = run_request(
      request, options,
      [&body] {
        RequestSetup setup;
        setup.body = &body;
        return setup;
      },
      sink, 0, &response.url);
  response.status = hop.status;
  response.headers = std::move(hop.headers);
  response.body = std::move(sink.body);
  return response;
}

uint64_t http_download(const HttpRequest& request, const DownloadTarget& target, const HttpOptions& options) {
  const std::vector<std::string> secrets = secrets_of(request);
  fs::path part = target.path;
  part += ".part";
  std::error_code ec;
  fs::create_directories(target.path.parent_path(), ec);
  if (ec) fail("cannot create the folder ", target.path.parent_path(), ": ", ec.message());
  uint64_t received = 0;
  for (int pass = 0;; ++pass) {
    uint64_t start = file_size_or_zero(part);
    if (target.expected_size >= 0 && start > static_cast<uint64_t>(target.expected_size)) {
      fs::remove(part);
      start = 0;
    }
    const bool resumed = start > 0;
    if (resumed) log::info("resuming ", request.what, " after ", format_bytes(double(start)));
    FileSink sink(request, target, part, options);
    auto setup = [&] {
      uint64_t offset = sink.prepare();
      RequestSetup s;
      if (offset > 0) s.headers.push_back(cat("Range: bytes=", offset, "-"));
      return s;
    };
    Hop hop = run_request(request, options, setup, sink, 416);
    sink.finish();
    received += sink.received();
    std::string problem;
    const uint64_t size = file_size_or_zero(part);
    if (hop.status == 416) {
      // Range not satisfiable: a complete part file left by an earlier run, or a stale one.
      if (!(size > 0 && target.expected_size >= 0 && size == static_cast<uint64_t>(target.expected_size))) {
        problem = cat("the server refused to resume at byte ", size, " (HTTP 416)");
      }
    } else if (sink.server_total() >= 0 && size != static_cast<uint64_t>(sink.server_total())) {
      problem = cat("received ", size, " bytes but the server announced ", sink.server_total());
    }
    if (problem.empty() && target.expected_size >= 0 && size != static_cast<uint64_t>(target.expected_size)) {
      problem = cat("the file has ", size, " bytes, expected ", target.expected_size);
    }
    if (problem.empty() && !target.expected_sha256.empty()) {
      std::string actual = sha256_file_hex(part);
      if (actual != target.expected_sha256) {
        problem = cat("sha256 is ", actual, ", expected ", target.expected_sha256);
      }
    }
    if (!problem.empty()) {
      fs::remove(part, ec);
      sink.discard(size);
      if (resumed && pass == 0) {
        log::warn(scrub(cat(request.what, ": ", problem, " after resuming a partial download; downloading it again"),
                        secrets));
        continue;
      }
      fail(scrub(cat(request.what, ": ", problem, " (", redact_url(request.url),
                     "); the file changed on the server while downloading, or the transfer was corrupted: run again, "
                     "and if it persists, check the source"),
                 secrets));
    }
    sink.end_progress();
    if (::rename(part.c_str(), target.path.c_str()) != 0) {
      fail("cannot rename ", part, " to ", target.path, ": ", std::strerror(errno));
    }
    fsync_directory(target.path.parent_path().string());
    return received;
  }
}

std::string url_origin(const std::string& url) {
  UrlHandle u;
  if (curl_url_set(u.url, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return "";
  return cat(lower(url_part(u.url, CURLUPART_SCHEME)), "://", lower(url_part(u.url, CURLUPART_HOST)), ":",
             url_part(u.url, CURLUPART_PORT, CURLU_DEFAULT_PORT));
}

}  // namespace fluxtrain::fetch
