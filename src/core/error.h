// The project's one error type. Every user-facing failure is a fluxtrain::Error whose message says
// what went wrong, naming the file / key / variable, what was found, what was expected, and the fix.
// Internal invariants use TORCH_CHECK or assert instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fluxtrain {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates anything streamable: cat("got ", n, " bytes") -> "got 12 bytes".
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

// Throws Error(cat(args...)).
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

// The candidate closest to `name` by edit distance, for "did you mean" hints; "" when nothing is
// reasonably close (distance > max(2, len/3)).
std::string closest_match(const std::string& name, const std::vector<std::string>& candidates);

// Human-readable byte count: 1536 -> "1.5 KB", 23.8e9 -> "23.8 GB" (powers of 1000, as disks and
// download pages report sizes).
std::string format_bytes(double bytes);

// 11901408320 -> "11,901,408,320".
std::string format_count(long long value);

}  // namespace fluxtrain
