// Background prefetch for the training loop: a worker thread computes the batches the trainer will ask
// for next (positions are sequential: epoch * batches_per_epoch + index), at most `depth` ahead, while
// the current step trains. A request for another position (the first one after a resume) restarts the
// worker there. An error in the worker reaches the trainer at the batch it belongs to. Depth 0 has no
// worker: each batch is computed when asked for, in the caller's thread (the baseline of
// bench/data_wait.py). Either way the time batch() takes is counted as the loop's wait for data.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "train/data_source.h"

namespace fluxtrain::train {

// Applied to each batch where it is computed (the worker thread), e.g. to put it into pinned memory.
using BatchStaging = std::function<LatentBatch(LatentBatch)>;

class PrefetchingSource : public DataSource {
 public:
  // The worker starts at position `start` (epoch * batches_per_epoch + index).
  PrefetchingSource(DataSource& inner, int depth, int64_t start = 0, BatchStaging stage = {});
  ~PrefetchingSource() override;
  PrefetchingSource(const PrefetchingSource&) = delete;
  PrefetchingSource& operator=(const PrefetchingSource&) = delete;

  int64_t batches_per_epoch() const override { return per_epoch_; }
  int64_t images_per_epoch() const override { return inner_.images_per_epoch(); }
  LatentBatch batch(int64_t epoch, int64_t index) override;

  // Seconds batch() spent waiting for the worker (the loader's cost to the training loop).
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct Slot {
    LatentBatch batch;
    std::exception_ptr error;
  };
  void work();
  LatentBatch compute(int64_t position);

  DataSource& inner_;
  BatchStaging stage_;
  const int64_t per_epoch_;
  const int depth_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int64_t, Slot> ready_;
  int64_t next_ = 0;         // the next position the worker computes
  int64_t wanted_ = 0;       // the position the trainer asks for next
  uint64_t generation_ = 0;  // bumped on a restart, so a batch computed for the old sequence is dropped
  bool stop_ = false;
  double wait_seconds_ = 0;
  std::thread worker_;
};

}  // namespace fluxtrain::train
