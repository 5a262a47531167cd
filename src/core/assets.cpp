#include "core/assets.h"

#include <unistd.h>

#include <cstdlib>
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

}  // namespace

std::vector<fs::path> asset_roots() {
  std::vector<fs::path> roots;
  if (const char* env = std::getenv("FLUXTRAIN_ASSETS"); env && *env) roots.emplace_back(env);
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
  const char* env = std::getenv("FLUXTRAIN_ASSETS");
  fail("asset ", relative, " not found; looked in: ", looked.empty() ? "(nowhere)" : looked,
       env && *env ? "" : " ($FLUXTRAIN_ASSETS is not set)", ". Fix: set FLUXTRAIN_ASSETS to a folder that holds ",
       relative,
       " (a fluxtrain checkout's assets/ folder; scripts/fetch_tokenizer_assets.sh recreates its tokenizers/)");
}

}  // namespace fluxtrain
