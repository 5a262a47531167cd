// What a download from the Hugging Face Hub, Kaggle or a URL is allowed to do and with which
// credentials (torch-free): shared by dataset fetches (fetch/dataset.h) and model downloads
// (`fluxtrain fetch-models`). Plain values with their defaults: the app fills them from the environment
// (HF_TOKEN, KAGGLE_KEY, ...: the download options of app/knob_options.h); nothing under src/fetch reads it.
#pragma once

#include <string>

#include "fetch/archive.h"
#include "fetch/http.h"

namespace fluxtrain::fetch {

struct FetchOptions {
  // Hub: a branch, tag or commit (default "main"). Kaggle: a dataset version number (default: the
  // latest). Not allowed for URLs and local folders.
  std::string revision;
  // Check the source again even when the cache holds a complete copy (Hub: only changed files are
  // downloaded again).
  bool refresh = false;
  std::string hf_endpoint = "https://huggingface.co";
  std::string hf_token;
  // DATASET_HOST, the seed's variable: a bare or kaggle: "owner/name" is downloaded as the zip
  // "<kaggle_download>/<owner>/<name>" (Kaggle's download API; fetch/kaggle.h). KAGGLE_API_ENDPOINT sets it
  // to "<endpoint>/api/v1/datasets/download" unless DATASET_HOST is given.
  std::string kaggle_download = "https://www.kaggle.com/api/v1/datasets/download";
  std::string kaggle_username;
  std::string kaggle_key;
  int parallel_downloads = 8;  // Hub files fetched at once
  HttpOptions http;
  ArchiveLimits limits;
};

}  // namespace fluxtrain::fetch
