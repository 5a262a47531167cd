#include "train/prefetch.h"

#include <ATen/ATen.h>

#include <chrono>

namespace fluxtrain::train {

PrefetchingSource::PrefetchingSource(DataSource& inner, int depth, int64_t start, BatchStaging stage)
    : inner_(inner),
      stage_(std::move(stage)),
      per_epoch_(inner.batches_per_epoch()),
      depth_(std::max(0, depth)),
      next_(start),
      wanted_(start) {
  if (depth_ > 0) worker_ = std::thread([this] { work(); });
}

PrefetchingSource::~PrefetchingSource() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

void PrefetchingSource::work() {
  at::NoGradGuard no_grad;  // grad mode is thread-local: batches are data, never part of a graph
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [this] { return stop_ || next_ < wanted_ + depth_; });
    if (stop_) return;
    const int64_t position = next_++;
    const uint64_t generation = generation_;
    lock.unlock();
    Slot slot;
    try {
      slot.batch = compute(position);
    } catch (...) {
      slot.error = std::current_exception();
    }
    lock.lock();
    if (generation == generation_) ready_[position] = std::move(slot);
    changed_.notify_all();
  }
}

LatentBatch PrefetchingSource::compute(int64_t position) {
  LatentBatch batch = inner_.batch(position / per_epoch_, position % per_epoch_);
  return stage_ ? stage_(std::move(batch)) : batch;
}

LatentBatch PrefetchingSource::batch(int64_t epoch, int64_t index) {
  const int64_t position = epoch * per_epoch_ + index;
  const auto started = std::chrono::steady_clock::now();
  if (depth_ == 0) {
    struct Clock {  // counts the time even when compute() throws
      std::chrono::steady_clock::time_point started;
      double& total;
      ~Clock() { total += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); }
    } clock{started, wait_seconds_};
    at::NoGradGuard no_grad;
    return compute(position);
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (position != wanted_ && ready_.count(position) == 0) {
    // Not the sequence the worker follows: restart it here (drops what it had computed).
    ready_.clear();
    ++generation_;
    next_ = position;
  }
  wanted_ = position;
  changed_.notify_all();
  changed_.wait(lock, [&] { return ready_.count(position) != 0; });
  Slot slot = std::move(ready_.at(position));
  ready_.erase(ready_.begin(), ready_.upper_bound(position));
  wanted_ = position + 1;
  changed_.notify_all();
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (slot.error) std::rethrow_exception(slot.error);
  return std::move(slot.batch);
}

}  // namespace fluxtrain::train
