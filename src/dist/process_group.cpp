#include "dist/process_group.h"

// c10d's Gloo backend: its header needs gloo's headers (Debian's libgloo-dev; the wheel's libtorch carries
// the library itself). Only pointers to gloo's types are used here.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/version.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "core/stop.h"
#include "dist/nccl.h"

namespace fluxtrain::dist {
namespace {

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

class Group;

// Called by autograd after a trained tensor's gradient was accumulated (the last micro-batch's backward).
class GradientReady : public torch::autograd::PostAccumulateGradHook {
 public:
  GradientReady(Group* group, size_t index) : group_(group), index_(index) {}
  void operator()(const torch::autograd::Variable&) override;

 private:
  Group* group_;
  size_t index_;
};

// One flat buffer of gradients all-reduced at once (DDP's buckets): the tensors of a bucket share a dtype
// and a device; buckets are filled in reverse order of the parameters, the order in which the backward
// pass makes their gradients ready, and launched strictly in bucket order on every rank.
struct Bucket {
  std::vector<size_t> params;
  int64_t numel = 0;
  size_t ready = 0;
  bool launched = false;
  at::Tensor flat;
  c10::intrusive_ptr<c10d::Work> work;
};

class Group : public train::Parallel {
 public:
  Group(const RankInfo& info, const GroupOptions& options) : info_(info), options_(options) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(info.master_port);
    store_options.isServer = info.rank == 0 && !info.use_agent_store;
    if (!info.use_agent_store) store_options.numWorkers = static_cast<size_t>(info.world_size);
    store_options.waitWorkers = !info.use_agent_store;
    store_options.timeout = timeout;
    try {
      store_ = c10::make_intrusive<c10d::TCPStore>(info.master_addr, store_options);
    } catch (const std::exception& e) {
      fail("rank ", info.rank, " of ", info.world_size, ": cannot ",
           store_options.isServer ? "serve" : "reach", " the rendezvous store at MASTER_ADDR:MASTER_PORT = ",
           info.master_addr, ":", info.master_port, " (", first_line(e.what()), "); ",
           store_options.isServer ? "the port is taken: set MASTER_PORT to a free port"
                                  : "check that rank 0 runs and that MASTER_ADDR and MASTER_PORT are its address "
                                    "and a port it can open; the wait is bounded by collective_timeout_seconds");
    }
    // Each torchrun attempt has its own keys (the agent's store outlives a restart).
    prefixed_ = c10::make_intrusive<c10d::PrefixStore>(cat("fluxtrain/", info.restart_count, "/"), store_);
    try {
      if (options.device.is_cuda()) {
        backend_ = make_nccl_backend(c10::make_intrusive<c10d::PrefixStore>("nccl/", prefixed_), info.rank,
                                     info.world_size, timeout);
      } else {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
        // The device Python's init_process_group makes (GLOO_SOCKET_IFNAME honoured).
        auto gloo = c10d::ProcessGroupGloo::Options::create_default(timeout);
#else
        auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
#endif
        backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo/", prefixed_),
                                                               info.rank, info.world_size, gloo);
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail("rank ", info.rank, " of ", info.world_size, ": the ", backend_name(options.device),
           " process group did not form (", first_line(e.what()), "); every rank must start within ",
           "collective_timeout_seconds (", options.timeout_seconds, " s) and reach the others' addresses ",
           "(GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME choose the network interface)");
    }
  }

  int rank() const override { return info_.rank; }
  std::pair<size_t, size_t> buckets_overlapped() const override { return {overlapped_, buckets_.size()}; }
  int world_size() const override { return info_.world_size; }

