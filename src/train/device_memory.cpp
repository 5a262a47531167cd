#include "train/device_memory.h"

#include <torch/version.h>

#include "core/error.h"

// libtorch 2.9 reaches every device's caching allocator through at::accelerator; 2.8 (the ROCm image's,
// rocm/pytorch:..._pytorch_release_2.8.0) only through the allocator's own namespace, which a ROCm build
// renames: c10/hip/HIPCachingAllocator.h, c10::hip::HIPCachingAllocator (hipify's c10 mappings).
// scripts/check_oldest_libtorch.sh compiles this file against 2.8's CUDA headers on every `make test`.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#include <ATen/DeviceAccelerator.h>
#define FLUXTRAIN_ALLOCATOR_STATS at::accelerator
#elif __has_include(<c10/hip/HIPCachingAllocator.h>)
#include <c10/hip/HIPCachingAllocator.h>
#define FLUXTRAIN_ALLOCATOR_STATS c10::hip::HIPCachingAllocator
#elif __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define FLUXTRAIN_ALLOCATOR_STATS c10::cuda::CUDACachingAllocator
#endif

namespace fluxtrain::train {
namespace {

c10::DeviceIndex cuda_index(const c10::Device& device) {
  if (!device.is_cuda()) fail("device memory statistics: ", device.str(), " is not a CUDA/ROCm device");
  return device.index() < 0 ? 0 : device.index();
}

}  // namespace

int64_t device_peak_allocated_bytes(const c10::Device& device) {
  const c10::DeviceIndex index = cuda_index(device);
#ifdef FLUXTRAIN_ALLOCATOR_STATS
  return FLUXTRAIN_ALLOCATOR_STATS::getDeviceStats(index)
      .allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .peak;
#else
  fail("device memory statistics: this libtorch (", TORCH_VERSION, ", no CUDA or ROCm) has none for ", device.str());
#endif
}

void reset_device_peak_memory(const c10::Device& device) {
  const c10::DeviceIndex index = cuda_index(device);
#ifdef FLUXTRAIN_ALLOCATOR_STATS
  FLUXTRAIN_ALLOCATOR_STATS::resetPeakStats(index);
#else
  fail("device memory statistics: this libtorch (", TORCH_VERSION, ", no CUDA or ROCm) has none for ", device.str());
#endif
}

int64_t device_free_bytes(const c10::Device& device) {
  const c10::DeviceIndex index = cuda_index(device);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
  return static_cast<int64_t>(at::accelerator::getMemoryInfo(index).first);
#elif defined(FLUXTRAIN_ALLOCATOR_STATS) && __has_include(<cuda_runtime_api.h>)
  size_t free = 0, total = 0;
  (void)index;  // the current device: libtorch 2.8 is the ROCm image's, one device per process there
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) fail("cannot read the free memory of ", device.str());
  return static_cast<int64_t>(free);
#else
  (void)index;
  fail("device memory: this libtorch (", TORCH_VERSION, ") cannot tell the free memory of ", device.str(),
       "; give vram (GB)");
#endif
}

}  // namespace fluxtrain::train
