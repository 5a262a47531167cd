// Results leave the pod: the Hub upload (HF_UPLOAD_REPO) and the webhook (NOTIFY_WEBHOOK_URL), as one
// listener of the run's events (train/run_hooks.h).
//
// The listener runs on the training thread and only queues: one background thread sends, in order, with
// bounded retries and exponential backoff, and a failure is a warning, never the training's end. Files
// are hard-linked into OUTPUT_PATH/.hub-upload/ when queued, so that pruning (states, LoRA checkpoints)
// cannot take them away before they are sent. At the end of the run `finish` waits a bounded time for
// the queue and names what did not go out.
//
// What goes up (docs/publishing.md):
//   each LoRA checkpoint, with upload_checkpoints        {name}-step{N}.safetensors
//   each state, with upload_states                       state/step-N/{trainable,optimizer}.safetensors,
//                                                        state.json, COMPLETE — one commit, so a reader sees
//                                                        a whole state or none; the Hub's other
//                                                        states but keep_states - 1 older ones are
//                                                        deleted in the same commit
//   at the end                                           {name}.safetensors, grids/*.png, the last samples
//                                                        (samples/*.png) and README.md, the model card
// Webhook events: start, checkpoint (a LoRA written), finish (also a stopped run, "interrupted"), failure.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fetch/options.h"
#include "train/run_hooks.h"

namespace fluxtrain::publish {

// What the model card says besides the files.
struct ModelCardInfo {
  std::string base_model;    // the Hub id of the base: black-forest-labs/FLUX.1-dev
  std::string license;       // "other" with license_name, or "apache-2.0"
  std::string license_name;  // flux-1-dev-non-commercial-license
  std::string license_link;
  std::string trigger_words;                                  // comma-separated, "" = none
  std::vector<std::string> prompts;                           // the sample prompts, in the samples' order
  std::vector<std::pair<std::string, std::string>> settings;  // shown as a table
};

struct PublishConfig {
  std::string repo;  // HF_UPLOAD_REPO ("" = no uploads)
  bool upload_checkpoints = false;
  bool upload_states = false;
  int keep_states = 1;      // states kept on the Hub (the newest)
  std::string webhook_url;  // NOTIFY_WEBHOOK_URL ("" = none); a secret: never logged
  std::string page_url;     // the live page, for the webhook's messages ("" = none)
  std::string run_name;     // the LoRA's name
  std::filesystem::path output_dir;
  fetch::FetchOptions fetch;   // hf_endpoint, hf_token, http retries
  int max_tries = 5;           // per upload or post
  double backoff_seconds = 2;  // before the second try, doubled per try up to 300 s
  double wait_seconds = 1800;  // what finish() waits at most
  ModelCardInfo card;
};

// The webhook's JSON body for an event: Discord's ({"content"}) for discord.com / discordapp.com, Slack's
// ({"text"}) for hooks.slack.com, and otherwise both plus the event's fields (event, run, step,
// total_steps, loss, files, page_url, message).
std::string webhook_body(const std::string& url, const std::string& event, const nlohmann::json& fields,
                         const std::string& message);

// README.md for the repository: YAML front matter (base_model, license, tags, instance_prompt, widget with
// the sample images) and a page with the trigger words, how to use it, the settings and the samples.
// `samples` are paths in the repository, in prompt order; `ema_file` (may be empty) the LoRA's EMA file.
std::string model_card(const PublishConfig& config, const std::string& lora_file,
                       const std::vector<std::string>& samples, const std::vector<std::string>& grids, int64_t steps,
                       const std::string& ema_file = "");

class Publisher {
 public:
  explicit Publisher(PublishConfig config);
  ~Publisher();  // cancels what is still queued or in flight
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Before the training starts: the run's folder (where its files are), the LoRA's name, the card's facts.
  void set_run(const std::filesystem::path& output_dir, const std::string& run_name, ModelCardInfo card);
  bool active() const { return !config_.repo.empty() || !config_.webhook_url.empty(); }
  train::RunListener listener();
  // The run failed: the webhook's failure event (then finish()).
  void failed(const std::string& message);
  // Waits up to wait_seconds for the queue to empty; warns naming what was not sent.
  void finish();

 private:
  struct Task {
    std::string what;
    std::function<void()> run;
    std::filesystem::path staged;  // removed after the task (sent or given up)
  };
  void on_event(const train::RunEvent& event);
  void post(const std::string& event, nlohmann::json fields, const std::string& message);
  // state_name: the files are the state of that folder (step-N); the commit also deletes the Hub's other
  // state folders but the keep_states - 1 newest older ones (listed when it is sent: a new pod's states
  // replace the ones of the pods before it, and a newer one left by an abandoned run goes too).
  void upload(const std::string& what, std::vector<std::pair<std::string, std::filesystem::path>> files,
              const std::string& summary, const std::string& state_name = "");
  std::vector<std::string> states_to_delete(const std::string& state_name, int keep_older) const;
  std::filesystem::path stage(const std::filesystem::path& file, const std::string& group);
  void enqueue(Task task);
  void work();

  PublishConfig config_;
  int64_t total_steps_ = 0;
  double last_loss_ = 0;
  bool has_loss_ = false;
  std::vector<std::filesystem::path> final_files_;  // the final LoRA, then its EMA file
  std::vector<std::filesystem::path> samples_;
  int staged_count_ = 0;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Task> queue_;
  bool busy_ = false;
  std::string current_;  // the task in progress
  bool closing_ = false;
  std::atomic<bool> cancel_{false};
  std::thread thread_;
};

// A fresh pod: when OUTPUT_PATH has no state, the newest state of `repo` (state/step-N/ whose COMPLETE is
// there) is downloaded into output_dir/state/step-N, each file checked against COMPLETE's sizes and
// SHA-256s, then verified as a whole; a state that fails is reported and the next older one tried.
// Returns the folder, or "" when the repository has none (or does not exist yet).
std::filesystem::path pull_hub_state(const std::string& repo, const std::filesystem::path& output_dir,
                                     const fetch::FetchOptions& options);

}  // namespace fluxtrain::publish
