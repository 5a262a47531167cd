#include "train/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <malloc.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace fluxtrain::train {
namespace {

constexpr size_t kMinBytes = size_t{128} << 10;     // smaller requests: libtorch's allocator
constexpr size_t kHugeFrom = size_t{1} << 20;       // from here: whole huge pages, huge-page aligned
constexpr size_t kGranule = size_t{2} << 20;        // one huge page
constexpr size_t kSmallGranule = size_t{64} << 10;  // below kHugeFrom

size_t block_size(size_t n) {
  const size_t granule = n >= kHugeFrom ? kGranule : kSmallGranule;
  return (n + granule - 1) / granule * granule;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  static CachingCpuAllocator& instance() {
    static auto* allocator = new CachingCpuAllocator();  // never destroyed: tensors may outlive statics
    return *allocator;
  }

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n < kMinBytes) {
      void* p = c10::alloc_cpu(n);
      std::lock_guard<std::mutex> lock(mutex_);
      small_bytes_ += p ? malloc_usable_size(p) : 0;
      note_peak();
      return {p, p, &release_any, cpu};
    }
    size_t size = block_size(n);
    std::lock_guard<std::mutex> lock(mutex_);
    if (memory_limit_ > 0 && live_bytes_ + small_bytes_ + size > memory_limit_) {
      C10_THROW_ERROR(OutOfMemoryError, "CPU out of memory: allocating " + std::to_string(size >> 20) +
                                            " MiB would exceed the memory limit of " +
                                            std::to_string(memory_limit_ >> 20) + " MiB (" +
                                            std::to_string((live_bytes_ + small_bytes_) >> 20) + " MiB in use)");
    }
    void* p = take(size);
    if (p == nullptr) {
      ++misses_;
      p = fresh(size);
    } else {
      ++hits_;
    }
    live_.emplace(p, Live{size, n});
    live_bytes_ += size;
    requested_bytes_ += n;
    peak_live_ = std::max(peak_live_, live_bytes_);
    note_peak();
    return {p, p, &release_any, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release_any; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  void set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = static_cast<size_t>(std::max<int64_t>(bytes, 0));
    evict_until(limit_, 0);
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {hits_,
            misses_,
            static_cast<int64_t>(cached_),
            static_cast<int64_t>(limit_),
            static_cast<int64_t>(live_bytes_),
            static_cast<int64_t>(peak_live_),
            static_cast<int64_t>(requested_bytes_ + small_bytes_),
            static_cast<int64_t>(peak_tensors_)};
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_tensors_ = requested_bytes_ + small_bytes_;
  }

