// Small ASCII string helpers shared by every layer (torch-free). Case mapping is byte-wise ASCII (as
// std::tolower in the "C" locale, which the program never changes): other bytes, UTF-8 included, are
// kept. Unicode-aware case mapping is the tokenizers' (tokenizers/unicode.h); prefix and suffix tests
// are std::string's own starts_with / ends_with (C++20); closest_match and cat are in core/error.h.
#pragma once

#include <optional>
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

// `text` cut to its first `max_chars` characters plus "..." when longer (for quoting untrusted or
// unbounded text, such as a parser's message, in an error).
std::string shorten(std::string_view text, size_t max_chars);

// A URL as it may be shown or recorded (logs, config.toml, training states, metrics, LoRA metadata):
// user info and every query value and fragment replaced by "***", parameter names kept:
//   https://u:pw@host:8443/set.tar?X-Amz-Signature=abc&v=2#f ->
//   https://***@host:8443/set.tar?X-Amz-Signature=***&v=***#***
// (presigned URLs carry their signatures in the query; DATASET_NAME may carry a user and password).
// Text without "://" (a local path, "owner/name", "kaggle:owner/name") is returned unchanged.
std::string redact_url(std::string_view text);

// Base64 (RFC 4648, standard alphabet, '=' padding) of bytes, and back: nullopt for a character outside the
// alphabet (decoding stops at the first '=').
std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace fluxtrain
