// The text helpers of http.h that need no connection: the next page of an RFC 8288 Link header and
// percent-encoding (RFC 3986 unreserved characters kept).
#include <cctype>
#include <sstream>
#include <string>
#include <string_view>

#include "core/strings.h"
#include "fetch/http.h"

namespace fluxtrain::fetch {
namespace {

constexpr std::string_view kHttpBlanks = " \t\r\n";  // optional whitespace around header parameters

}  // namespace

std::string link_next(std::string_view header) {
  size_t pos = 0;
  while (true) {
    size_t open = header.find('<', pos);
    if (open == std::string_view::npos) return "";
    size_t close = header.find('>', open);
    if (close == std::string_view::npos) return "";
    size_t end = header.find(',', close);
    // ;key=value;key="value" ..., where rel may hold several space-separated relation types.
    std::istringstream params(
        std::string(header.substr(close + 1, end == std::string_view::npos ? end : end - close - 1)));
    for (std::string param; std::getline(params, param, ';');) {
      size_t equals = param.find('=');
      if (equals == std::string::npos || lower(trim(param.substr(0, equals), kHttpBlanks)) != "rel") continue;
      std::string value = trim(param.substr(equals + 1), kHttpBlanks);
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
      std::istringstream types(lower(value));
      for (std::string type; types >> type;) {
        if (type == "next") return std::string(header.substr(open + 1, close - open - 1));
      }
    }
    if (end == std::string_view::npos) return "";
    pos = end + 1;
  }
}

std::string url_encode(std::string_view text, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
      out += c;
    } else {
      out += '%';
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  return out;
}

}  // namespace fluxtrain::fetch
