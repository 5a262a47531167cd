#include "dist/nccl.h"

#include "core/error.h"

#if __has_include(<nccl.h>) && __has_include(<cuda_runtime_api.h>)
#define FLUXTRAIN_HAVE_NCCL 1
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace fluxtrain::dist {

#ifdef FLUXTRAIN_HAVE_NCCL
bool have_nccl() { return true; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                   std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
}
#else
bool have_nccl() { return false; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                   std::chrono::milliseconds) {
  fail("this fluxtrain was built without NCCL (nccl.h was not found at build time), so it cannot train on ",
       "several GPUs; rebuild against a CUDA or ROCm libtorch with NCCL's headers (the container images do), or ",
       "train on one GPU (num_processes = 1)");
}
#endif

}  // namespace fluxtrain::dist
