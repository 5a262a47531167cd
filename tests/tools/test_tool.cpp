// fluxtrain_test_tool: exposes library functions to the Python reference tests. Not shipped.
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

namespace st = fluxtrain::safetensors;

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

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string command = argc > 1 ? argv[1] : "";
    if (command == "st-copy" && argc == 4) {
      st::Reader reader(argv[2]);
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      nlohmann::json report = nlohmann::json::object();
      for (const st::TensorInfo& info : reader.header().tensors) {
        at::Tensor t = reader.tensor(info);
        report[info.name] = describe(t, info.dtype);
        tensors.emplace_back(info.name, t);
      }
      st::write(argv[3], tensors, reader.metadata());
      std::cout << report.dump() << "\n";
      return 0;
    }
    if (command == "st-write-sample" && argc == 3) {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (st::Dtype d : st::kAllDtypes) tensors.emplace_back("t_" + std::string(st::dtype_name(d)), sample_tensor(d));
      tensors.emplace_back("scalar", at::scalar_tensor(2.5, at::kFloat));
      tensors.emplace_back("empty", at::empty({0, 4}, at::kFloat));
      st::write(argv[2], tensors, {{"format", "pt"}, {"writer", "fluxtrain"}, {"unicode", "Grüße ✓"}});
      return 0;
    }
    std::cerr << "usage: fluxtrain_test_tool st-copy IN OUT | st-write-sample OUT\n";
    return 2;
  } catch (const fluxtrain::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
