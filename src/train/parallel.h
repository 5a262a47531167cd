// The training loop's view of data parallelism: what it asks of the other ranks. src/dist implements it on
// PyTorch's c10d process groups (Gloo on the CPU, NCCL on CUDA/ROCm); a null pointer is one process.
// The seam lets `train` (below `dist` in the layer order) run the same loop on one rank or many.
//
// Every call is collective: each rank makes the same calls in the same order (the loop's control flow is
// the same on every rank because everything it branches on is either agreed here or identical by
// construction). A call that fails (another rank died, stopped or hung past the collective timeout) throws
// an Error naming this rank and `phase`.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace fluxtrain::train {

class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Gradient averaging of the trained tensors. attach() once; then, in each optimizer step,
  // before_last_backward() arms hooks that launch bucketed all-reduces (sums) as the last micro-batch's
  // backward makes gradients ready, and finish_gradients() launches what is left (a tensor without a
  // gradient on this rank counts as zeros), waits, and leaves every gradient summed over the ranks.
  virtual void attach(const std::vector<at::Tensor>& params) = 0;
  virtual void before_last_backward() = 0;
  virtual void finish_gradients() = 0;
  // Of the buckets of the last finish_gradients(): how many the hooks launched during the backward pass
  // (the rest were launched at its end), and how many there are.
  virtual std::pair<size_t, size_t> buckets_overlapped() const = 0;

  // Element-wise sums over the ranks (losses, flags).
  virtual std::vector<double> sum(const std::vector<double>& values, const std::string& phase) = 0;
  // Rank `root`'s tensors into every rank's (same shapes and dtypes on every rank), in place.
  virtual void broadcast(std::vector<at::Tensor>& tensors, const std::string& phase, int root = 0) = 0;
  // Rank 0's text, on every rank.
  virtual std::string broadcast_text(const std::string& text, const std::string& phase) = 0;
  // Every rank's text, in rank order, on every rank.
  virtual std::vector<std::string> gather_text(const std::string& text, const std::string& phase) = 0;
  virtual void barrier(const std::string& phase) = 0;
  // A barrier for a long phase that one rank does for all or that takes each rank its own time (a dataset
  // download, filling the caches, rank 0's samples): waits through the store with no collective timeout, up
  // to `max_seconds`. A rank that dies meanwhile is the launcher's (or torchrun's) to report.
  virtual void wait_for_all(const std::string& phase, double max_seconds) = 0;
};

}  // namespace fluxtrain::train
