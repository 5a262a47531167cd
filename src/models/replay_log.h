// What a checkpointed block's first run records for its recomputation, taken back in the same order
// (train/checkpointing.h): the cursor the attention stash (models/attention.h) and the product stash
// (models/linear.h) share.
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <utility>
#include <vector>

namespace fluxtrain::models {

template <typename Entry>
class ReplayLog {
 public:
  // record: the block's first run appends its entries; replay: the recomputation takes them back.
  void start_record() {
    replaying_ = false;
    next_ = 0;
    entries_.clear();
  }
  void start_replay() {
    replaying_ = true;
    next_ = 0;
  }
  bool replaying() const { return replaying_; }

  void record(Entry entry) { entries_.push_back(std::move(entry)); }
  // The next recorded entry, moved out (the recomputation runs once); `what` names the calls.
  Entry take(const char* what) {
    TORCH_CHECK(next_ < entries_.size(), "internal: a recomputed block made more ", what, " than its first run");
    return std::move(entries_[next_++]);
  }

 private:
  bool replaying_ = false;
  size_t next_ = 0;
  std::vector<Entry> entries_;
};

}  // namespace fluxtrain::models
