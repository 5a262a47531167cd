// A fresh, empty temporary folder per test name and process, for tests that write files.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace fluxtrain::testing {

inline std::filesystem::path fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("fluxtrain_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace fluxtrain::testing
