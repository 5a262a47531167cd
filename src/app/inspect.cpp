// `fluxtrain inspect FILE [--json]`: what a safetensors file holds and what it is, from the header.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <memory>

#include "app/commands.h"
#include "app/tool_options.h"
#include "core/error.h"
#include "core/safetensors_format.h"
#include "lora/identify.h"
#include "models/identify.h"

namespace fluxtrain::app {
namespace {

std::string short_count(uint64_t n) {
  char buffer[32];
  if (n >= 1'000'000'000)
    std::snprintf(buffer, sizeof buffer, "%.1f B", n / 1e9);
  else if (n >= 1'000'000)
    std::snprintf(buffer, sizeof buffer, "%.1f M", n / 1e6);
  else if (n >= 1'000)
    std::snprintf(buffer, sizeof buffer, "%.1f K", n / 1e3);
  else
    return std::to_string(n);
  return buffer;
}

int run_inspect(const InspectSettings& options) {
  const safetensors::Header header = safetensors::read_header(options.file);
  auto scalar = [&](const safetensors::TensorInfo& info) {
    return safetensors::read_scalar(options.file, header, info);
  };
  const std::vector<models::Component> components = models::identify(header, {lora::lora_recogniser(scalar)});

  std::map<std::string, size_t> dtypes;
  for (const auto& t : header.tensors) dtypes[std::string(safetensors::dtype_name(t.dtype))]++;

  if (options.json) {
    nlohmann::ordered_json out;
    out["file"] = options.file;
    out["size_bytes"] = header.file_size();
    out["header_bytes"] = header.header_size;
    out["tensors"] = header.tensors.size();
    out["parameters"] = header.parameter_count();
    out["dtypes"] = dtypes;
    out["metadata"] = header.metadata;
    nlohmann::ordered_json parts = nlohmann::ordered_json::array();
    for (const auto& c : components) {
      nlohmann::ordered_json part;
      part["kind"] = c.kind;
      part["prefix"] = c.prefix;
      part["tensors"] = c.tensor_count;
      part["description"] = c.description;
      part["details"] = c.details;
      parts.push_back(part);
    }
    out["components"] = parts;
    std::cout << out.dump(2) << "\n";
    return 0;
  }

  std::string dtype_text;
  for (const auto& [d, n] : dtypes) dtype_text += (dtype_text.empty() ? "" : ", ") + d + " x" + std::to_string(n);
  std::cout << "file        " << options.file << "\n"
            << "size        " << format_bytes(static_cast<double>(header.file_size())) << " (header "
            << format_bytes(static_cast<double>(header.header_size)) << ")\n"
            << "tensors     " << format_count(static_cast<long long>(header.tensors.size())) << "\n"
            << "parameters  " << format_count(static_cast<long long>(header.parameter_count())) << " ("
            << short_count(header.parameter_count()) << ")\n"
            << "dtypes      " << (dtype_text.empty() ? "(none)" : dtype_text) << "\n";
  for (const auto& c : components) {
    std::cout << "kind        " << c.description;
    if (!c.prefix.empty() || components.size() > 1) {
      std::cout << " [" << (c.prefix.empty() ? "no prefix" : "prefix " + c.prefix) << ", " << c.tensor_count
                << " tensors]";
    }
    std::cout << "\n";
  }
  if (header.metadata.empty()) {
    std::cout << "metadata    (none)\n";
  } else {
    std::cout << "metadata    " << header.metadata.size() << " entries\n";
    for (const auto& [key, value] : header.metadata) {
      std::string shown = value;
      if (static_cast<int>(shown.size()) > options.max_value_chars) {
        shown = shown.substr(0, options.max_value_chars) + "... (" + std::to_string(value.size()) +
                " chars; --json shows all)";
      }
      for (char& ch : shown) {
        if (ch == '\n' || ch == '\r') ch = ' ';
      }
      std::cout << "  " << key << ": " << shown << "\n";
    }
  }
  return 0;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  return add_table_command(app, command_info("inspect"),
                           [](const ResolvedConfig& config) { return run_inspect(config.bind<InspectSettings>()); });
}

}  // namespace fluxtrain::app
