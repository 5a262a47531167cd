// Where the data files that ship with the program (tokenizer vocabularies) are at run time.
#pragma once

#include <filesystem>
#include <string_view>
#include <vector>

namespace fluxtrain {

// The folders searched for assets, in order: $FLUXTRAIN_ASSETS (when set), <executable dir>/../share/
// fluxtrain/assets (an installed tree), then the source tree's assets/ folder (compiled in, so a build
// folder works without installing).
std::vector<std::filesystem::path> asset_roots();

// `relative` (e.g. "tokenizers/clip_l/vocab.json") under the first root that has it. Throws an Error
// that names every place looked at and how to fix it.
std::filesystem::path find_asset(std::string_view relative);

}  // namespace fluxtrain
