// The caching CPU allocator (train/cpu_allocator.h): large blocks are reused, small ones pass through,
// the cache stays under its limit, and tensors behave as with libtorch's allocator. ctest runs each test
// in its own process, so installing the allocator here does not leak into other tests.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "app/knob_options.h"
#include "train/cpu_allocator.h"

namespace fluxtrain::train {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(CpuAllocator, TheBuiltInLimitIsTheOptionsDefault) {
  // FLUXTRAIN_CPU_CACHE_MB's default (the option table's, app/knob_options.h) and the allocator's own.
  EXPECT_EQ(kDefaultCpuCacheBytes, app::EngineSettings{}.cpu_cache_mb * kMiB);
}

TEST(CpuAllocator, ReusesFreedLargeBlocksOfTheSameSize) {
  use_caching_cpu_allocator(256 * kMiB);
  void* first = nullptr;
  {
    at::Tensor t = at::empty({3 * kMiB / 4}, at::kFloat);  // 3 MiB -> a 4 MiB block
    first = t.data_ptr();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % (2 * kMiB), 0u);  // huge-page aligned
    t.fill_(1.5f);
  }
  const CpuCacheStats before = cpu_cache_stats();
  EXPECT_GE(before.cached_bytes, 4 * kMiB);
  at::Tensor again = at::full({3 * kMiB / 4}, 2.0f);
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(cpu_cache_stats().hits, before.hits + 1);
  EXPECT_EQ(again.sum().item<double>(), 2.0 * static_cast<double>(3 * kMiB / 4));
}

TEST(CpuAllocator, ReusesFreedMidSizeBlocks) {
  // 128 KiB to 1 MiB: plain pages in 64 KiB steps, cached like the large blocks.
  use_caching_cpu_allocator(256 * kMiB);
  void* first = nullptr;
  {
    at::Tensor t = at::ones({50 * 1024}, at::kFloat);  // 200 KiB -> a 256 KiB block
    first = t.data_ptr();
  }
  const CpuCacheStats before = cpu_cache_stats();
  at::Tensor again = at::full({60 * 1024}, 3.0f);  // 240 KiB: the same block
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(cpu_cache_stats().hits, before.hits + 1);
  EXPECT_EQ(again.sum().item<double>(), 3.0 * 60 * 1024);
}

TEST(CpuAllocator, SmallTensorsAndArithmeticAreUnaffected) {
  use_caching_cpu_allocator(64 * kMiB);
  const CpuCacheStats before = cpu_cache_stats();
  at::Tensor a = at::arange(1000, at::kDouble), b = at::ones({1000}, at::kDouble);
  EXPECT_EQ((a + b).sum().item<double>(), 1000.0 * 1001.0 / 2.0);
  EXPECT_EQ(cpu_cache_stats().hits + cpu_cache_stats().misses, before.hits + before.misses);  // none was large
  at::Tensor big = at::randn({1024, 1024});
  at::Tensor product = at::matmul(big, at::eye(1024));
  EXPECT_TRUE(at::allclose(product, big));
}

TEST(CpuAllocator, KeepsTheCacheUnderItsLimit) {
  use_caching_cpu_allocator(16 * kMiB);
  {
    std::vector<at::Tensor> many;
    for (int i = 0; i < 12; ++i) many.push_back(at::empty({kMiB}, at::kFloat));  // 4 MiB each
  }
  EXPECT_LE(cpu_cache_stats().cached_bytes, 16 * kMiB);
  use_caching_cpu_allocator(0);
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
  at::Tensor t = at::ones({kMiB});  // still allocates with an empty cache
  EXPECT_EQ(t.sum().item<double>(), static_cast<double>(kMiB));
}

TEST(CpuAllocator, ResidentBlocksNeverExceedTheLivePeak) {
  // Cached blocks only fill the room below the largest live total: a miss first returns enough of the
  // cache that live + cached + the new block stay within that peak (all of it at a new peak). (A cache
  // allowed a share of the peak instead, e.g. a quarter, keeps the 16 MiB below and overshoots.)
  use_caching_cpu_allocator(1024 * kMiB);
  auto check = [](const char* when) {
    const CpuCacheStats s = cpu_cache_stats();
    EXPECT_LE(s.live_bytes + s.cached_bytes, s.peak_live_bytes) << when;
  };
  // A new peak at least 128 MiB above the process's earlier one, in 4 MiB blocks (never written).
  const int64_t blocks = (cpu_cache_stats().peak_live_bytes + 128 * kMiB) / (4 * kMiB) + 1;
  std::vector<at::Tensor> held;
  for (int64_t i = 0; i < blocks; ++i) held.push_back(at::empty({kMiB}, at::kFloat));
  check("at a new peak");
  held.resize(static_cast<size_t>(blocks - 4));
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 16 * kMiB);
  check("after freeing");
  held.push_back(at::empty({14 * kMiB / 4}, at::kFloat));  // 14 MiB: no cached block serves it
  check("after a miss below the peak");
  EXPECT_LE(cpu_cache_stats().cached_bytes, 2 * kMiB);
  held.push_back(at::empty({1000 * kMiB / 4}, at::kFloat));  // a new peak...
  check("after a miss at a new peak");
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);  // ...leaves nothing cached
}

}  // namespace
}  // namespace fluxtrain::train
