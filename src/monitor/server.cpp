#include "monitor/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/stop.h"
#include "monitor/run_folder.h"

namespace fluxtrain::monitor {
namespace {

namespace fs = std::filesystem;

struct EmbeddedAsset {
  const char* name;
  const char* body;
};
// assets/monitor/*, turned into raw strings by CMakeLists.txt (no file is read at run time, no CDN).
constexpr EmbeddedAsset kAssets[] = {
#include "monitor/embedded_assets.inc"
};

const char* asset(std::string_view name) {
  for (const auto& a : kAssets)
    if (name == a.name) return a.body;
  return nullptr;
}

constexpr const char* kCookieName = "fluxtrain_monitor";

// httplib's ThreadPool queues without bound; this one blocks the accept loop when its queue is full, so
// that what waits beyond it waits in the kernel's listen backlog (bounded) rather than in memory.
// (enqueue returns void in httplib 0.11, Debian 12's, and bool in later releases such as Ubuntu 24.04's.)
using EnqueueResult = decltype(std::declval<httplib::TaskQueue&>().enqueue(std::function<void()>()));
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool(size_t threads, size_t queue) : max_queue_(queue) {
    for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  EnqueueResult enqueue(std::function<void()> fn) override {
    std::unique_lock lock(mutex_);
    room_.wait(lock, [&] { return jobs_.size() < max_queue_ || shutdown_; });
    jobs_.push_back(std::move(fn));
    ready_.notify_one();
    return static_cast<EnqueueResult>(true);  // void, or "taken"
  }
  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      shutdown_ = true;
    }
    ready_.notify_all();
    room_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return !jobs_.empty() || shutdown_; });
        if (jobs_.empty()) return;
        fn = std::move(jobs_.front());
        jobs_.pop_front();
        room_.notify_one();
      }
      fn();
    }
  }
  size_t max_queue_;
  std::vector<std::thread> threads_;
  std::deque<std::function<void()>> jobs_;
  std::mutex mutex_;
  std::condition_variable ready_, room_;
  bool shutdown_ = false;
};

std::string cookie_value(const httplib::Request& req, std::string_view name) {
  const std::string header = req.get_header_value("Cookie");
  size_t start = 0;
  while (start < header.size()) {
    size_t end = header.find(';', start);
    if (end == std::string::npos) end = header.size();
    std::string_view item(header.data() + start, end - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    if (item.size() > name.size() && item.starts_with(name) && item[name.size()] == '=')
      return std::string(item.substr(name.size() + 1));
    start = end + 1;
  }
  return "";
}

}  // namespace

std::string generate_token() {
  std::random_device source;  // /dev/urandom (getrandom) on Linux
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (int i = 0; i < 4; ++i) {  // 128 bits
    uint32_t word = source();
    for (int j = 0; j < 4; ++j, word >>= 8) token += kHex[word & 15], token += kHex[(word >> 4) & 15];
  }
  return token;
}

bool token_matches(const std::string& given, const std::string& expected) {
  // Digests of equal length: neither the length nor the first difference shows in the time taken.
  const std::string a = sha256_hex(given), b = sha256_hex(expected);
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0 && !expected.empty();
}

struct MonitorServer::Impl {
  MonitorOptions options;
  httplib::Server server;
  std::thread listen_thread, watch_thread;
  int port = 0;

  // Two locks, so that the training thread's listener (`mutex`) never waits for file reading or for a
  // response being assembled (`folder_mutex`: the metrics lines and the file list).
  std::mutex mutex;
  std::mutex folder_mutex;
  std::condition_variable changed;
  bool stopping = false;
  uint64_t version = 1;                                // bumped on every change the page should see
  nlohmann::json progress = nlohmann::json::object();  // the trainer's newest step and its start values
  std::string files_text;                              // list_run_files, as sent
  MetricsTail metrics;
  std::atomic<int> streams{0};

  explicit Impl(MonitorOptions o) : options(std::move(o)), metrics(options.folder / "metrics.jsonl") {}

