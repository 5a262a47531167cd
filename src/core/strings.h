// Small ASCII string helpers shared by every layer (torch-free). Case mapping is byte-wise ASCII (as
// std::tolower in the "C" locale, which the program never changes): other bytes, UTF-8 included, are
// kept. Unicode-aware case mapping is the tokenizers' (tokenizers/unicode.h); prefix and suffix tests
// are std::string's own starts_with / ends_with (C++20); closest_match and cat are in core/error.h.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fluxtrain {

// The blanks std::isspace knows in the "C" locale.
inline constexpr std::string_view kAsciiWhitespace = " \t\n\v\f\r";

// "AdamW8bit" -> "adamw8bit".
std::string lower(std::string_view text);

// "500g" -> "500G".
std::string upper(std::string_view text);

// `text` without leading and trailing characters from `blanks`.
std::string trim(std::string_view text, std::string_view blanks = kAsciiWhitespace);

// {"a", "b", "c"} -> "a, b, c".
std::string join(const std::vector<std::string>& items, std::string_view separator = ", ");

// Alternatives as a sentence says them: {"a", "b", "c"} -> "a, b or c"; {"a"} -> "a".
std::string join_alternatives(const std::vector<std::string>& items);

}  // namespace fluxtrain
