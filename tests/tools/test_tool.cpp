// fluxtrain_test_tool: the dispatcher and the safetensors commands. Not shipped.
//
//   st-copy IN OUT         read IN with the mmap Reader, write every tensor + metadata with the
//                          writer to OUT; print JSON {name: {dtype, shape, sum, nan, bytes_fnv}}
//   st-write-sample OUT    write one tensor per dtype with a fixed pattern (see sample_tensor) + metadata
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <iostream>

#include "core/error.h"
#include "core/safetensors.h"
#include "tool.h"

namespace st = fluxtrain::safetensors;

namespace fluxtrain::tool {

std::map<std::string, std::pair<std::string, Handler>>& registry() {
  static std::map<std::string, std::pair<std::string, Handler>> commands;
  return commands;
}

std::map<std::string, at::Tensor> load_tensors(const std::string& path) {
  st::Reader reader(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& info : reader.header().tensors) out[info.name] = reader.tensor(info).clone();
  return out;
}

void save_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  std::vector<std::pair<std::string, at::Tensor>> list;
  for (const auto& [name, t] : tensors) list.emplace_back(name, t.detach().contiguous());
  st::write(path, list);
}

std::string option(const Args& args, const std::string& flag, const std::string& fallback) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag) return args[i + 1];
  }
  return fallback;
}

}  // namespace fluxtrain::tool

namespace {

uint64_t fnv1a(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < c.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ULL;
  return h;
}

nlohmann::json describe(const at::Tensor& t, st::Dtype dtype) {
  at::Tensor d = t.to(at::kDouble);
  at::Tensor finite = at::where(at::isfinite(d), d, at::zeros_like(d));
  return {{"dtype", std::string(st::dtype_name(dtype))},
          {"shape", t.sizes().vec()},
          {"sum", finite.sum().item<double>()},
          {"nonfinite", (~at::isfinite(d)).sum().item<int64_t>()},
          {"bytes_fnv", std::to_string(fnv1a(t))}};
}

// The pattern both this tool and the Python test compute: i -> ((i * 37) % 251) - 125, scaled by 1/8
// for floating types, cast to the dtype (bool: odd values).
at::Tensor sample_tensor(st::Dtype dtype) {
  at::Tensor i = at::arange(0, 2 * 3 * 5, at::kLong);
  at::Tensor v = ((i * 37) % 251) - 125;
  at::ScalarType type = st::to_scalar_type(dtype);
  at::Tensor out;
  if (dtype == st::Dtype::BOOL) out = (v.remainder(2) == 1);
  else if (at::isFloatingType(type)) out = (v.to(at::kDouble) / 8.0).to(type);
  else if (dtype == st::Dtype::U8) out = (v + 125).to(type);
  else out = v.to(type);
  return out.reshape({2, 3, 5});
}

int st_copy(const fluxtrain::tool::Args& args) {
  st::Reader reader(args.at(0));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  nlohmann::json report = nlohmann::json::object();
  for (const st::TensorInfo& info : reader.header().tensors) {
    at::Tensor t = reader.tensor(info);
    report[info.name] = describe(t, info.dtype);
    tensors.emplace_back(info.name, t);
  }
  st::write(args.at(1), tensors, reader.metadata());
  std::cout << report.dump() << "\n";
  return 0;
}

int st_write_sample(const fluxtrain::tool::Args& args) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (st::Dtype d : st::kAllDtypes) tensors.emplace_back("t_" + std::string(st::dtype_name(d)), sample_tensor(d));
  tensors.emplace_back("scalar", at::scalar_tensor(2.5, at::kFloat));
  tensors.emplace_back("empty", at::empty({0, 4}, at::kFloat));
  st::write(args.at(0), tensors, {{"format", "pt"}, {"writer", "fluxtrain"}, {"unicode", "Grüße ✓"}});
  return 0;
}

const fluxtrain::tool::ToolCommand kCopy("st-copy", "IN OUT", st_copy);
const fluxtrain::tool::ToolCommand kSample("st-write-sample", "OUT", st_write_sample);

}  // namespace

int main(int argc, char** argv) {
  auto& commands = fluxtrain::tool::registry();
  std::string command = argc > 1 ? argv[1] : "";
  auto it = commands.find(command);
  if (it == commands.end()) {
    std::cerr << "usage: fluxtrain_test_tool COMMAND ...\n";
    for (const auto& [name, entry] : commands) std::cerr << "  " << name << " " << entry.first << "\n";
    return 2;
  }
  try {
    return it->second.second(fluxtrain::tool::Args(argv + 2, argv + argc));
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
