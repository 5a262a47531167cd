// A caching allocator for large CPU tensors, for training and sampling on the CPU.
//
// libtorch's CPU allocator hands every large tensor a fresh mapping and unmaps it on free, so each step
// of a CPU training run faults in and zero-fills all its activation memory again: with huge pages
// (core/host_memory.h) the zero-filling alone was about 7 % of a step. This allocator keeps freed blocks
// of 128 KiB and more, mapped directly, for the next request of that size, which a training step makes
// in the same order every step: from 1 MiB rounded up to 2 MiB and huge-page backed, below that rounded
// up to 64 KiB (those would otherwise fragment glibc's heap, which then holds freed memory). Smaller
// requests go to libtorch's own CPU allocation functions.
//
// The cache lives in the room below the live tensors' peak: before a request it cannot serve maps new
// memory, the oldest freed blocks go back to the system until live + cached + new fit in the largest
// live total so far (everything cached goes when the request makes a new peak). Since freeing and
// reusing leave live + cached unchanged, the large blocks' resident memory never exceeds the live peak
// (glibc alone keeps freed heap memory on top of it). It also never holds more than `limit_bytes`.
// Blocks up to 1/8 larger than a request serve it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fluxtrain::train {

struct CpuCacheStats {
  int64_t hits = 0;          // large requests served from the cache
  int64_t misses = 0;        // large requests that needed new memory
  int64_t cached_bytes = 0;  // free blocks held now
  int64_t limit_bytes = 0;
  int64_t live_bytes = 0;       // large blocks in use now
  int64_t peak_live_bytes = 0;  // the most large blocks in use at once so far
  int64_t tensor_bytes = 0;       // every tensor's memory now, as requested (small ones: their usable sizes)
  int64_t peak_tensor_bytes = 0;  // the most of that at once since start or reset_cpu_peak()
};

// The cache's limit unless the caller gives another (the app takes FLUXTRAIN_CPU_CACHE_MB).
inline constexpr int64_t kDefaultCpuCacheBytes = int64_t{2048} << 20;

// Makes the caching allocator libtorch's CPU allocator (once; later calls only change the limit) and
// sets the most bytes it keeps cached. Tensors allocated before keep their own deleters.
void use_caching_cpu_allocator(int64_t limit_bytes = kDefaultCpuCacheBytes);

CpuCacheStats cpu_cache_stats();

// Starts a new peak_tensor_bytes from the bytes in use now (the memory planner's measurements).
void reset_cpu_peak();

// The most bytes tensors may hold at once, like a GPU's memory (0: no limit, the default): an allocation
// beyond it throws c10::OutOfMemoryError as CUDA's allocator does. The app takes FLUXTRAIN_CPU_MEMORY_LIMIT_MB.
void set_cpu_memory_limit(int64_t bytes);

}  // namespace fluxtrain::train
