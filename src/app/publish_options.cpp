#include "app/publish_options.h"

#include "core/strings.h"
#include "fetch/hub_upload.h"

namespace fluxtrain::app {

std::vector<Opt<PublishSettings>> publish_options(const std::string& group) {
  using S = PublishSettings;
  return {
      Opt<S>("hf_upload_repo", kString, group, "",
             "A Hugging Face model repository (owner/name) that receives the final LoRA, the sample grid, the last "
             "samples and a model card at the end (with HF_TOKEN, which needs write access; the repository is "
             "created when missing). Uploads run beside the training and never stop it.")
          .env("HF_UPLOAD_REPO")
          .check([](const OptionValue& v) -> std::string {
            const std::string& repo = std::get<std::string>(v);
            return repo.empty() ? "" : fetch::hub_repo_id_problem(repo);
          })
          .allowed("owner/name, e.g. alice/my-flux-lora")
          .safe_on_resume()
          .to(&S::repo),
      Opt<S>("hf_upload_private", kBool, group, "true",
             "A repository that HF_UPLOAD_REPO creates is private (an existing one keeps its visibility).")
          .safe_on_resume()
          .to(&S::private_repo),
      Opt<S>("upload_checkpoints", kBool, group, "false",
             "Also upload every intermediate LoRA file (save_every_n_steps / epochs) when it is written.")
          .safe_on_resume()
          .to(&S::upload_checkpoints),
      Opt<S>("upload_states", kBool, group, "false",
             "Also upload every training state (state/step-N/, verified: a commit holds a whole state or none; the "
             "Hub keeps keep_last_n_states of them), and let a fresh pod whose OUTPUT_PATH has no state continue "
             "from the newest one on the Hub: a preempted Spot pod carries on in another datacenter.")
          .safe_on_resume()
          .to(&S::upload_states),
      Opt<S>("notify_webhook_url", kString, group, "",
             "A URL that gets a JSON POST when the run starts, writes a checkpoint, finishes or fails (Discord and "
             "Slack webhooks get their own bodies). A secret: never printed.")
          .env("NOTIFY_WEBHOOK_URL")
          .secret()
          .check([](const OptionValue& v) -> std::string {
            const std::string url = lower(std::get<std::string>(v));
            return url.empty() || url.starts_with("https://") || url.starts_with("http://") ? "" : "not an http(s) URL";
          })
          .allowed("an http(s) URL")
          .safe_on_resume()
          .to(&S::webhook_url),
      Opt<S>("publish_wait_seconds", kReal, group, "1800",
             "At the end of the run, how long to wait at most for the uploads and notifications still queued.")
          .env("FLUXTRAIN_PUBLISH_WAIT_SECONDS")
          .min(0)
          .safe_on_resume()
          .to(&S::wait_seconds),
  };
}

}  // namespace fluxtrain::app
