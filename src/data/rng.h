// The data pipeline's random numbers: a SplitMix64 stream with our own uniform-integer and uniform-float
// functions, so that a (seed, epoch, ...) key gives the same shuffles, crops, flips and caption edits on
// every platform and standard library (std::uniform_int_distribution and friends are not portable).
//
// Streams are derived from keys, never carried along: DataRng::derive(seed, epoch, a, b) is the stream of
// one purpose at one position, so any position of any epoch can be recomputed on resume.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace fluxtrain::data {

class DataRng {
 public:
  explicit DataRng(uint64_t state) : state_(state) {}

  // A stream keyed by a sequence of numbers (seed, purpose tag, epoch, index, ...). Each value is folded
  // in through the SplitMix64 finaliser, so nearby keys give unrelated streams.
  static DataRng derive(std::initializer_list<uint64_t> key) {
    uint64_t h = 0x6a09e667f3bcc909ULL;  // arbitrary non-zero start (sqrt(2) fraction)
    for (uint64_t k : key) h = mix(h ^ mix(k + 0x9e3779b97f4a7c15ULL));
    return DataRng(h);
  }

  // SplitMix64 (Steele, Lea, Flood 2014; public domain reference by Vigna).
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix(state_);
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n) for n >= 1, by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    if (n <= 1) return 0;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // accept values < limit
    uint64_t x = next();
    while (x >= limit) x = next();
    return x % n;
  }

  // Uniform integer in [lo, hi] (inclusive, as Python's random.randint).
  int64_t between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }

  // Fisher-Yates, from the back.
  template <typename T>
  void shuffle(std::vector<T>& items) {
    for (size_t i = items.size(); i > 1; --i) {
      size_t j = static_cast<size_t>(below(i));
      std::swap(items[i - 1], items[j]);
    }
  }

 private:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

}  // namespace fluxtrain::data
