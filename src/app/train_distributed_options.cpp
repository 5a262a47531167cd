// The train option table's distributed group: torchrun's variables, --nproc and the process group's settings
// (docs/distributed.md).
#include "app/train_option_parts.h"

namespace fluxtrain::app {

std::vector<OptionSpec> distributed_specs() {
  using D = TrainSettings::Distributed;
  // torchrun's variables: set by torchrun (or by `--nproc`) for each rank, never in a file.
  auto rank_variable = [](const char* name, const char* var, const char* help, double min) {
    return Opt<S>(name, kInt, "distributed", "", help).env(var).no_flag().not_in_file().min(min).safe_on_resume();
  };
  std::vector<Opt<S>> distributed = {
      Opt<S>("num_processes", kString, "distributed", "auto",
             "Ranks (processes, one per GPU) this command starts on this machine for data-parallel training: a "
             "count, or auto = every visible GPU (1 on the CPU). Ignored under torchrun, which starts the ranks "
             "itself. The dataset's batch_size is per rank: the global batch is batch_size x ranks x "
             "gradient_accumulation_steps.")
          .flag("--nproc")
          .check(count_or_auto(1, "a count"))
          .allowed("a count >= 1, or auto")
          .safe_on_resume()
          .to(&S::distributed, &D::num_processes),
      Opt<S>("num_cpu_threads_per_process", kInt, "distributed", "0",
             "CPU threads (libtorch's intra-op pool, OpenMP) of each rank that --nproc starts, as accelerate "
             "launch's option of that name: 0 = this machine's CPUs (its affinity mask) shared evenly, at least "
             "1 each; an OMP_NUM_THREADS already in the environment is then kept. Ranks that each took every CPU "
             "would oversubscribe the machine (2 ranks on 2 cores: steps 4x slower).")
          .min(0)
          .safe_on_resume()
          .to(&S::distributed, &D::cpu_threads_per_process),
      Opt<S>("collective_timeout_seconds", kReal, "distributed", "600",
             "The longest a rank waits for the others (a collective, the start, the store): past it, a rank that "
             "died or hung stops every rank with an error naming the phase.")
          .min(0, true)
          .safe_on_resume()
          .to(&S::distributed, &D::collective_timeout_seconds),
      Opt<S>("zero_stage", kInt, "distributed", "0",
             "With several ranks: 1 shards the optimizer state (ZeRO stage 1): each rank keeps the state of its "
             "share of the trained tensors, updates them and sends them to the others, so a full fine-tuning's "
             "AdamW state (8 bytes per weight) takes 1/ranks of it per GPU; the numbers are the same as with 0 "
             "(every rank keeps all). Element-wise optimizers only (not Prodigy, whose step needs every gradient).")
          .min(0)
          .max(1)
          .memory_only()
          .to(&S::training, &T::zero_stage),
      rank_variable("rank", "RANK", "This process's rank in the group (torchrun sets it).", 0)
          .to(&S::distributed, &D::rank),
      rank_variable("world_size", "WORLD_SIZE", "Ranks in the group (torchrun sets it).", 1)
          .to(&S::distributed, &D::world_size),
      rank_variable("local_rank", "LOCAL_RANK", "This process's rank on its machine: its GPU (torchrun sets it).", 0)
          .to(&S::distributed, &D::local_rank),
      rank_variable("local_world_size", "LOCAL_WORLD_SIZE", "Ranks on this machine (torchrun sets it).", 1)
          .to(&S::distributed, &D::local_world_size),
      Opt<S>("master_addr", kString, "distributed", "127.0.0.1",
             "Address of rank 0's rendezvous store (torchrun sets it).")
          .env("MASTER_ADDR")
          .no_flag()
          .not_in_file()
          .safe_on_resume()
          .to(&S::distributed, &D::master_addr),
      rank_variable("master_port", "MASTER_PORT",
                    "Port of rank 0's rendezvous store (torchrun sets it; unset with --nproc: a free port).", 1)
          .max(65535)
          .to(&S::distributed, &D::master_port),
      Opt<S>("torchelastic_use_agent_store", kBool, "distributed", "false",
             "torchrun's agent serves the rendezvous store: every rank connects to it (torchrun sets it).")
          .env("TORCHELASTIC_USE_AGENT_STORE")
          .no_flag()
          .not_in_file()
          .safe_on_resume()
          .to(&S::distributed, &D::use_agent_store),
      Opt<S>("torchelastic_restart_count", kInt, "distributed", "0",
             "torchrun's restart attempt (torchrun sets it): each attempt meets under its own keys.")
          .env("TORCHELASTIC_RESTART_COUNT")
          .no_flag()
          .not_in_file()
          .min(0)
          .safe_on_resume()
          .to(&S::distributed, &D::restart_count),
  };
  return {distributed.begin(), distributed.end()};
}

}  // namespace fluxtrain::app
