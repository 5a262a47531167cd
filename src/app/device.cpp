#include "app/device.h"

#include <torch/cuda.h>

#include "core/error.h"
#include "train/cpu_allocator.h"

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

}  // namespace fluxtrain::app
