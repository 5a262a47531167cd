#include "publish/publish.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/strings.h"
#include "fetch/http.h"
#include "fetch/hub.h"
#include "fetch/hub_upload.h"
#include "train/state.h"

namespace fluxtrain::publish {
namespace fs = std::filesystem;
using json = nlohmann::json;
namespace {

std::string host_of(const std::string& url) {
  const std::string origin = fetch::url_origin(url);  // scheme://host:port
  const size_t start = origin.find("://");
  if (start == std::string::npos) return "";
  const std::string rest = origin.substr(start + 3);
  return rest.substr(0, rest.rfind(':'));
}

bool host_is(const std::string& host, const std::string& domain) {
  return host == domain || host.ends_with("." + domain);
}

// A YAML scalar: a JSON string is one.
std::string yaml_text(const std::string& text) {
  return json(text).dump();
}

std::string markdown_cell(std::string text) {
  for (char& c : text) {
    if (c == '|' || c == '\n') c = ' ';
  }
  return text;
}

}  // namespace

std::string webhook_body(const std::string& url, const std::string& event, const json& fields,
                         const std::string& message) {
  const std::string host = host_of(url);
  if (host_is(host, "discord.com") || host_is(host, "discordapp.com")) {
    // Discord's execute-webhook: "content" up to 2000 characters.
    return json{{"content", message.substr(0, 1990)}, {"username", "fluxtrain"}}.dump();
  }
  if (host == "hooks.slack.com") return json{{"text", message}}.dump();
  json body = fields;
  body["event"] = event;
  body["text"] = message;
  body["content"] = message.substr(0, 1990);
  return body.dump();
}

std::string model_card(const PublishConfig& config, const std::string& lora_file,
                       const std::vector<std::string>& samples, const std::vector<std::string>& grids, int64_t steps,
                       const std::string& ema_file) {
  const ModelCardInfo& card = config.card;
  std::ostringstream out;
  out << "---\n";
  if (!card.base_model.empty()) out << "base_model: " << yaml_text(card.base_model) << "\n";
  if (!card.license.empty()) out << "license: " << yaml_text(card.license) << "\n";
  if (!card.license_name.empty()) out << "license_name: " << yaml_text(card.license_name) << "\n";
  if (!card.license_link.empty()) out << "license_link: " << yaml_text(card.license_link) << "\n";
  out << "tags:\n- text-to-image\n- flux\n- lora\n- diffusers\n- template:sd-lora\n- fluxtrain\n";
  if (!card.trigger_words.empty()) out << "instance_prompt: " << yaml_text(card.trigger_words) << "\n";
  if (!samples.empty()) {
    out << "widget:\n";
    for (size_t i = 0; i < samples.size(); ++i) {
      out << "- text: " << yaml_text(i < card.prompts.size() ? card.prompts[i] : "") << "\n";
      out << "  output:\n    url: " << yaml_text(samples[i]) << "\n";
    }
  }
  out << "---\n\n";
  out << "# " << config.run_name << "\n\n";
  out << "A LoRA for [" << card.base_model << "](https://huggingface.co/" << card.base_model << "), trained with "
      << "fluxtrain for " << steps << " steps.\n\n";
  out << "## Trigger words\n\n";
  if (card.trigger_words.empty()) {
    out << "None: the captions had no trigger words (class tokens).\n\n";
  } else {
    out << "Use `" << card.trigger_words << "` in the prompt.\n\n";
  }
  out << "## Files\n\n- [`" << lora_file << "`](./" << lora_file
      << "): the LoRA in kohya's format (ComfyUI, Forge, diffusers' `load_lora_weights`).\n";
  if (!ema_file.empty())
    out << "- [`" << ema_file << "`](./" << ema_file
        << "): the exponential moving average of the LoRA's weights over the run (ema_decay), same format.\n";
  for (const auto& grid : grids) out << "- [`" << grid << "`](./" << grid << "): the samples of every checkpoint.\n";
  out << "\n## Use with diffusers\n\n```python\nimport torch\nfrom diffusers import FluxPipeline\n\n"
      << "pipe = FluxPipeline.from_pretrained(" << yaml_text(card.base_model)
      << ", torch_dtype=torch.bfloat16).to(\"cuda\")\n"
      << "pipe.load_lora_weights(" << yaml_text(config.repo) << ", weight_name=" << yaml_text(lora_file) << ")\n"
      << "image = pipe(" << yaml_text(card.trigger_words.empty() ? "a photo" : card.trigger_words + ", a photo")
      << ").images[0]\n```\n\n";
  if (!card.settings.empty()) {
    out << "## Training settings\n\n| setting | value |\n|---|---|\n";
    for (const auto& [key, value] : card.settings)
      out << "| " << markdown_cell(key) << " | " << markdown_cell(value) << " |\n";
    out << "\n";
  }
  if (!samples.empty()) {
    out << "## Samples\n\n";
    for (size_t i = 0; i < samples.size(); ++i) {
      out << "![" << markdown_cell(i < card.prompts.size() ? card.prompts[i] : "sample") << "](./" << samples[i]
          << ")\n";
    }
  }
  return out.str();
}

Publisher::Publisher(PublishConfig config) : config_(std::move(config)) {
  // The sender keeps going through a stop: the state a stopping run saves is what a new pod needs.
  config_.fetch.http.abort_on_stop = false;
  config_.fetch.http.cancel = &cancel_;
  config_.fetch.http.progress = false;
  if (active()) thread_ = std::thread([this] { work(); });
}

Publisher::~Publisher() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
  }
  cancel_ = true;
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::error_code ec;
  if (!config_.output_dir.empty()) fs::remove_all(config_.output_dir / ".hub-upload", ec);
}

