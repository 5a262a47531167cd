// kohya's optimizer_args: "key=value key=value" (what sd-scripts reads with ast.literal_eval), typed.
// Values: booleans True/False/true/false/1/0, numbers (also inf), pairs "0.9,0.99" / "(0.9, 0.99)" /
// "[0.9,0.99]", None where the reference accepts it; a token or value may be quoted. Spaces inside
// brackets or quotes do not split tokens.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::optim {

// Splits the string into (key, raw value) pairs. Throws Error on a token without '=', an empty key, a
// repeated key, or an unbalanced bracket/quote; the messages name the option `what` (kohya's network_args
// are written the same way).
std::vector<std::pair<std::string, std::string>> split_key_values(const std::string& args, const std::string& what);
inline std::vector<std::pair<std::string, std::string>> split_optimizer_args(const std::string& args) {
  return split_key_values(args, "optimizer_args");
}

// Reads typed values for one optimizer. Every getter names a valid key; finish() then rejects any key
// that no getter asked for, naming it, the closest valid key and the full list.
class ArgReader {
 public:
  ArgReader(std::string optimizer, const std::string& args);

  bool flag(const std::string& key, bool fallback);
  double real(const std::string& key, double fallback);
  std::optional<double> optional_real(const std::string& key, std::optional<double> fallback);
  int64_t integer(const std::string& key, int64_t fallback);
  std::pair<double, double> pair(const std::string& key, std::pair<double, double> fallback);
  bool has(const std::string& key) const;

  void finish() const;

 private:
  const std::string* raw(const std::string& key);
  [[noreturn]] void bad_value(const std::string& key, const std::string& value, const std::string& expected) const;

  std::string optimizer_;
  std::vector<std::pair<std::string, std::string>> values_;
  std::vector<std::string> known_;
};

}  // namespace fluxtrain::optim
