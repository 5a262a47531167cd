// `fluxtrain train --nproc N` (PARAMS_NUM_PROCESSES): the program starts its own ranks on this machine, as
// torchrun would — N copies of its own command line with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT set — and supervises them:
//   - SIGTERM / SIGINT are forwarded to every rank (they stop together and rank 0 saves one state);
//   - a rank that fails (exit status or signal) is named, the others get time to stop on their own (their
//     collectives fail at once on a closed connection, or after collective_timeout_seconds on a hung
//     rank) and are then killed: no rank outlives the launcher's return;
//   - each rank gets its share of the CPUs (OMP_NUM_THREADS, as torchrun sets it): `cpu_threads`, or when 0
//     this process's CPUs divided by the ranks, unless the environment already sets OMP_NUM_THREADS;
//   - each rank dies with the launcher (PR_SET_PDEATHSIG), so a SIGKILL of the launcher leaves none behind.
#pragma once

#include <string>

namespace fluxtrain::dist {

struct LaunchOptions {
  int processes = 2;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;             // 0: a free port of master_addr
  double collective_timeout = 600;  // how long the others may take to stop after one failed
  int cpu_threads = 0;              // OMP_NUM_THREADS of each rank; 0: the CPUs shared (an existing one kept)
};

// Runs the ranks to their end; returns the launcher's exit status (0 when every rank exited 0).
int launch_local_ranks(const LaunchOptions& options);

}  // namespace fluxtrain::dist