  void attach(const std::vector<at::Tensor>& params) override {
    std::lock_guard<std::mutex> lock(mutex_);
    params_ = params;
    bucket_of_.assign(params.size(), 0);
    ready_.assign(params.size(), false);
    buckets_.clear();
    int64_t bytes = 0;
    for (size_t k = params.size(); k-- > 0;) {
      const at::Tensor& p = params[k];
      const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
      const bool fits = !buckets_.empty() && bytes + size <= static_cast<int64_t>(options_.bucket_bytes) &&
                        params[buckets_.back().params.front()].scalar_type() == p.scalar_type() &&
                        params[buckets_.back().params.front()].device() == p.device();
      if (!fits) {
        buckets_.emplace_back();
        bytes = 0;
      }
      buckets_.back().params.push_back(k);
      buckets_.back().numel += p.numel();
      bytes += size;
      bucket_of_[k] = buckets_.size() - 1;
      torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<GradientReady>(this, k));
    }
  }

  void before_last_backward() override {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = true;
  }

  // From the autograd engine's thread.
  void ready(size_t index) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!armed_) return;
    if (ready_[index]) {
      twice_ = true;  // used twice in one backward: its bucket may have left with a partial gradient
      return;
    }
    ready_[index] = true;
    ++buckets_[bucket_of_[index]].ready;
    while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].params.size()) launch(next_++);
  }

  void finish_gradients() override {
    std::unique_lock<std::mutex> lock(mutex_);
    armed_ = false;
    overlapped_ = next_;
    while (next_ < buckets_.size()) launch(next_++);
    while (completed_ < buckets_.size()) complete(completed_++);
    for (Bucket& b : buckets_) {
      b.ready = 0;
      b.launched = false;
    }
    std::fill(ready_.begin(), ready_.end(), false);
    next_ = 0;
    completed_ = 0;
    in_flight_bytes_ = 0;
    if (twice_) {
      twice_ = false;
      fail("internal: a trained tensor received its gradient twice in one backward pass, which the bucketed ",
           "all-reduce does not support");
    }
  }

  std::vector<double> sum(const std::vector<double>& values, const std::string& phase) override {
    at::Tensor t = at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(options_.device);
    std::vector<at::Tensor> tensors = {t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    wait(call([&] { return backend_->allreduce(tensors, o); }, phase), phase);
    at::Tensor host = tensors[0].cpu();
    return std::vector<double>(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  }

  void broadcast(std::vector<at::Tensor>& tensors, const std::string& phase, int root) override {
    at::NoGradGuard no_grad;
    for (at::Tensor& t : tensors) {
      // The backends take contiguous tensors on the group's device; anything else goes through a copy.
      const bool direct = t.is_contiguous() && t.device() == options_.device;
      std::vector<at::Tensor> one = {direct ? t : t.to(options_.device).contiguous()};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      wait(call([&] { return backend_->broadcast(one, o); }, phase), phase);
      if (!direct) t.copy_(one[0]);
    }
  }

  std::string broadcast_text(const std::string& text, const std::string& phase) override {
    const std::string key = cat("text/", sequence_++);
    return guarded(phase, [&] {
      if (info_.rank == 0) prefixed_->set(key, std::vector<uint8_t>(text.begin(), text.end()));
      const std::vector<uint8_t> got = prefixed_->get(key);
      return std::string(got.begin(), got.end());
    });
  }

  std::vector<std::string> gather_text(const std::string& text, const std::string& phase) override {
    const std::string key = cat("gather/", sequence_++, "/");
    return guarded(phase, [&] {
      prefixed_->set(key + std::to_string(info_.rank), std::vector<uint8_t>(text.begin(), text.end()));
      std::vector<std::string> out;
      for (int r = 0; r < info_.world_size; ++r) {
        const std::vector<uint8_t> got = prefixed_->get(key + std::to_string(r));
        out.emplace_back(got.begin(), got.end());
      }
      return out;
    });
  }

  void wait_for_all(const std::string& phase, double max_seconds) override {
    const std::string key = cat("arrived/", sequence_++);
    guarded(phase, [&] {
      prefixed_->add(key, 1);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(max_seconds);
      while (prefixed_->add(key, 0) < info_.world_size) {
        if (std::chrono::steady_clock::now() > deadline)
          fail("rank ", info_.rank, " of ", info_.world_size, ": ", phase, ": not every rank arrived within ",
               max_seconds, " s");
        // Before training a stop signal ends the wait (stop::Stopped, exit 0, as every phase); in the training
        // loop (a stop::Deferral) the loop handles it after the wait.
        stop::check(phase);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      return 0;
    });
  }

  void barrier(const std::string& phase) override {
    c10d::BarrierOptions o;
    if (options_.device.is_cuda()) o.device_ids = {options_.device.index()};
    wait(call([&] { return backend_->barrier(o); }, phase), phase);
  }

 private:
  [[noreturn]] void failed(const std::string& phase, const std::string& why) const {
    fail("rank ", info_.rank, " of ", info_.world_size, ": ", phase, " failed (", first_line(why),
         "): another rank stopped, died or hung (a wait lasts at most collective_timeout_seconds, ",
         options_.timeout_seconds, " s); every rank stops, and a restart resumes from the newest complete state");
  }

  template <typename Fn>
  auto guarded(const std::string& phase, Fn fn) -> decltype(fn()) {
    try {
      return fn();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      failed(phase, e.what());
    }
  }

  template <typename Fn>
  c10::intrusive_ptr<c10d::Work> call(Fn fn, const std::string& phase) {
    return guarded(phase, fn);
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const std::string& phase) {
    if (!work) return;
    guarded(phase, [&] { return work->wait(); });
  }

  void launch(size_t index) {
    Bucket& b = buckets_[index];
    std::vector<at::Tensor> parts;
    for (size_t k : b.params) {
      const at::Tensor& p = params_[k];
      parts.push_back(p.grad().defined() ? p.grad().detach().reshape({-1}) : at::zeros({p.numel()}, p.options()));
    }
    b.flat = parts.size() == 1 ? parts[0].clone() : at::cat(parts);
    std::vector<at::Tensor> tensors = {b.flat};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    b.work = call([&] { return backend_->allreduce(tensors, o); }, "the gradient all-reduce");
    b.launched = true;
    // The flat copies in flight are bounded (4 buckets' worth), not a second copy of every gradient: past
    // the bound the oldest bucket is waited for and written back.
    in_flight_bytes_ += b.flat.numel() * static_cast<int64_t>(b.flat.element_size());
    while (in_flight_bytes_ > 4 * static_cast<int64_t>(options_.bucket_bytes) && completed_ < index)
      complete(completed_++);
  }

  // Waits for a launched bucket and writes the summed gradients back.
  void complete(size_t index) {
    Bucket& b = buckets_[index];
    wait(b.work, "the gradient all-reduce");
    int64_t offset = 0;
    at::NoGradGuard no_grad;
    for (size_t k : b.params) {
      at::Tensor& p = params_[k];
      at::Tensor part = b.flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(part);
      else
        p.mutable_grad() = part.clone();
      offset += p.numel();
    }
    in_flight_bytes_ -= b.flat.numel() * static_cast<int64_t>(b.flat.element_size());
    b.flat = at::Tensor();
    b.work.reset();
  }

  RankInfo info_;
  GroupOptions options_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Store> prefixed_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  int64_t sequence_ = 0;

  std::mutex mutex_;
  std::vector<at::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<bool> ready_;
  std::vector<Bucket> buckets_;
  size_t next_ = 0;       // the next bucket to launch
  size_t completed_ = 0;  // buckets waited for and written back, in order
  int64_t in_flight_bytes_ = 0;
  size_t overlapped_ = 0;
  bool armed_ = false;
  bool twice_ = false;
};

void GradientReady::operator()(const torch::autograd::Variable&) { group_->ready(index_); }

}  // namespace

std::string backend_name(const c10::Device& device) { return device.is_cuda() ? "nccl" : "gloo"; }

std::unique_ptr<train::Parallel> join_group(const RankInfo& rank, const GroupOptions& options) {
  return std::make_unique<Group>(rank, options);
}

}  // namespace fluxtrain::dist