  void set_memory_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    memory_limit_ = static_cast<size_t>(std::max<int64_t>(bytes, 0));
  }

 private:
  struct Cached {
    void* ptr;
    size_t size;
  };
  using Order = std::list<Cached>;  // free blocks, oldest freed first

  static void release_any(void* p) { instance().release(p); }

  void release(void* p) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(p);
    if (it == live_.end()) {  // a small block
      small_bytes_ -= std::min(small_bytes_, malloc_usable_size(p));
      c10::free_cpu(p);
      return;
    }
    const size_t size = it->second.size;
    requested_bytes_ -= it->second.requested;
    live_.erase(it);
    live_bytes_ -= size;
    if (size > limit_) {
      unmap(p, size);
      return;
    }
    evict_until(limit_, size);
    order_.push_back({p, size});
    free_[size].push_back(std::prev(order_.end()));
    cached_ += size;
  }

  // The smallest cached block of at least `size` bytes and at most 1/8 more (the most recently freed of
  // that size), or null; `size` becomes the block's size. Caller holds the lock.
  void* take(size_t& size) {
    for (auto it = free_.lower_bound(size); it != free_.end() && it->first <= size + size / 8; ++it) {
      if (it->second.empty()) continue;
      Order::iterator node = it->second.back();
      it->second.pop_back();
      void* p = node->ptr;
      size = it->first;
      order_.erase(node);
      cached_ -= size;
      return p;
    }
    return nullptr;
  }

  // Returns the oldest cached blocks to the system until `incoming` more bytes fit under `budget` (or
  // the cache is empty). Caller holds the lock.
  void evict_until(size_t budget, size_t incoming) {
    while (!order_.empty() && cached_ + incoming > budget) evict_oldest();
  }

  void evict_oldest() {
    Cached oldest = order_.front();
    auto& list = free_[oldest.size];
    for (auto i = list.begin(); i != list.end(); ++i) {
      if (*i == order_.begin()) {
        list.erase(i);
        break;
      }
    }
    order_.pop_front();
    cached_ -= oldest.size;
    unmap(oldest.ptr, oldest.size);
  }

  // New memory for a miss (see map()). Before it is mapped, the oldest cached blocks go back to the
  // system until the live blocks, the cache and the new block together fit in the largest live total
  // seen so far (all of the cache when the new block makes a new peak). Freeing and reusing do not
  // change live + cached, so resident memory never exceeds the live tensors' peak.
  // Caller holds the lock (released by the caller's guard when this throws).
  void* fresh(size_t size) {
    evict_until(peak_live_ > live_bytes_ ? peak_live_ - live_bytes_ : 0, size);
    void* p = map(size);
    if (p == nullptr) {
      evict_until(0, 0);
      p = map(size);
    }
    if (p == nullptr) {
      C10_THROW_ERROR(OutOfMemoryError,
                      "CPU out of memory: could not allocate " + std::to_string(size >> 10) + " KiB for a tensor");
    }
    return p;
  }

  // Blocks of a huge page or more: 2 MiB aligned and huge-page backed; smaller ones: plain pages.
  static void* map(size_t size) {
    if (size < kGranule) {  // a mid-size block: plain pages
      void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    // Over-allocate by one granule and trim, so the block starts on a 2 MiB boundary.
    const size_t span = size + kGranule;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = (base + kGranule - 1) / kGranule * kGranule;
    if (start > base) ::munmap(raw, start - base);
    const uintptr_t end = start + size;
    if (base + span > end) ::munmap(reinterpret_cast<void*>(end), base + span - end);
#ifdef MADV_HUGEPAGE
    ::madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(start);
  }

  static void unmap(void* p, size_t size) {
    ::munmap(p, size);
  }

  CachingCpuAllocator() : limit_(static_cast<size_t>(kDefaultCpuCacheBytes)) {}

  // Caller holds the lock.
  void note_peak() { peak_tensors_ = std::max(peak_tensors_, requested_bytes_ + small_bytes_); }

  std::mutex mutex_;
  size_t small_bytes_ = 0;      // small blocks in use (their usable sizes)
  size_t requested_bytes_ = 0;  // large blocks in use, as requested (before rounding to blocks)
  size_t peak_tensors_ = 0;  // the most bytes of all tensors at once since start or reset_peak
  size_t memory_limit_ = 0;  // 0: none
  struct Live {
    size_t size;       // the block's
    size_t requested;  // the tensor's
  };
  std::unordered_map<void*, Live> live_;                 // large blocks in use
  Order order_;                                          // free blocks by age
  std::map<size_t, std::vector<Order::iterator>> free_;  // size -> free blocks (newest last)
  size_t cached_ = 0;
  size_t limit_ = 0;
  size_t live_bytes_ = 0, peak_live_ = 0;  // large blocks in use: now, and the most so far
  int64_t hits_ = 0, misses_ = 0;
};

std::once_flag installed;

}  // namespace

void use_caching_cpu_allocator(int64_t limit_bytes) {
  std::call_once(installed, [] { c10::SetCPUAllocator(&CachingCpuAllocator::instance(), /*priority=*/1); });
  CachingCpuAllocator::instance().set_limit(limit_bytes);
}

CpuCacheStats cpu_cache_stats() {
  return CachingCpuAllocator::instance().stats();
}

void reset_cpu_peak() { CachingCpuAllocator::instance().reset_peak(); }

void set_cpu_memory_limit(int64_t bytes) { CachingCpuAllocator::instance().set_memory_limit(bytes); }

}  // namespace fluxtrain::train
