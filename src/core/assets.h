// Where the data files that ship with the program (tokenizer vocabularies) are at run time.
#pragma once

#include <filesystem>
#include <string_view>
#include <vector>

namespace fluxtrain {

// A folder searched before the others, as the user names it (the app sets it at start-up from
// FLUXTRAIN_ASSETS); empty: none.
void set_user_asset_root(std::filesystem::path folder);

// The folders searched for assets, in order: the user's folder (when set), <executable dir>/../share/
// fluxtrain/assets (an installed tree), then the source tree's assets/ folder (compiled in, so a build
// folder works without installing).
std::vector<std::filesystem::path> asset_roots();

// `relative` (e.g. "tokenizers/clip_l/vocab.json") under the first root that has it. Throws an Error
// that names every place looked at and how to fix it.
std::filesystem::path find_asset(std::string_view relative);

}  // namespace fluxtrain