  bool authorized(const httplib::Request& req) const {
    const std::string header = req.get_header_value("Authorization");
    if (header.starts_with("Bearer ") && token_matches(header.substr(7), options.token)) return true;
    const std::string cookie = cookie_value(req, kCookieName);
    if (!cookie.empty() && token_matches(cookie, options.token)) return true;
    return req.has_param("token") && token_matches(req.get_param_value("token"), options.token);
  }

  static void refuse(httplib::Response& res) {
    res.status = 401;
    res.set_header("WWW-Authenticate", "Bearer realm=\"fluxtrain\"");
    res.set_content(
        "401: this page needs its token. Open the ?token= link that the training printed at its start (or that "
        "is in OUTPUT_PATH/monitor-token), or send MONITOR_TOKEN as `Authorization: Bearer TOKEN`.\n",
        "text/plain; charset=utf-8");
  }

  // Reads the folder (on the watcher's thread); true when something the page shows changed.
  bool look() {
    nlohmann::json listed = list_run_files(options.folder);
    std::string text = listed.dump();
    {
      std::lock_guard lock(folder_mutex);
      const bool grew = metrics.refresh();
      if (text == files_text && !grew) return false;
      files_text = std::move(text);
    }
    std::lock_guard lock(mutex);
    ++version;
    return true;
  }

