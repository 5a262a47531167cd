// The live page's server (src/monitor) over real HTTP (cpp-httplib's client on 127.0.0.1): the token,
// the cookie, file links that try to leave the run folder, bounded bodies and streams, the actions, a busy
// port; and the run folder readers (metrics as they grow, the sample names).
#include <gtest/gtest.h>
#include <httplib.h>

#include <sys/socket.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "monitor/run_folder.h"
#include "monitor/server.h"
#include "temp_dir.h"

namespace fluxtrain::monitor {
namespace {

namespace fs = std::filesystem;

const std::string kToken = "0123456789abcdef0123";

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

TEST(MonitorFolder, ResolvesOnlyRegularFilesInsideTheFolder) {
  const fs::path dir = testing::fresh_dir("monitor_resolve");
  const fs::path root = dir / "out";
  write(root / "metrics.jsonl", "{}\n");
  write(root / "samples" / "a_000002_00_42.png", "png");
  write(root / kTokenFileName, kToken);
  write(dir / "secret.txt", "outside");
  write(dir / "out2" / "x.txt", "a sibling whose name starts like the folder's");
  fs::create_symlink(dir / "secret.txt", root / "link-out.txt");
  fs::create_symlink(root / "metrics.jsonl", root / "link-in.jsonl");
  fs::create_directory_symlink(dir, root / "up");

  EXPECT_EQ(resolve_in_folder(root, "metrics.jsonl"), fs::canonical(root / "metrics.jsonl"));
  EXPECT_TRUE(resolve_in_folder(root, "samples/a_000002_00_42.png"));
  EXPECT_TRUE(resolve_in_folder(root, "link-in.jsonl"));  // a link that stays inside
  for (const char* bad : {"../secret.txt", "samples/../../secret.txt", "/etc/passwd", "link-out.txt", "up/secret.txt",
                          "../out2/x.txt", "samples", "samples/", "", ".", "./metrics.jsonl",
                          "samples//a_000002_00_42.png", "monitor-token", "nothing.txt", "samples\\..\\..\\x"})
    EXPECT_FALSE(resolve_in_folder(root, bad)) << bad;
}

TEST(MonitorFolder, SampleNames) {
  auto s = parse_sample_name("my_lora_000120_03_42.png");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->name, "my_lora");
  EXPECT_EQ(s->step, 120);
  EXPECT_EQ(s->index, 3);
  EXPECT_EQ(s->seed, 42u);
  for (const char* bad : {"x_12_03_42.png", "x_000120_3_42.png", "000120_03_42.png", "x_000120_03_42.jpg",
                          "x_000120_03_.png", "x_0001a0_03_42.png"})
    EXPECT_FALSE(parse_sample_name(bad)) << bad;
}

TEST(MonitorFolder, MetricsTailTakesWholeLinesAndSeesAReplacedFile) {
  const fs::path dir = testing::fresh_dir("monitor_tail");
  const fs::path file = dir / "metrics.jsonl";
  MetricsTail tail(file);
  EXPECT_FALSE(tail.refresh());
  {
    std::ofstream out(file, std::ios::app);
    out << "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"lo";
  }
  EXPECT_TRUE(tail.refresh());
  EXPECT_EQ(tail.size(), 1u);
  {
    std::ofstream out(file, std::ios::app);
    out << "ss\":0.4}\nnot json\n";
  }
  EXPECT_TRUE(tail.refresh());
  ASSERT_EQ(tail.size(), 3u);
  EXPECT_EQ(tail.lines_from(1)[0]["loss"], 0.4);
  EXPECT_TRUE(tail.lines_from(2)[0].is_null());  // counted, shown as nothing
  const uint64_t generation = tail.generation();
  // A resumed run rewrites the file (temp file + rename): read again from its start.
  write(dir / "new.jsonl", "{\"step\":1,\"loss\":0.9}\n");
  fs::rename(dir / "new.jsonl", file);
  EXPECT_TRUE(tail.refresh());
  EXPECT_EQ(tail.size(), 1u);
  EXPECT_NE(tail.generation(), generation);
}

struct Page {
  fs::path root;
  train::RunRequests requests;
  std::unique_ptr<MonitorServer> server;
  Page(const std::string& name, bool with_requests) {
    root = testing::fresh_dir(name) / "out";
    write(root / "metrics.jsonl", "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"loss\":0.4}\n");
    write(root / "samples" / "t_000002_00_42.png", "png bytes");
    write(root / "config.toml", "network_dim = 4\n");
    write(root / "report.html", "<script>alert(1)</script>");
    write(root / "lora.safetensors", "weights");
    write(root / kTokenFileName, kToken + "\n");
    write(root.parent_path() / "secret.txt", "outside");
    MonitorOptions o;
    o.host = "127.0.0.1";
    o.port = 0;  // any free port
    o.token = kToken;
    o.folder = root;
    o.requests = with_requests ? &requests : nullptr;
    o.poll_seconds = 0.05;
    server = std::make_unique<MonitorServer>(o);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(5, 0);
    return c;
  }
  httplib::Headers bearer() const { return {{"Authorization", "Bearer " + kToken}}; }
};

TEST(MonitorServer, EveryRequestNeedsTheToken) {
  Page page("monitor_token", false);
  auto c = page.client();
  for (const char* path : {"/", "/monitor.js", "/api/state", "/api/metrics", "/files/metrics.jsonl", "/nothing"}) {
    auto r = c.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 401) << path;
    EXPECT_EQ(r->body.find(kToken), std::string::npos);
  }
  auto wrong = c.Get("/api/state", {{"Authorization", "Bearer " + kToken + "x"}});
  EXPECT_EQ(wrong->status, 401);
  auto wrong_cookie = c.Get("/api/state", {{"Cookie", "fluxtrain_monitor=" + kToken.substr(1)}});
  EXPECT_EQ(wrong_cookie->status, 401);