void Publisher::set_run(const fs::path& output_dir, const std::string& run_name, ModelCardInfo card) {
  config_.output_dir = output_dir;
  config_.run_name = run_name;
  config_.card = std::move(card);
}

train::RunListener Publisher::listener() {
  return [this](const train::RunEvent& event) { on_event(event); };
}

void Publisher::enqueue(Task task) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(task));
  }
  changed_.notify_all();
}

void Publisher::work() {
  while (true) {
    Task task;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty() || cancel_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      current_ = task.what;
    }
    double wait = config_.backoff_seconds;
    for (int attempt = 1; attempt <= config_.max_tries && !cancel_; ++attempt) {
      try {
        task.run();
        break;
      } catch (...) {
        // Whatever it was (an Error, a filesystem error, anything else): never the training's end.
        std::string what = "an unknown error";
        try {
          throw;
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        if (cancel_) break;
        if (attempt == config_.max_tries) {
          log::warn(task.what, " failed after ", attempt, " tries, given up (the training goes on): ", what);
          break;
        }
        log::warn(task.what, " failed (try ", attempt, " of ", config_.max_tries, "; again in ", wait, " s): ", what);
        std::unique_lock lock(mutex_);
        changed_.wait_for(lock, std::chrono::duration<double>(wait), [&] { return cancel_.load(); });
        wait = std::min(300.0, std::max(wait * 2, 0.0));
      }
    }
    std::error_code ec;
    if (!task.staged.empty()) fs::remove_all(task.staged, ec);
    {
      std::lock_guard lock(mutex_);
      busy_ = false;
    }
    changed_.notify_all();
  }
}

void Publisher::finish() {
  if (!thread_.joinable()) return;
  std::unique_lock lock(mutex_);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(config_.wait_seconds);
  if (!queue_.empty() || busy_)
    log::info("waiting for the uploads and notifications to go out (at most ", config_.wait_seconds, " s)");
  changed_.wait_until(lock, until, [&] { return queue_.empty() && !busy_; });
  std::vector<std::string> left;
  for (const Task& task : queue_) left.push_back(task.what);
  if (busy_) left.insert(left.begin(), current_ + " (in progress)");
  closing_ = true;
  lock.unlock();
  cancel_ = !left.empty();
  changed_.notify_all();
  thread_.join();
  if (!left.empty()) {
    log::warn("not sent after ", config_.wait_seconds, " s (FLUXTRAIN_PUBLISH_WAIT_SECONDS): ", join(left, "; "),
              ". The files are in ", config_.output_dir.string());
  }
}