  void watch() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      lock.unlock();
      bool news = false;
      try {
        news = look();
      } catch (const std::exception& e) {
        log::debug("live page: reading ", options.folder.string(), ": ", e.what());
      }
      lock.lock();
      if (news) changed.notify_all();
      changed.wait_for(lock, std::chrono::duration<double>(options.poll_seconds));
    }
  }

  nlohmann::json state_json() {
    nlohmann::json out = {{"run", options.run_info},
                          {"actions", options.requests != nullptr},
                          {"folder", options.folder.filename().string()}};
    {
      std::lock_guard lock(folder_mutex);
      out["metrics_lines"] = metrics.size();
      out["metrics_generation"] = metrics.generation();
      if (const nlohmann::json* last = metrics.last()) out["last_metrics"] = *last;
    }
    std::lock_guard lock(mutex);
    out["version"] = version;
    out["progress"] = progress;
    return out;
  }

  void on_event(const train::RunEvent& event) {
    // The training thread: a small copy under the lock, a notify, nothing else.
    std::lock_guard lock(mutex);
    if (event.kind == "start") {
      progress["total_steps"] = event.data.value("total_steps", 0);
      progress["steps_per_epoch"] = event.data.value("steps_per_epoch", 0);
      progress["first_step"] = event.step;
      progress["state"] = "training";
      progress["started"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    } else if (event.kind == "step") {
      progress["step"] = event.step;
      progress["last"] = event.data;
    } else if (event.kind == "end") {
      progress["state"] = event.data.value("interrupted", false) ? "stopped" : "finished";
      progress["step"] = event.step;
    } else {
      progress["last_" + event.kind] = event.step;
    }
    ++version;
    changed.notify_all();
  }

  void serve_file(const httplib::Request& req, httplib::Response& res) {
    const auto file = resolve_in_folder(options.folder, req.matches[1].str());
    if (!file) {
      res.status = 404;
      res.set_content("404: no such file in the run folder\n", "text/plain; charset=utf-8");
      return;
    }
    std::error_code ec;
    const uintmax_t size = fs::file_size(*file, ec);
    if (ec) {
      res.status = 404;
      return;
    }
    auto in = std::make_shared<std::ifstream>(*file, std::ios::binary);
    const std::string type = content_type_of(*file);
    res.set_header("X-Content-Type-Options", "nosniff");
    if (type == "application/octet-stream")
      res.set_header("Content-Disposition", "attachment; filename=\"" + file->filename().string() + "\"");
    // Files of the run folder are shown, never run as this page's code (an SVG or HTML may hold scripts): no
    // scripts, nothing loaded from elsewhere; allow-same-origin keeps the cookie on the images a report shows.
    if (type.starts_with("image/svg") || type.starts_with("text/html"))
      res.set_header("Content-Security-Policy",
                     "sandbox allow-same-origin; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'");
    res.set_content_provider(static_cast<size_t>(size), type,
                             [in](size_t offset, size_t length, httplib::DataSink& sink) {
                               char buffer[1 << 16];
                               in->seekg(static_cast<std::streamoff>(offset));
                               in->read(buffer, static_cast<std::streamsize>(std::min(length, sizeof buffer)));
                               const auto got = in->gcount();
                               if (got <= 0) return false;
                               return sink.write(buffer, static_cast<size_t>(got));
                             });
  }

  void stream(const httplib::Request&, httplib::Response& res) {
    if (streams.fetch_add(1) >= kMaxStreams) {
      streams.fetch_sub(1);
      res.status = 503;
      res.set_header("Retry-After", "10");
      res.set_content("503: too many live pages open at once\n", "text/plain; charset=utf-8");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // nginx-style proxies: do not buffer the stream
    auto seen = std::make_shared<uint64_t>(0);
    auto sent = std::make_shared<std::chrono::steady_clock::time_point>();
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, seen, sent](size_t, httplib::DataSink& sink) {
          std::unique_lock lock(mutex);
          // At most two messages a second, however fast the steps (the page fetches what changed).
          changed.wait_until(lock, *sent + std::chrono::milliseconds(500), [&] { return stopping; });
          changed.wait_for(lock, std::chrono::seconds(15), [&] { return stopping || version != *seen; });
          if (stopping) {
            lock.unlock();
            sink.done();
            return true;
          }
          std::string message;
          if (version != *seen) {
            *seen = version;
            *sent = std::chrono::steady_clock::now();
            lock.unlock();
            message = "event: update\ndata: " + state_json().dump() + "\n\n";
          } else {
            lock.unlock();
            message = ": still here\n\n";  // keeps proxies from closing an idle stream
          }
          return sink.is_writable() && sink.write(message.data(), message.size());
        },
        [this](bool) { streams.fetch_sub(1); });
  }

  void action(const httplib::Request& req, httplib::Response& res) {
    const std::string what = req.matches[1].str();
    if (options.requests == nullptr) {
      res.status = 409;
      res.set_content(R"({"error":"no training in this process: the buttons work on the page that train serves"})",
                      "application/json");
      return;
    }
    if (what == "save") {
      options.requests->ask_save();
    } else if (what == "sample") {
      options.requests->ask_sample();
    } else {
      // The signal's path: the step in progress ends, a state is saved, the run exits 0.
      stop::request(SIGTERM);
    }
    log::info("live page: ", what, " asked for");
    res.status = 202;
    res.set_content(nlohmann::json{{"asked", what}}.dump(), "application/json");
  }

  void routes() {
    server.new_task_queue = [] { return new BoundedPool(kWorkerThreads, 2 * kWorkerThreads); };
    // httplib's default adds SO_REUSEPORT, with which a second page (another training) would share the port
    // and take half of its requests; SO_REUSEADDR alone lets a restarted run have it back at once.
    server.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    server.set_payload_max_length(kMaxBody);
    server.set_read_timeout(5, 0);
    server.set_write_timeout(5, 0);
    server.set_keep_alive_timeout(2);
    server.set_keep_alive_max_count(100);
    server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      res.status = 500;
      res.set_content("500: the page failed on this request\n", "text/plain; charset=utf-8");
    });
    server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Cache-Control", "no-store");
      res.set_header("Referrer-Policy", "no-referrer");
      res.set_header("X-Frame-Options", "DENY");
      if (authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
      refuse(res);
      return httplib::Server::HandlerResponse::Handled;
    });
    server.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.has_param("token")) {
        // The printed link: the token becomes a cookie and leaves the address bar (and the history).
        // No Path attribute: the cookie's path is then the request's folder, i.e. the prefix a proxy put
        // in front; Secure when the proxy says the browser came over TLS.
        std::string cookie = std::string(kCookieName) + "=" + req.get_param_value("token") +
                             "; HttpOnly; SameSite=Strict; Max-Age=2592000";
        if (req.get_header_value("X-Forwarded-Proto") == "https") cookie += "; Secure";
        res.set_header("Set-Cookie", cookie);
        res.set_redirect("./", 303);
        return;
      }
      res.set_content(asset("index.html"), "text/html; charset=utf-8");
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                     "connect-src 'self'; frame-ancestors 'none'");
    });
    server.Get("/monitor.js", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(asset("monitor.js"), "text/javascript; charset=utf-8");
    });
    server.Get("/monitor.css", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(asset("monitor.css"), "text/css; charset=utf-8");
    });
    server.Get("/api/state", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(state_json().dump(), "application/json");
    });
    server.Get("/api/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      size_t from = 0;
      if (req.has_param("from")) {
        const std::string text = req.get_param_value("from");
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), from);
        if (ec != std::errc() || end != text.data() + text.size()) {
          res.status = 400;
          res.set_content("400: from must be a line number\n", "text/plain; charset=utf-8");
          return;
        }
      }
      std::lock_guard lock(folder_mutex);
      res.set_content(nlohmann::json{{"from", from},
                                     {"generation", metrics.generation()},
                                     {"lines", metrics.lines_from(from)},
                                     {"next", metrics.size()}}
                          .dump(),
                      "application/json");
    });
    server.Get("/api/files", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard lock(folder_mutex);
      res.set_content(files_text.empty() ? "{}" : files_text, "application/json");
    });
    server.Get("/api/details", [this](const httplib::Request&, httplib::Response& res) {
      std::string config;
      if (auto file = resolve_in_folder(options.folder, "config.toml")) {
        std::ifstream in(*file);
        config.assign(std::istreambuf_iterator<char>(in), {});
      }
      std::string plan = options.dataset_plan;
      if (plan.empty())
        if (auto file = resolve_in_folder(options.folder, "dataset-plan.txt")) {
          std::ifstream in(*file);
          plan.assign(std::istreambuf_iterator<char>(in), {});
        }
      res.set_content(nlohmann::json{{"config", config}, {"dataset_plan", plan}}.dump(), "application/json");
    });
    server.Get("/files/(.+)", [this](const httplib::Request& req, httplib::Response& res) { serve_file(req, res); });
    server.Get("/events", [this](const httplib::Request& req, httplib::Response& res) { stream(req, res); });
    server.Post("/api/(save|sample|stop)",
                [this](const httplib::Request& req, httplib::Response& res) { action(req, res); });
  }
};

