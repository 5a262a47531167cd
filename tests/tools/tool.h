// fluxtrain_test_tool: exposes library functions that are not CLI features to the Python reference
// tests. Each tests/tools/tool_*.cpp registers its commands with a static ToolCommand.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace fluxtrain::tool {

using Args = std::vector<std::string>;
using Handler = std::function<int(const Args&)>;

std::map<std::string, std::pair<std::string, Handler>>& registry();

struct ToolCommand {
  ToolCommand(const std::string& name, const std::string& usage, Handler handler) {
    registry()[name] = {usage, std::move(handler)};
  }
};

// Reads all tensors of a safetensors file into memory (copies).
std::map<std::string, at::Tensor> load_tensors(const std::string& path);
void save_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors);
// The value of "--flag VALUE" in args, or `fallback`.
std::string option(const Args& args, const std::string& flag, const std::string& fallback);

}  // namespace fluxtrain::tool
