#include "optim/options.h"

#include <charconv>

namespace fluxtrain::optim {
namespace {

// Shortest text that reads back as the same double, with ".0" on whole numbers (as kohya's Python).
std::string number_text(double value) {
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, end);
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

}  // namespace

const std::vector<std::string>& optimizer_types() {
  static const std::vector<std::string> types = {"Prodigy", "AdamW", "AdamW8bit", "Adafactor", "Lion", "SGD"};
  return types;
}

std::string describe(const OptimizerSettings& settings) {
  std::string args = settings.args;
  auto append = [&](const char* key, const std::optional<double>& value) {
    if (value) args += (args.empty() ? "" : " ") + std::string(key) + "=" + number_text(*value);
  };
  append("d_coef", settings.d_coef);
  append("weight_decay", settings.weight_decay);
  return args.empty() ? settings.type : settings.type + "(" + args + ")";
}

}  // namespace fluxtrain::optim
