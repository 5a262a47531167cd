// `fluxtrain fetch DATASET [--cache-dir DIR] [--revision REV] [--refresh]`: downloads a dataset (Hugging
// Face Hub, Kaggle, an archive URL) into the cache, or checks a local folder, and prints its local
// folder as the last line of stdout.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/tool_options.h"
#include "core/stop.h"
#include "fetch/dataset.h"

namespace fluxtrain::app {

Command add_fetch_command(CLI::App& app) {
  return add_table_command(app, command_info("fetch"), [](const ResolvedConfig& config) {
    const auto o = config.bind<FetchCommandSettings>();
    stop::install(stop::grace_seconds());  // a stop signal ends the download, its part file kept: exit 0
    fetch::FetchOptions options = o.downloads.fetch;
    options.revision = o.revision;
    options.refresh = o.refresh;
    std::filesystem::path cache =
        o.cache_dir.empty() ? dataset_cache_dir(o.downloads) : std::filesystem::path(o.cache_dir);
    std::filesystem::path root = fetch::fetch_dataset(o.dataset, cache, options);
    std::cout << root.string() << std::endl;
    return 0;
  });
}

}  // namespace fluxtrain::app
