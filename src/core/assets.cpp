#include "core/assets.h"

#include <unistd.h>

#include <mutex>
#include <system_error>

#include "core/error.h"

namespace fluxtrain {

namespace fs = std::filesystem;

namespace {

fs::path executable_dir() {
  std::error_code error;
  fs::path exe = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::path() : exe.parent_path();
}

std::mutex user_root_mutex;
fs::path user_root;  // set_user_asset_root()

fs::path current_user_root() {
  std::lock_guard<std::mutex> lock(user_root_mutex);
  return user_root;
}

}  // namespace

void set_user_asset_root(fs::path folder) {
  std::lock_guard<std::mutex> lock(user_root_mutex);
  user_root = std::move(folder);
}

std::vector<fs::path> asset_roots() {
  std::vector<fs::path> roots;
  if (fs::path user = current_user_root(); !user.empty()) roots.push_back(std::move(user));
  if (fs::path dir = executable_dir(); !dir.empty())
    roots.push_back(dir.parent_path() / "share" / "fluxtrain" / "assets");
#ifdef FLUXTRAIN_SOURCE_ASSETS
  roots.emplace_back(FLUXTRAIN_SOURCE_ASSETS);
#endif
  return roots;
}

fs::path find_asset(std::string_view relative) {
  std::vector<fs::path> roots = asset_roots();
  std::string looked;
  for (const fs::path& root : roots) {
    fs::path candidate = root / relative;
    std::error_code error;
    if (fs::exists(candidate, error)) return candidate;
    looked += cat(looked.empty() ? "" : ", ", candidate.string());
  }
  fail("asset ", relative, " not found; looked in: ", looked.empty() ? "(nowhere)" : looked,
       current_user_root().empty() ? " ($FLUXTRAIN_ASSETS is not set)" : "",
       ". Fix: set FLUXTRAIN_ASSETS to a folder that holds ", relative,
       " (a fluxtrain checkout's assets/ folder; scripts/fetch_tokenizer_assets.sh recreates its tokenizers/)");
}

}  // namespace fluxtrain
