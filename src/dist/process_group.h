// Data parallelism on PyTorch's own c10d (docs/distributed.md): a TCPStore for the rendezvous and small
// exchanges, and a process group backend for the collectives — Gloo on the CPU, NCCL (RCCL on ROCm) on
// GPUs. No transport of our own: every byte between ranks goes through c10d.
#pragma once

#include <c10/core/Device.h>

#include <cstddef>
#include <memory>
#include <string>

#include "train/parallel.h"

namespace fluxtrain::dist {

// Where this process sits, as torchrun (or `fluxtrain train --nproc N`) says it: RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE,
// TORCHELASTIC_RESTART_COUNT. The app reads the variables (through its option table) and fills this.
struct RankInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool use_agent_store = false;  // torchrun's agent serves the store: every rank connects as a client
  int restart_count = 0;         // torchrun's restarts: each attempt uses its own keys in the store
};

struct GroupOptions {
  double timeout_seconds = 600;        // collective_timeout_seconds: the longest wait for another rank
  c10::Device device{c10::kCPU};       // CPU: Gloo; CUDA (or ROCm): NCCL (RCCL)
  size_t bucket_bytes = 25u << 20;     // gradient all-reduce buckets (DDP's default, 25 MiB)
};

// Joins the group (blocks until every rank has come, at most timeout_seconds). Errors name the address,
// the rank and the fix.
std::unique_ptr<train::Parallel> join_group(const RankInfo& rank, const GroupOptions& options);

// "gloo" or "nccl": the backend join_group uses for `device`.
std::string backend_name(const c10::Device& device);

}  // namespace fluxtrain::dist
