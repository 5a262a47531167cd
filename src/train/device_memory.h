#pragma once

#include <c10/core/Device.h>

#include <cstdint>

namespace fluxtrain::train {

// The peak of the bytes held by tensors on a CUDA device (on a ROCm build of libtorch, a HIP device:
// it answers as "cuda") since the process began or since the last reset_device_peak_memory, from
// libtorch's caching allocator. Throws for a device that is not "cuda".
int64_t device_peak_allocated_bytes(const c10::Device& device);
void reset_device_peak_memory(const c10::Device& device);
// The device memory not in use by any process (the driver's figure, less what the caching allocator holds
// is not added back: a training plans with what it can still get).
int64_t device_free_bytes(const c10::Device& device);

}  // namespace fluxtrain::train
