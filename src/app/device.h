// `--device` and `--precision` of every command that runs a model (train, cache, sample).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "app/knob_options.h"
#include "app/shared_options.h"

namespace fluxtrain::app {

// auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N; an Error naming `option` for
// anything else or for CUDA without a GPU.
at::Device resolve_device(const std::string& text, const std::string& option = "--device");
// The same for a command's settings. Computing on the CPU installs the caching CPU allocator
// (train/cpu_allocator.h) with the engine settings' cache limit.
at::Device resolve_device(const ComputeSettings& compute, const EngineSettings& engine);

// fp32, bf16, fp16, or auto (bf16 on a GPU, fp32 on the CPU).
at::ScalarType resolve_precision(Precision precision, at::Device device);

}  // namespace fluxtrain::app
