// The training loop's loader (src/train/prefetch.h): with a background worker (depth > 0) and without
// (depth 0) it hands out the same batches in the same order, restarts after a jump, applies the staging
// function, counts the wait, and delivers a failure at the batch it belongs to.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/error.h"
#include "train/prefetch.h"

namespace fluxtrain::train {
namespace {

// Batch (epoch, index) holds its position in every element; position `fail_at` throws.
class NumberedSource : public DataSource {
 public:
  explicit NumberedSource(int64_t per_epoch, int64_t fail_at = -1, int sleep_ms = 0)
      : per_epoch_(per_epoch), fail_at_(fail_at), sleep_ms_(sleep_ms) {}
  int64_t batches_per_epoch() const override { return per_epoch_; }
  int64_t images_per_epoch() const override { return per_epoch_; }
  LatentBatch batch(int64_t epoch, int64_t index) override {
    ++calls;
    const int64_t position = epoch * per_epoch_ + index;
    if (sleep_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    if (position == fail_at_) fail("batch ", position, " cannot be read");
    LatentBatch b;
    b.latents = at::full({1, 16, 2, 2}, static_cast<double>(position));
    b.t5 = at::full({1, 3, 4}, static_cast<double>(position));
    b.clip_pooled = at::full({1, 4}, static_cast<double>(position));
    return b;
  }
  std::atomic<int> calls{0};

 private:
  int64_t per_epoch_, fail_at_;
  int sleep_ms_;
};

int64_t position_of(const LatentBatch& b) { return static_cast<int64_t>(b.latents.flatten()[0].item<double>()); }

TEST(Prefetch, WorkerAndInlineGiveTheSameBatchesAcrossEpochsAndJumps) {
  for (int depth : {0, 1, 4}) {
    NumberedSource source(5);
    PrefetchingSource loader(source, depth, 3);
    std::vector<int64_t> got;
    for (int64_t p = 3; p < 12; ++p) got.push_back(position_of(loader.batch(p / 5, p % 5)));
    got.push_back(position_of(loader.batch(0, 1)));  // a jump back (as a resume would): restarts there
    got.push_back(position_of(loader.batch(0, 2)));
    EXPECT_EQ(got, (std::vector<int64_t>{3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2})) << "depth " << depth;
    if (depth == 0) {
      EXPECT_EQ(source.calls.load(), 11);  // nothing is computed ahead
    }
  }
}

TEST(Prefetch, StagingIsAppliedInEitherMode) {
  for (int depth : {0, 2}) {
    NumberedSource source(4);
    PrefetchingSource loader(source, depth, 0, [](LatentBatch b) {
      b.t5 = b.t5.to(at::kDouble) + 100;
      return b;
    });
    LatentBatch b = loader.batch(0, 2);
    EXPECT_EQ(b.t5.scalar_type(), at::kDouble) << "depth " << depth;
    EXPECT_EQ(b.t5.flatten()[0].item<double>(), 102.0);
    EXPECT_EQ(b.latents.scalar_type(), at::kFloat);
  }
}

TEST(Prefetch, InlineLoadingCountsItsTimeAsWait) {
  NumberedSource source(8, -1, 20);
  PrefetchingSource loader(source, 0);
  for (int64_t i = 0; i < 4; ++i) loader.batch(0, i);
  EXPECT_GE(loader.wait_seconds(), 4 * 0.020);
}

TEST(Prefetch, AFailureArrivesWithItsBatch) {
  for (int depth : {0, 3}) {
    NumberedSource source(6, 2);
    PrefetchingSource loader(source, depth);
    EXPECT_EQ(position_of(loader.batch(0, 0)), 0);
    EXPECT_EQ(position_of(loader.batch(0, 1)), 1);
    try {
      loader.batch(0, 2);
      ADD_FAILURE() << "batch 2 should fail (depth " << depth << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("batch 2 cannot be read"), std::string::npos) << e.what();
    }
    EXPECT_EQ(position_of(loader.batch(0, 3)), 3) << "depth " << depth;
  }
}

}  // namespace
}  // namespace fluxtrain::train
