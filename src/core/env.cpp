#include "core/env.h"

#include <cstdlib>

#include "core/error.h"

namespace fluxtrain::core {

int env_int(const char* name, int fallback, int min, int max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value < min || value > max) {
    fail(name, "='", text, "' is not a whole number from ", min, " to ", max);
  }
  return static_cast<int>(value);
}

double env_double(const char* name, double fallback, double min, double max) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  double value = std::strtod(text, &end);
  if (*end != '\0' || !(value >= min && value <= max))
    fail(name, "='", text, "' is not a number from ", min, " to ", max);
  return value;
}

}  // namespace fluxtrain::core
