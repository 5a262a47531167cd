#include "core/strings.h"

#include <algorithm>
#include <cctype>
#include <cstdint>

namespace fluxtrain {

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string upper(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view text, std::string_view blanks) {
  const size_t begin = text.find_first_not_of(blanks);
  if (begin == std::string_view::npos) return "";
  return std::string(text.substr(begin, text.find_last_not_of(blanks) - begin + 1));
}

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += items[i];
  }
  return out;
}

std::string join_alternatives(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : i + 1 == items.size() ? " or " : ", ") + items[i];
  return out;
}

std::string shorten(std::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return std::string(text);
  return std::string(text.substr(0, max_chars)) + "...";
}

std::string redact_url(std::string_view text) {
  const size_t scheme = text.find("://");
  if (scheme == std::string_view::npos) return std::string(text);
  const size_t authority = scheme + 3;
  const size_t authority_end = std::min(text.find_first_of("/?#", authority), text.size());
  std::string out(text.substr(0, authority));
  const size_t at = text.substr(0, authority_end).rfind('@');
  if (at != std::string_view::npos && at >= authority) {
    out += "***@";
    out += text.substr(at + 1, authority_end - at - 1);
  } else {
    out += text.substr(authority, authority_end - authority);
  }
  const size_t query = std::min(text.find_first_of("?#", authority_end), text.size());
  out += text.substr(authority_end, query - authority_end);  // the path
  const size_t fragment = std::min(text.find('#', query), text.size());
  if (query < fragment) {
    out += '?';
    std::string_view params = text.substr(query + 1, fragment - query - 1);
    for (size_t start = 0; start <= params.size();) {
      size_t end = std::min(params.find('&', start), params.size());
      std::string_view param = params.substr(start, end - start);
      if (start > 0) out += '&';
      const size_t equals = param.find('=');
      if (equals != std::string_view::npos) {
        out += param.substr(0, equals + 1);
        if (equals + 1 < param.size()) out += "***";
      } else if (!param.empty()) {
        out += "***";  // a bare value (a token alone)
      }
      start = end + 1;
    }
  }
  if (fragment < text.size()) out += fragment + 1 < text.size() ? "#***" : "#";
  return out;
}

namespace {
constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(static_cast<uint8_t>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[i + 1])) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    out += kBase64[(v >> 18) & 63];
    out += kBase64[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kBase64[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kBase64[v & 63] : '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  std::string out;
  uint32_t buffer = 0;
  int bits = 0;
  for (char c : text) {
    if (c == '=') break;
    const size_t digit = kBase64.find(c);
    if (digit == std::string_view::npos) return std::nullopt;
    buffer = (buffer << 6) | static_cast<uint32_t>(digit);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> bits) & 0xff));
    }
  }
  return out;
}

}  // namespace fluxtrain
