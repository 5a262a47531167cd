// `--device` and `--precision` of every command that runs a model (train, cache, sample).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <string>

#include "app/knob_options.h"
#include "app/shared_options.h"
#include "models/linear_modes.h"

namespace fluxtrain::app {

// auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N; an Error naming `option` for
// anything else or for CUDA without a GPU.
at::Device resolve_device(const std::string& text, const std::string& option = "--device");
// The same for a command's settings. Computing on the CPU installs the caching CPU allocator
// (train/cpu_allocator.h) with the engine settings' cache limit.
at::Device resolve_device(const ComputeSettings& compute, const EngineSettings& engine);

// fp32, bf16, fp16, or auto (bf16 on a GPU, fp32 on the CPU).
at::ScalarType resolve_precision(Precision precision, at::Device device);

// What the fp8_compute decision needs to know of the device.
struct Fp8DeviceInfo {
  std::string name;        // "cuda:0 (NVIDIA H100 80GB HBM3, compute capability 9.0)", "the CPU"
  bool cpu = false;
  bool cuda = false;       // an NVIDIA (CUDA) GPU
  int major = -1;          // compute capability; -1: unknown (then the probe alone decides)
  int minor = -1;
  // "" where `_scaled_mm` runs in this mode with the run's compute dtype, else why not.
  std::function<std::string(models::Fp8Matmul)> failure;
};
// The device as fp8_compute sees it: the CPU, a CUDA GPU with its compute capability, or another device;
// `failure` probes models::fp8_matmul_failure.
Fp8DeviceInfo fp8_device_info(at::Device device, at::ScalarType dtype);

struct Fp8ComputeDecision {
  models::Fp8Matmul mode = models::Fp8Matmul::off;
  std::string line;  // for the log: "fp8 compute: rowwise on cuda:0 (...) (auto)"
};
// fp8_compute against the device, once at start, before the weights load: without fp8_base there is
// nothing to multiply in fp8 (auto: off; an explicit mode: an Error naming both options). auto: on a CUDA
// GPU of compute capability 8.9+ rowwise (bf16 compute only) where the probe runs it, else tensorwise where
// it runs, else off; on the CPU and any other device off. An explicit tensorwise/rowwise the device cannot
// run (the CPU counts as such: it has no fp8 units and its `_scaled_mm` is a slow reference) is an Error
// naming `described` (how the user gave fp8_compute), the device, what is needed and the fix.
Fp8ComputeDecision decide_fp8_compute(Fp8Compute wanted, bool fp8_base, at::ScalarType dtype,
                                      const Fp8DeviceInfo& device, const std::string& described = "--fp8-compute",
                                      const std::string& base_described = "--fp8-base");
// decide_fp8_compute on fp8_device_info(device, dtype).
Fp8ComputeDecision resolve_fp8_compute(Fp8Compute wanted, bool fp8_base, at::Device device, at::ScalarType dtype,
                                       const std::string& described = "--fp8-compute",
                                       const std::string& base_described = "--fp8-base");

}  // namespace fluxtrain::app