void Publisher::post(const std::string& event, json fields, const std::string& message) {
  if (config_.webhook_url.empty()) return;
  fields["run"] = config_.run_name;
  fields["total_steps"] = total_steps_;
  if (has_loss_) fields["loss"] = last_loss_;
  if (!config_.page_url.empty()) fields["page_url"] = config_.page_url;
  std::string text = cat("fluxtrain ", config_.run_name, ": ", message);
  if (!config_.page_url.empty()) text += " — " + config_.page_url;
  const std::string body = webhook_body(config_.webhook_url, event, fields, text);
  const std::string host = host_of(config_.webhook_url);
  enqueue({cat("the webhook's ", event, " notification (to ", host, ")"),
           [this, body, host] {
             fetch::HttpRequest request;
             request.url = config_.webhook_url;
             request.secret_url = true;
             request.what = cat("the webhook (", host, ")");
             fetch::HttpBody post_body;
             post_body.content_type = "application/json";
             post_body.data = body;
             fetch::http_send(request, post_body, config_.fetch.http);
           },
           {}});
}

fs::path Publisher::stage(const fs::path& file, const std::string& group) {
  const fs::path dir = config_.output_dir / ".hub-upload" / group;
  fs::create_directories(dir);
  const fs::path target = dir / file.filename();
  std::error_code ec;
  fs::remove(target, ec);
  fs::create_hard_link(file, target, ec);
  if (ec) fs::copy_file(file, target, fs::copy_options::overwrite_existing);
  return target;
}

void Publisher::upload(const std::string& what, std::vector<std::pair<std::string, fs::path>> files,
                       const std::string& summary, const std::string& state_name) {
  if (config_.repo.empty()) return;
  const std::string group = std::to_string(++staged_count_);
  fetch::HubCommit commit;
  commit.repo = config_.repo;
  commit.summary = summary;
  for (auto& [path, local] : files) {
    fetch::HubUploadFile f;
    f.path = path;
    f.local = stage(local, group);
    commit.files.push_back(std::move(f));
  }
  const int keep_older = std::max(1, config_.keep_states) - 1;
  enqueue({cat("the upload of ", what, " to ", config_.repo),
           [this, commit, what, state_name, keep_older]() mutable {
             if (!state_name.empty()) commit.deleted_folders = states_to_delete(state_name, keep_older);
             const auto started = std::chrono::steady_clock::now();
             const fetch::HubCommitResult r = fetch::hub_commit(commit, config_.fetch);
             const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
             log::info(
                 "uploaded ", what, " to ", config_.repo, " (", format_bytes(double(r.bytes_sent)), " in ", seconds,
                 " s", r.lfs_present > 0 ? cat("; ", r.lfs_present, " file(s) the Hub had already") : std::string(),
                 commit.deleted_folders.empty() ? std::string() : cat("; removed ", join(commit.deleted_folders, ", ")),
                 ")", r.commit_url.empty() ? "" : ": " + r.commit_url);
           },
           config_.output_dir / ".hub-upload" / group});
}

std::vector<std::string> Publisher::states_to_delete(const std::string& state_name, int keep_older) const {
  fetch::HubListing listing;
  listing.type = fetch::HubRepoType::model;
  listing.repo = config_.repo;
  listing.folder = "state";
  std::set<std::string, std::greater<>> folders;  // step-N names sort by step (zero-padded)
  try {
    for (const auto& f : fetch::list_hub_files(listing, config_.fetch)) {
      const size_t slash = f.path.find('/', 6);
      if (f.path.starts_with("state/step-") && slash != std::string::npos) folders.insert(f.path.substr(6, slash - 6));
    }
  } catch (const fetch::HttpStatusError& e) {
    if (!e.not_found) throw;
  }
  std::vector<std::string> out;
  int kept = 0;
  for (const auto& name : folders) {
    if (name == state_name) continue;
    if (name < state_name && kept < keep_older) {
      ++kept;
      continue;
    }
    out.push_back("state/" + name);
  }
  return out;
}

