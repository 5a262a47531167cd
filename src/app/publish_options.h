// The options that send the results off the pod (publish/publish.h): the Hub upload (HF_UPLOAD_REPO,
// upload_checkpoints, upload_states, hf_upload_private) and the webhook (NOTIFY_WEBHOOK_URL). Torch-free;
// lifted into the train table as its "publish" group.
#pragma once

#include <string>
#include <vector>

#include "app/option_builder.h"

namespace fluxtrain::app {

struct PublishSettings {
  std::string repo;                 // HF_UPLOAD_REPO: owner/name, "" = no uploads
  bool private_repo = true;         // a repository fluxtrain creates is private
  bool upload_checkpoints = false;  // every intermediate LoRA file too
  bool upload_states = false;       // every state too, and a fresh OUTPUT_PATH resumes from the Hub's newest
  std::string webhook_url;          // NOTIFY_WEBHOOK_URL (a secret)
  double wait_seconds = 1800;       // the end of the run waits at most this long for the uploads
};

std::vector<Opt<PublishSettings>> publish_options(const std::string& group = "publish");

}  // namespace fluxtrain::app
