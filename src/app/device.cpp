#include "app/device.h"

#include <torch/cuda.h>

#include "core/error.h"
#include "models/linear.h"
#include "train/cpu_allocator.h"

// A GPU's compute capability and name come from the CUDA runtime's device properties, through libtorch_cuda
// (already linked); a build without the CUDA headers (a ROCm or CPU libtorch) leaves them unknown, and the
// fp8 probe alone decides.
#if !defined(USE_ROCM) && __has_include(<ATen/cuda/CUDAContextLight.h>) && __has_include(<cuda_runtime_api.h>) && \
    __has_include(<cublasLt.h>) && __has_include(<cusparse.h>)
#include <ATen/cuda/CUDAContextLight.h>
#define FLUXTRAIN_CUDA_PROPERTIES 1
#endif

namespace fluxtrain::app {

namespace {

at::Device pick(const std::string& text, const std::string& option) {
  if (text == "cpu") return at::kCPU;
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available()) fail(option, " ", text, ": no CUDA device is available; use cpu or auto");
    return at::Device(text);
  }
  if (text == "auto") return torch::cuda::is_available() ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  fail(option, " '", text, "': expected auto, cpu or cuda[:N]");
}

}  // namespace

at::Device resolve_device(const std::string& text, const std::string& option) {
  return pick(text, option);
}

at::Device resolve_device(const ComputeSettings& compute, const EngineSettings& engine) {
  at::Device device = pick(compute.device, compute.device_origin);
  if (device.is_cpu()) {
    train::use_caching_cpu_allocator(engine.cpu_cache_mb << 20);
    train::set_cpu_memory_limit(engine.cpu_memory_limit_mb << 20);
  }
  return device;
}

at::ScalarType resolve_precision(Precision precision, at::Device device) {
  switch (precision) {
    case Precision::fp32: return at::kFloat;
    case Precision::bf16: return at::kBFloat16;
    case Precision::fp16: return at::kHalf;
    case Precision::automatic: break;
  }
  return device.is_cpu() ? at::kFloat : at::kBFloat16;
}

namespace {

using models::Fp8Matmul;

constexpr const char* kFp8Needs =
    "an NVIDIA GPU with fp8 tensor cores (compute capability 8.9 or newer: L4, L40, RTX 4090, H100, H200)";

bool capable(const Fp8DeviceInfo& device) {
  return device.major < 0 || device.major > 8 || (device.major == 8 && device.minor >= 9);
}

}  // namespace

Fp8DeviceInfo fp8_device_info(at::Device device, at::ScalarType dtype) {
  Fp8DeviceInfo info;
  info.failure = [device, dtype](Fp8Matmul mode) { return models::fp8_matmul_failure(device, mode, dtype); };
  if (device.is_cpu()) {
    info.cpu = true;
    info.name = "the CPU";
    return info;
  }
  info.name = device.str();
  if (!device.is_cuda()) return info;
  info.cuda = true;
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  info.name = "cuda:" + std::to_string(index);
#ifdef FLUXTRAIN_CUDA_PROPERTIES
  try {
    const cudaDeviceProp* properties = at::cuda::getDeviceProperties(index);
    info.major = properties->major;
    info.minor = properties->minor;
    info.name += cat(" (", properties->name, ", compute capability ", info.major, ".", info.minor, ")");
  } catch (const std::exception&) {
    // unknown: the probe decides
  }
#endif
  return info;
}

Fp8ComputeDecision decide_fp8_compute(Fp8Compute wanted, bool fp8_base, at::ScalarType dtype,
                                      const Fp8DeviceInfo& device, const std::string& described,
                                      const std::string& base_described) {
  Fp8ComputeDecision out;
  const bool automatic = wanted == Fp8Compute::automatic;
  if (wanted == Fp8Compute::off) {
    out.line = fp8_base ? "fp8 compute: off (fp8 weights are upcast on every call)" : "fp8 compute: off";
    return out;
  }
  if (!fp8_base) {
    if (!automatic)
      fail(described, " multiplies the fp8 weights of an fp8 base, but ", base_described,
           ": there are none; set fp8_base=true or fp8_compute=auto or off");
    out.line = "fp8 compute: off (auto: fp8_base is off)";
    return out;
  }
  if (automatic) {
    std::string why;
    if (!device.cuda) {
      why = device.name + " has no fp8 matmul";
    } else if (!capable(device)) {
      why = cat(device.name, " has no fp8 tensor cores (compute capability 8.9+ needed)");
    } else {
      std::vector<Fp8Matmul> tries;
      if (dtype == at::kBFloat16) tries.push_back(Fp8Matmul::rowwise);
      tries.push_back(Fp8Matmul::tensorwise);
      for (Fp8Matmul mode : tries) {
        const std::string failure = device.failure(mode);
        if (failure.empty()) {
          out.mode = mode;
          out.line = cat("fp8 compute: ", name_of(mode), " on ", device.name, " (auto)");
          return out;
        }
        why += cat(why.empty() ? "" : "; ", name_of(mode), ": ", failure);
      }
      why = cat(device.name, " cannot run _scaled_mm (", why, ")");
    }
    out.line = cat("fp8 compute: off (auto: ", why, ")");
    return out;
  }
  const Fp8Matmul mode = wanted == Fp8Compute::rowwise ? Fp8Matmul::rowwise : Fp8Matmul::tensorwise;
  const std::string fix = "set fp8_compute=auto (the fastest mode the device has) or off";
  if (!device.cuda) {
    fail(described, " needs ", kFp8Needs, ", but this run computes on ", device.name,
         device.cpu ? " (no fp8 units; its _scaled_mm is a slow reference)" : "", "; ", fix);
  }
  if (!capable(device))
    fail(described, " needs ", kFp8Needs, ", but ", device.name, " has none; ", fix);
  if (mode == Fp8Matmul::rowwise && dtype != at::kBFloat16)
    fail(described, ": rowwise scaling needs bf16 compute, but the run computes in ", c10::toString(dtype),
         "; set precision=bf16, fp8_compute=tensorwise or fp8_compute=auto");
  const std::string failure = device.failure(mode);
  if (!failure.empty())
    fail(described, " needs ", kFp8Needs, ", but _scaled_mm (", name_of(mode), ", ", c10::toString(dtype),
         ") fails on ", device.name, ": ", failure, "; ", fix);
  out.mode = mode;
  out.line = cat("fp8 compute: ", name_of(mode), " on ", device.name, " (", described, ")");
  return out;
}

Fp8ComputeDecision resolve_fp8_compute(Fp8Compute wanted, bool fp8_base, at::Device device, at::ScalarType dtype,
                                       const std::string& described, const std::string& base_described) {
  return decide_fp8_compute(wanted, fp8_base, dtype, fp8_device_info(device, dtype), described, base_described);
}

}  // namespace fluxtrain::app