void Publisher::on_event(const train::RunEvent& event) {
  if (event.kind == "start") {
    total_steps_ = event.data.value("total_steps", int64_t{0});
    const int64_t first = event.data.value("first_step", int64_t{0});
    post("start", {{"step", first}},
         first > 0 ? cat("resumed at step ", first, " of ", total_steps_) : cat("started, ", total_steps_, " steps"));
  } else if (event.kind == "step") {
    if (event.data.contains("loss") && event.data["loss"].is_number()) {
      last_loss_ = event.data["loss"].get<double>();
      has_loss_ = std::isfinite(last_loss_);
    }
  } else if (event.kind == "model" && !event.files.empty()) {
    // The LoRA file, then its EMA file when there is one: both go where the LoRA goes.
    if (event.data.value("final", false)) {
      final_files_ = event.files;
      return;  // uploaded with the model card at the end
    }
    std::vector<std::string> names;
    std::vector<std::pair<std::string, fs::path>> files;
    for (const auto& file : event.files) {
      names.push_back(file.filename().string());
      files.emplace_back(names.back(), file);
    }
    const std::string listed = join(names, ", ");
    post("checkpoint", {{"step", event.step}, {"files", names}},
         cat("checkpoint at step ", event.step, " of ", total_steps_, ": ", listed,
             has_loss_ ? cat(", loss ", last_loss_) : std::string()));
    if (config_.upload_checkpoints) upload(listed, std::move(files), cat("fluxtrain: checkpoint at step ", event.step));
  } else if (event.kind == "state" && config_.upload_states && !event.files.empty()) {
    const fs::path dir = event.files.front();
    const std::string name = dir.filename().string();
    std::vector<std::pair<std::string, fs::path>> files;
    // COMPLETE last: the commit is atomic anyway, and a reader takes only folders that have it.
    for (const char* file : {"trainable.safetensors", "optimizer.safetensors", "state.json", "COMPLETE"}) {
      if (fs::exists(dir / file)) files.emplace_back("state/" + name + "/" + file, dir / file);
    }
    upload("the state of step " + std::to_string(event.step), std::move(files),
           cat("fluxtrain: state at step ", event.step), name);
  } else if (event.kind == "samples") {
    samples_ = event.files;
  } else if (event.kind == "end") {
    const bool interrupted = event.data.value("interrupted", false);
    if (!config_.repo.empty() && !interrupted && !final_files_.empty()) {
      std::vector<std::pair<std::string, fs::path>> files;
      const fs::path lora = final_files_.front();
      for (const auto& file : final_files_) files.emplace_back(file.filename().string(), file);
      std::vector<std::string> grids, samples;
      std::error_code ec;
      if (fs::is_directory(config_.output_dir / "grids", ec)) {
        std::vector<fs::path> found;
        for (const auto& entry : fs::directory_iterator(config_.output_dir / "grids", ec))
          if (entry.path().extension() == ".png") found.push_back(entry.path());
        // The newest of each kind (samples-{step}.png, loss-{step}.png: the names sort by step).
        std::sort(found.begin(), found.end());
        std::map<std::string, fs::path> newest;
        for (const auto& g : found) {
          const std::string name = g.filename().string();
          newest[name.substr(0, name.find('-'))] = g;
        }
        for (const auto& [kind, g] : newest) {
          grids.push_back("grids/" + g.filename().string());
          files.emplace_back(grids.back(), g);
        }
      }
      for (const auto& s : samples_) {
        if (!fs::exists(s)) continue;
        samples.push_back("samples/" + s.filename().string());
        files.emplace_back(samples.back(), s);
      }
      const std::string card =
          model_card(config_, lora.filename().string(), samples, grids, event.step,
                     final_files_.size() > 1 ? final_files_[1].filename().string() : std::string());
      const fs::path card_file = config_.output_dir / ".hub-upload" / "README.md";
      fs::create_directories(card_file.parent_path());
      std::ofstream(card_file, std::ios::binary) << card;
      files.emplace_back("README.md", card_file);
      upload("the LoRA " + lora.filename().string() + " and its model card", std::move(files),
             cat("fluxtrain: ", config_.run_name, " after ", event.step, " steps"));
    }
    json final_names = json::array();
    for (const auto& file : final_files_) final_names.push_back(file.filename().string());
    post("finish",
         {{"step", event.step},
          {"interrupted", interrupted},
          {"files", final_names}},
         interrupted
             ? cat("stopped at step ", event.step, " of ", total_steps_, " (a restart resumes from its state)")
             : cat("finished, ", event.step, " steps", has_loss_ ? cat(", last loss ", last_loss_) : std::string(),
                   config_.repo.empty() ? std::string() : ", https://huggingface.co/" + config_.repo));
  }
}