MonitorServer::MonitorServer(MonitorOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Impl& s = *impl_;
  if (s.options.token.empty()) fail("internal: the live page has no token");
  s.routes();
  if (s.options.port == 0) {
    s.port = s.server.bind_to_any_port(s.options.host);
    if (s.port < 0) fail("the live page cannot listen on ", s.options.host, " (MONITOR_HOST)");
  } else {
    if (!s.server.bind_to_port(s.options.host, s.options.port))
      fail("the live page cannot listen on ", s.options.host, ":", s.options.port,
           " (MONITOR_PORT): the port is in use (another training or page?) or not allowed; choose another "
           "MONITOR_PORT, or 0 for no page");
    s.port = s.options.port;
  }
  s.look();
  s.listen_thread = std::thread([&s] { s.server.listen_after_bind(); });
  // httplib's stop() does nothing before the loop runs: wait for it, so that a stop right after the start
  // is not lost (and the listening thread with it).
  for (int i = 0; i < 5000 && !s.server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.watch_thread = std::thread([&s] { s.watch(); });
}

MonitorServer::~MonitorServer() {
  stop();
}

void MonitorServer::stop() {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mutex);
    if (s.stopping) return;
    s.stopping = true;
  }
  s.changed.notify_all();
  s.server.stop();
  if (s.listen_thread.joinable()) s.listen_thread.join();
  if (s.watch_thread.joinable()) s.watch_thread.join();
}

int MonitorServer::port() const {
  return impl_->port;
}

train::RunListener MonitorServer::listener() {
  return [impl = impl_.get()](const train::RunEvent& event) { impl->on_event(event); };
}

}  // namespace fluxtrain::monitor
