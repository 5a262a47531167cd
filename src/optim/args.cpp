#include "optim/args.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::optim {
namespace {

std::string unquote(std::string s) {
  s = trim(s);
  while (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front())
    s = trim(s.substr(1, s.size() - 2));
  return s;
}

std::optional<double> parse_double(const std::string& text) {
  std::string s = trim(text);
  if (s.empty()) return std::nullopt;
  const std::string lowered = lower(s);
  if (lowered == "inf" || lowered == "+inf" || lowered == "infinity") return INFINITY;
  if (lowered == "-inf" || lowered == "-infinity") return -INFINITY;
  if (lowered.find("nan") != std::string::npos || lowered.find("inf") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE) return std::nullopt;
  return v;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> split_key_values(const std::string& args, const std::string& what) {
  std::vector<std::string> tokens;
  std::string current;
  int depth = 0;
  char quote = 0;
  for (char c : args) {
    if (quote) {
      if (c == quote) quote = 0;
      current += c;
      continue;
    }
    if (c == '"' || c == '\'')
      quote = c;
    else if (c == '(' || c == '[')
      ++depth;
    else if (c == ')' || c == ']')
      --depth;
    if (depth < 0) fail(what, " \"", args, "\": unbalanced '", c, "'");
    if (std::isspace(static_cast<unsigned char>(c)) && depth == 0) {
      if (!current.empty()) tokens.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  if (quote || depth != 0) fail(what, " \"", args, "\": unbalanced ", quote ? "quote" : "bracket");
  if (!current.empty()) tokens.push_back(current);

  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& raw_token : tokens) {
    std::string token = unquote(raw_token);
    size_t eq = token.find('=');
    if (eq == std::string::npos)
      fail(what, ": \"", token, "\" is not key=value (expected e.g. ",
           what == "optimizer_args" ? "\"weight_decay=0.01 betas=0.9,0.99\"" : "\"key=value key=value\"", ")");
    std::string key = trim(token.substr(0, eq));
    if (key.empty()) fail(what, ": \"", token, "\" has no key before '='");
    for (const auto& [k, v] : out) {
      if (k == key) fail(what, ": ", key, " is given twice");
    }
    out.emplace_back(key, unquote(token.substr(eq + 1)));
  }
  return out;
}

ArgReader::ArgReader(std::string optimizer, const std::string& args)
    : optimizer_(std::move(optimizer)), values_(split_optimizer_args(args)) {}

const std::string* ArgReader::raw(const std::string& key) {
  known_.push_back(key);
  for (const auto& [k, v] : values_) {
    if (k == key) return &v;
  }
  return nullptr;
}

bool ArgReader::has(const std::string& key) const {
  for (const auto& [k, v] : values_) {
    if (k == key) return true;
  }
  return false;
}

void ArgReader::bad_value(const std::string& key, const std::string& value, const std::string& expected) const {
  fail("optimizer_args for ", optimizer_, ": ", key, "=", value, " is not ", expected);
}

bool ArgReader::flag(const std::string& key, bool fallback) {
  const std::string* v = raw(key);
  if (!v) return fallback;
  if (*v == "True" || *v == "true" || *v == "1") return true;
  if (*v == "False" || *v == "false" || *v == "0") return false;
  bad_value(key, *v, "a boolean (True/False, true/false, 1/0)");
}

double ArgReader::real(const std::string& key, double fallback) {
  const std::string* v = raw(key);
  if (!v) return fallback;
  auto d = parse_double(*v);
  if (!d) bad_value(key, *v, "a number");
  return *d;
}

std::optional<double> ArgReader::optional_real(const std::string& key, std::optional<double> fallback) {
  const std::string* v = raw(key);
  if (!v) return fallback;
  if (*v == "None" || *v == "none") return std::nullopt;
  auto d = parse_double(*v);
  if (!d) bad_value(key, *v, "a number or None");
  return d;
}

int64_t ArgReader::integer(const std::string& key, int64_t fallback) {
  const std::string* v = raw(key);
  if (!v) return fallback;
  auto d = parse_double(*v);
  if (!d || std::floor(*d) != *d || std::abs(*d) > 1e15) bad_value(key, *v, "an integer");
  return static_cast<int64_t>(*d);
}

std::pair<double, double> ArgReader::pair(const std::string& key, std::pair<double, double> fallback) {
  const std::string* v = raw(key);
  if (!v) return fallback;
  std::string s = trim(*v);
  if (s.size() >= 2 && ((s.front() == '(' && s.back() == ')') || (s.front() == '[' && s.back() == ']')))
    s = s.substr(1, s.size() - 2);
  size_t comma = s.find(',');
  std::optional<double> a, b;
  if (comma != std::string::npos && s.find(',', comma + 1) == std::string::npos) {
    a = parse_double(s.substr(0, comma));
    b = parse_double(s.substr(comma + 1));
  }
  if (!a || !b) bad_value(key, *v, "a pair of numbers (e.g. 0.9,0.999 or (0.9, 0.999))");
  return {*a, *b};
}

void ArgReader::finish() const {
  for (const auto& [key, value] : values_) {
    bool ok = false;
    for (const auto& k : known_) ok = ok || k == key;
    if (ok) continue;
    std::string hint = closest_match(key, known_);
    fail("optimizer_args: ", optimizer_, " has no argument \"", key, "\"",
         hint.empty() ? std::string() : cat(" (did you mean \"", hint, "\"?)"), "; valid: ", join(known_));
  }
}

}  // namespace fluxtrain::optim
