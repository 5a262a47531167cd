// Small helpers shared by the torch-free tests: writing a fixture file, and the text of the Error a call
// throws.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace fluxtrain::testing {

// Writes `content` to `path` byte for byte, creating the folders above it.
inline void write_file(const std::filesystem::path& path, const std::string& content) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << content;
}

// The message of the fluxtrain::Error that `call` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// `call` throws an Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& call, const std::vector<std::string>& parts) {
  const std::string message = error_of(call);
  if (message == "(no error)") {
    ADD_FAILURE() << "no error thrown; expected one mentioning " << parts.front();
    return;
  }
  for (const std::string& part : parts) {
    EXPECT_NE(message.find(part), std::string::npos) << "missing '" << part << "' in: " << message;
  }
}

}  // namespace fluxtrain::testing
