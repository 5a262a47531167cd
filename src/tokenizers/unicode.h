// The Unicode pieces both tokenizers need, on top of ICU (Debian libicu-dev; ICU 72 = Unicode 15.0):
// UTF-8 decoding, NFC, per-code-point lowercasing, general categories, White_Space and grapheme
// clusters. Every function takes and returns UTF-8.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fluxtrain::tokenizers {

// Throws Error unless `text` is well-formed UTF-8 (no overlongs, surrogates or code points past
// U+10FFFF); `what` names the text in the message ("prompt").
void check_utf8(std::string_view text, std::string_view what);

// Decodes the code point at `pos` of valid UTF-8 and moves `pos` past it.
char32_t next_code_point(std::string_view text, size_t& pos);
void append_utf8(std::string& out, char32_t c);

std::string nfc(std::string_view text);

// Lowercases code point by code point with the full (unconditional) Unicode mapping, as Rust's
// char::to_lowercase does: U+0130 becomes "i\u0307" and a final capital sigma becomes σ, never ς.
std::string lowercase(std::string_view text);

bool is_letter(char32_t c);      // general category L* (regex \p{L})
bool is_number(char32_t c);      // general category N* (regex \p{N})
bool is_whitespace(char32_t c);  // the White_Space property (regex \s, Rust char::is_whitespace)

// The extended grapheme clusters of `text` as (byte offset, byte length), in order.
std::vector<std::pair<size_t, size_t>> graphemes(std::string_view text);

// A special token found in raw text: `text` is replaced by `id` wherever it occurs.
struct SpecialToken {
  std::string text;
  int id;
};

// A piece of text between special tokens (id < 0) or one special token (text empty).
struct TextPiece {
  std::string_view text;
  int id = -1;
};

// Splits `text` at every occurrence of the special tokens, leftmost first and the longest token where
// several start at the same place (the Aho-Corasick leftmost-longest matching of Hugging Face
// tokenizers' added vocabulary). Empty text pieces are dropped.
std::vector<TextPiece> split_special_tokens(std::string_view text, const std::vector<SpecialToken>& specials);

}  // namespace fluxtrain::tokenizers
