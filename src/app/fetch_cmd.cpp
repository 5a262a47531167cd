// `fluxtrain fetch DATASET [--cache-dir DIR] [--revision REV] [--refresh]`: downloads a dataset (Hugging
// Face Hub, Kaggle, an archive URL) into the cache, or checks a local folder, and prints its local
// folder as the last line of stdout.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/environment_knobs.h"
#include "fetch/dataset.h"

namespace fluxtrain::app {

Command add_fetch_command(CLI::App& app) {
  struct Options {
    std::string dataset;
    std::string cache_dir;
    std::string revision;
    bool refresh = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "fetch", "Download a dataset (Hugging Face Hub, Kaggle, archive URL) into the cache and print its local folder");
  sub->add_option("dataset", o->dataset,
                  "a local folder, an http(s) URL of an archive or file, owner/name on the Hugging Face Hub, or "
                  "kaggle:owner/name")
      ->envname("DATASET_NAME")
      ->required();
  sub->add_option("--cache-dir", o->cache_dir,
                  "folder of the dataset cache (default: $FLUXTRAIN_CACHE/datasets or ~/.cache/fluxtrain/datasets)")
      ->envname("FLUXTRAIN_DATASET_CACHE");
  sub->add_option("--revision", o->revision,
                  "Hub: branch, tag or commit (default main); Kaggle: dataset version number (default latest)")
      ->envname("DATASET_REVISION");
  sub->add_flag(
      "--refresh", o->refresh,
      "check the source again even if the cache holds a complete copy (Hub: only changed files are downloaded)");
  return {sub, [o] {
            fetch::FetchOptions options = fetch_options_from_environment();
            options.revision = o->revision;
            options.refresh = o->refresh;
            std::filesystem::path cache =
                o->cache_dir.empty() ? default_dataset_cache_dir() : std::filesystem::path(o->cache_dir);
            std::filesystem::path root = fetch::fetch_dataset(o->dataset, cache, options);
            std::cout << root.string() << std::endl;
            return 0;
          }};
}

}  // namespace fluxtrain::app
