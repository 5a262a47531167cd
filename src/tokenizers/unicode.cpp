#include "tokenizers/unicode.h"

#include <unicode/brkiter.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utext.h>

#include <memory>

#include "core/error.h"

namespace fluxtrain::tokenizers {

void check_utf8(std::string_view text, std::string_view what) {
  size_t i = 0;
  while (i < text.size()) {
    auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    unsigned char lead = byte(i);
    size_t length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 0;
    bool ok = length > 0 && i + length <= text.size();
    char32_t c = length == 1 ? lead : length == 2 ? (lead & 0x1F) : length == 3 ? (lead & 0x0F) : (lead & 0x07);
    for (size_t k = 1; ok && k < length; ++k) {
      ok = (byte(i + k) & 0xC0) == 0x80;
      c = (c << 6) | (byte(i + k) & 0x3F);
    }
    static constexpr char32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok) ok = c >= kMinimum[length] && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF);
    if (!ok) {
      fail(what, " is not valid UTF-8: bad byte sequence at byte offset ", i, " (byte 0x", std::hex, int(lead),
           "); pass text encoded as UTF-8");
    }
    i += length;
  }
}

char32_t next_code_point(std::string_view text, size_t& pos) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char lead = byte(pos);
  if (lead < 0x80) return char32_t(text[pos++] & 0x7F);
  size_t length = (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : 4;
  char32_t c = lead & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < length; ++k) c = (c << 6) | (byte(pos + k) & 0x3F);
  pos += length;
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | (c >> 6));
    out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | (c >> 12));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | (c >> 18));
    out += char(0x80 | ((c >> 12) & 0x3F));
    out += char(0x80 | ((c >> 6) & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
}

namespace {

const icu::Normalizer2& nfc_normalizer() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status))
    fail("ICU has no NFC normaliser (", u_errorName(status), "): is the ICU data library installed?");
  return *normalizer;
}

std::string icu_nfc(std::string_view text) {
  const icu::Normalizer2& normalizer = nfc_normalizer();
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString source = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), int32_t(text.size())));
  if (normalizer.isNormalized(source, status) && U_SUCCESS(status)) return std::string(text);
  status = U_ZERO_ERROR;
  icu::UnicodeString normalized = normalizer.normalize(source, status);
  if (U_FAILURE(status)) fail("ICU NFC normalisation failed: ", u_errorName(status));
  std::string out;
  normalized.toUTF8String(out);
  return out;
}

// Whether the reference's NFC (Rust crate unicode-normalization-alignments, Unicode 9.0 data) sees `c`
// as an unknown code point while ICU normalises it: a code point newer than Unicode 9.0 with a
// combining class or a canonical decomposition (e.g. U+1DF6, U+0899, U+1ACA).
bool unknown_to_reference_nfc(char32_t c) {
  if (c < 0x7FD) return false;  // the first such code point
  UVersionInfo age;
  u_charAge(UChar32(c), age);
  if (age[0] < 9 || (age[0] == 9 && age[1] == 0 && age[2] == 0 && age[3] == 0)) return false;
  icu::UnicodeString decomposition;
  return u_getCombiningClass(UChar32(c)) != 0 || nfc_normalizer().getRawDecomposition(UChar32(c), decomposition);
}

}  // namespace

std::string nfc(std::string_view text) {
  // The reference treats code points it does not know as starters that never combine, so the text is
  // normalised in pieces between them and they are kept as they are.
  std::string out;
  size_t piece_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t start = pos;
    char32_t c = next_code_point(text, pos);
    if (unknown_to_reference_nfc(c)) {
      out += icu_nfc(text.substr(piece_start, start - piece_start));
      out.append(text.substr(start, pos - start));
      piece_start = pos;
    }
  }
  if (piece_start == 0) return icu_nfc(text);
  out += icu_nfc(text.substr(piece_start));
  return out;
}

std::string lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t c = next_code_point(text, pos);
    // U+0130 is the only code point whose unconditional full lowercase mapping (SpecialCasing.txt) is
    // not its simple mapping; the conditional ones (final sigma, Lithuanian, Turkish) do not apply.
    if (c == 0x130) {
      out += "i\xCC\x87";
    } else {
      append_utf8(out, char32_t(u_tolower(UChar32(c))));
    }
  }
  return out;
}

bool is_letter(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_L_MASK) != 0;
}

bool is_number(char32_t c) {
  return (U_GET_GC_MASK(UChar32(c)) & U_GC_N_MASK) != 0;
}

bool is_whitespace(char32_t c) {
  return u_isUWhiteSpace(UChar32(c));
}

std::vector<std::pair<size_t, size_t>> graphemes(std::string_view text) {
  std::vector<std::pair<size_t, size_t>> out;
  if (text.empty()) return out;
  UErrorCode status = U_ZERO_ERROR;
  std::unique_ptr<icu::BreakIterator> breaks(
      icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), status));
  if (U_FAILURE(status)) fail("ICU has no grapheme break rules (", u_errorName(status), ")");
  UText* utext = utext_openUTF8(nullptr, text.data(), int64_t(text.size()), &status);
  breaks->setText(utext, status);
  if (U_FAILURE(status)) {
    utext_close(utext);
    fail("ICU grapheme segmentation failed: ", u_errorName(status));
  }
  // With UTF-8 UText the boundaries are byte offsets.
  int32_t start = breaks->first();
  for (int32_t end = breaks->next(); end != icu::BreakIterator::DONE; start = end, end = breaks->next()) {
    out.emplace_back(size_t(start), size_t(end - start));
  }
  utext_close(utext);
  return out;
}

std::vector<TextPiece> split_special_tokens(std::string_view text, const std::vector<SpecialToken>& specials) {
  std::vector<TextPiece> pieces;
  bool starts_special[256] = {};
  for (const SpecialToken& special : specials) {
    if (!special.text.empty()) starts_special[static_cast<unsigned char>(special.text[0])] = true;
  }
  size_t piece_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!starts_special[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const SpecialToken* best = nullptr;
    for (const SpecialToken& special : specials) {
      if (!special.text.empty() && text.compare(pos, special.text.size(), special.text) == 0 &&
          (best == nullptr || special.text.size() > best->text.size())) {
        best = &special;
      }
    }
    if (best == nullptr) {
      ++pos;
      continue;
    }
    if (pos > piece_start) pieces.push_back({text.substr(piece_start, pos - piece_start), -1});
    pieces.push_back({std::string_view(), best->id});
    pos += best->text.size();
    piece_start = pos;
  }
  if (pos > piece_start) pieces.push_back({text.substr(piece_start, pos - piece_start), -1});
  return pieces;
}

}  // namespace fluxtrain::tokenizers