  auto ok = c.Get("/api/state", page.bearer());
  ASSERT_EQ(ok->status, 200);
  const auto state = nlohmann::json::parse(ok->body);
  EXPECT_EQ(state["metrics_lines"], 2);
  EXPECT_EQ(state["actions"], false);

  // The printed link: a cookie (HttpOnly, SameSite=Strict, no Path: the prefix's folder) and a redirect
  // that drops the token from the address.
  auto link = c.Get(("/?token=" + kToken).c_str(), {{"X-Forwarded-Proto", "https"}});
  ASSERT_EQ(link->status, 303);
  EXPECT_EQ(link->get_header_value("Location"), "./");
  const std::string cookie = link->get_header_value("Set-Cookie");
  EXPECT_EQ(cookie.find("fluxtrain_monitor=" + kToken + ";"), 0u) << cookie;
  EXPECT_NE(cookie.find("HttpOnly"), std::string::npos);
  EXPECT_NE(cookie.find("SameSite=Strict"), std::string::npos);
  EXPECT_NE(cookie.find("Secure"), std::string::npos);
  EXPECT_EQ(cookie.find("Path="), std::string::npos);
  auto with_cookie = c.Get("/", {{"Cookie", "other=1; fluxtrain_monitor=" + kToken}});
  ASSERT_EQ(with_cookie->status, 200);
  EXPECT_NE(with_cookie->body.find("monitor.js"), std::string::npos);
  // Relative URLs only: nothing the page loads starts with a slash or names a host.
  EXPECT_EQ(with_cookie->body.find("src=\"/"), std::string::npos);
  EXPECT_EQ(with_cookie->body.find("href=\"/"), std::string::npos);
  EXPECT_EQ(with_cookie->body.find("http"), std::string::npos);
}

TEST(MonitorServer, FileLinksStayInTheRunFolder) {
  Page page("monitor_files", false);
  auto c = page.client();
  auto sample = c.Get("/files/samples/t_000002_00_42.png", page.bearer());
  ASSERT_EQ(sample->status, 200);
  EXPECT_EQ(sample->body, "png bytes");
  EXPECT_EQ(sample->get_header_value("Content-Type"), "image/png");
  // A report or SVG of the run folder is shown without running its scripts; weights are downloads.
  auto report = c.Get("/files/report.html", page.bearer());
  ASSERT_EQ(report->status, 200);
  EXPECT_EQ(report->get_header_value("Content-Security-Policy").rfind("sandbox", 0), 0u);
  auto lora = c.Get("/files/lora.safetensors", page.bearer());
  ASSERT_EQ(lora->status, 200);
  EXPECT_EQ(lora->body, "weights");
  EXPECT_NE(lora->get_header_value("Content-Disposition").find("attachment"), std::string::npos);
  for (const char* bad :
       {"/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/%2E%2E%2Fsecret.txt",
        "/files/samples/..%2f..%2fsecret.txt", "/files/samples", "/files/samples/", "/files/monitor-token",
        "/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/samples%2f..%2f..%2fsecret.txt"}) {
    auto r = c.Get(bad, page.bearer());
    ASSERT_TRUE(r) << bad;
    EXPECT_NE(r->status, 200) << bad;
    EXPECT_EQ(r->body.find("outside"), std::string::npos) << bad;
    EXPECT_EQ(r->body.find(kToken), std::string::npos) << bad;
  }
  auto files = nlohmann::json::parse(c.Get("/api/files", page.bearer())->body);
  for (const auto& f : files["files"]) EXPECT_NE(f["path"], kTokenFileName);
  ASSERT_EQ(files["samples"].size(), 1u);
  EXPECT_EQ(files["samples"][0]["images"][0]["step"], 2);
}

