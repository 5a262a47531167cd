// Host memory settings the process makes before libtorch allocates anything.
#pragma once

namespace fluxtrain::core {

// Asks libtorch's CPU allocator to back tensors of 2 MiB and more with transparent huge pages
// (THP_MEM_ALLOC_ENABLE=1: 2 MiB alignment and madvise(MADV_HUGEPAGE)) unless the variable is already
// set. Every large CPU tensor is a fresh mapping, so with 4 KiB pages a training step on the CPU spends
// a tenth of its time in page faults; with huge pages 512 times fewer (docs/performance.md). A no-op
// where the kernel has THP off. Call before the first tensor allocation (libtorch reads it once).
void prefer_huge_pages_for_tensors();

}  // namespace fluxtrain::core