void Publisher::failed(const std::string& message) {
  post("failure", {{"error", message}}, "failed: " + message);
}

fs::path pull_hub_state(const std::string& repo, const fs::path& output_dir, const fetch::FetchOptions& options) {
  fetch::HubListing listing;
  listing.type = fetch::HubRepoType::model;
  listing.repo = repo;
  listing.folder = "state";
  std::vector<fetch::HubFile> files;
  try {
    files = fetch::list_hub_files(listing, options);
  } catch (const fetch::HttpStatusError& e) {
    if (!e.not_found) throw;
    log::info("no state on the Hub in ", repo, " (", e.status == 404 ? "no such repository or folder yet" : "not found",
              ")");
    return {};
  }
  // step-N folder -> its files
  std::map<std::string, std::map<std::string, fetch::HubFile>, std::greater<>> states;
  for (const auto& f : files) {
    const std::string rest = f.path.substr(std::string("state/").size());
    const size_t slash = rest.find('/');
    if (!f.path.starts_with("state/step-") || slash == std::string::npos ||
        rest.find('/', slash + 1) != std::string::npos)
      continue;
    states[rest.substr(0, slash)][rest.substr(slash + 1)] = f;
  }
  for (const auto& [name, entries] : states) {
    if (!entries.count("COMPLETE")) continue;
    const fs::path tmp = output_dir / "state" / cat(".", name, ".tmp-", ::getpid());
    const fs::path final_dir = output_dir / "state" / name;
    std::error_code ec;
    fs::remove_all(tmp, ec);
    try {
      fs::create_directories(tmp);
      log::info("a fresh OUTPUT_PATH: pulling the newest state from the Hub, ", repo, "/state/", name);
      auto download = [&](const fetch::HubFile& f, int64_t size, const std::string& sha256) {
        fetch::HttpRequest request;
        request.url = fetch::hub_file_url(fetch::HubRepoType::model, repo, "main", f.path, options);
        request.auth = fetch::hub_auth(options);
        request.what = cat("'", f.path, "' of Hugging Face model ", repo);
        fetch::DownloadTarget target;
        target.path = tmp / fs::path(f.path).filename();
        target.expected_size = size;
        target.expected_sha256 = sha256;
        fetch::http_download(request, target, options.http);
      };
      const fetch::HubFile& marker = entries.at("COMPLETE");
      download(marker, marker.size, marker.sha256);
      std::ifstream in(tmp / "COMPLETE");
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      check_json_depth(text, "COMPLETE");
      const json complete = json::parse(text, nullptr, false);
      if (!complete.is_object() || !complete.contains("files") || !complete["files"].is_object())
        fail("its COMPLETE does not list the files with their sizes and SHA-256s");
      for (const auto& [file, info] : complete["files"].items()) {
        auto it = entries.find(file);
        if (it == entries.end()) fail("'", file, "' (listed in its COMPLETE) is not on the Hub");
        download(it->second, info.value("size", int64_t{-1}), info.value("sha256", std::string()));
      }
      const std::string wrong = train::verify_state(tmp);
      if (!wrong.empty()) fail(wrong);
      fs::remove_all(final_dir, ec);
      fs::rename(tmp, final_dir);
      log::info("pulled ", repo, "/state/", name, " into ", final_dir.string(), " (verified)");
      return final_dir;
    } catch (const Error& e) {
      fs::remove_all(tmp, ec);
      log::warn("the state ", name, " on the Hub (", repo, ") cannot be used: ", e.what(), "; trying an older one");
    }
  }
  log::info("no complete state on the Hub in ", repo);
  return {};
}

}  // namespace fluxtrain::publish