TEST(MonitorServer, ActionsAndBoundedBodies) {
  {
    Page page("monitor_no_trainer", false);
    auto c = page.client();
    EXPECT_EQ(c.Post("/api/save", page.bearer(), "", "text/plain")->status, 409);
  }
  Page page("monitor_actions", true);
  auto c = page.client();
  EXPECT_EQ(c.Post("/api/save", "", "text/plain")->status, 401);
  EXPECT_FALSE(page.requests.take_save());
  EXPECT_EQ(c.Post("/api/save", page.bearer(), "", "text/plain")->status, 202);
  EXPECT_TRUE(page.requests.take_save());
  EXPECT_EQ(c.Post("/api/sample", page.bearer(), "", "text/plain")->status, 202);
  EXPECT_TRUE(page.requests.take_sample());
  EXPECT_EQ(c.Get("/api/save", page.bearer())->status, 404);  // actions are POSTs
  auto big = c.Post("/api/save", page.bearer(), std::string(kMaxBody + 1, 'x'), "text/plain");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_EQ(c.Get("/api/metrics?from=x", page.bearer())->status, 400);
  auto metrics = nlohmann::json::parse(c.Get("/api/metrics?from=1", page.bearer())->body);
  EXPECT_EQ(metrics["lines"].size(), 1u);
  EXPECT_EQ(metrics["next"], 2);
}

TEST(MonitorServer, StreamsUpdatesAndBoundsTheirNumber) {
  Page page("monitor_stream", true);
  std::atomic<int> updates{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> readers;
  std::vector<int> statuses(kMaxStreams, 0);
  for (int i = 0; i < kMaxStreams; ++i) {
    readers.emplace_back([&, i] {
      auto c = page.client();
      auto r = c.Get("/events", page.bearer(), [&](const char* data, size_t n) {
        if (std::string(data, n).find("event: update") != std::string::npos) ++updates;
        return !done.load();
      });
      statuses[i] = r ? r->status : -1;
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (updates < kMaxStreams && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_GE(updates.load(), kMaxStreams);
  // One stream too many: refused, and a page load still gets a thread.
  auto c = page.client();
  EXPECT_EQ(c.Get("/events", page.bearer())->status, 503);
  EXPECT_EQ(c.Get("/api/state", page.bearer())->status, 200);
  // The trainer's events reach the open streams.
  const int before = updates;
  page.server->listener()({"step", 3, {}, {{"loss", 0.3}}});
  while (updates == before && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_GT(updates.load(), before);
  done = true;
  page.server->stop();  // ends the open streams
  for (auto& t : readers) t.join();
}

TEST(MonitorServer, ABusyPortIsAnErrorNamingIt) {
  Page page("monitor_busy", false);
  MonitorOptions o;
  o.host = "127.0.0.1";
  o.port = page.server->port();
  o.token = kToken;
  o.folder = page.root;
  try {
    MonitorServer second(o);
    FAIL() << "a second server on a busy port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MONITOR_PORT"), std::string::npos) << e.what();
  }
}

TEST(MonitorServer, TokenCompare) {
  EXPECT_TRUE(token_matches(kToken, kToken));
  EXPECT_FALSE(token_matches(kToken + "x", kToken));
  EXPECT_FALSE(token_matches("", ""));
  EXPECT_EQ(generate_token().size(), 32u);
  EXPECT_NE(generate_token(), generate_token());
}

}  // namespace
}  // namespace fluxtrain::monitor
