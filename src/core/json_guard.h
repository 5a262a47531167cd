// Untrusted JSON: file headers, downloaded listings, state and config files. nlohmann's DOM parser,
// dump() and copies recurse once per nesting level, so text nested a few ten thousand levels deep
// (`{"a":[[[[...]]]]}`, 100 KB of brackets) overflows the stack. Every parse of text that came from
// outside the program checks the depth first, and error messages quote parsed values only through
// json_excerpt (bounded in length), never a whole dump().
#pragma once

#include <cstddef>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace fluxtrain {

// Deeper than any file fluxtrain reads or writes (safetensors headers are 3 levels, Hub listings 3,
// states and model configs under 8).
inline constexpr size_t kMaxJsonDepth = 64;

// The deepest nesting of arrays and objects in `text` (brackets inside strings do not count); the scan
// stops once the depth passes `limit`, returning limit + 1. Malformed text is the parser's to report.
size_t json_depth(std::string_view text, size_t limit = kMaxJsonDepth);

// Fails with "<what>: JSON nested deeper than 64 levels (at byte N): corrupt or not a <what> file"
// when `text` nests deeper than kMaxJsonDepth.
void check_json_depth(std::string_view text, const std::string& what);

// A value for an error message: its JSON text cut to at most about `max_chars` characters ("..." marks a
// cut), and nesting beyond kMaxJsonDepth written as "...", so quoting untrusted data stays short.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = 120);

}  // namespace fluxtrain
