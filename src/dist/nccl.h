// The NCCL (RCCL on ROCm) backend of c10d, in its own file: it is compiled only where the build finds
// nccl.h (the libtorch CUDA/ROCm builds); elsewhere make_nccl_backend is an Error saying so.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace fluxtrain::dist {

bool have_nccl();
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                   std::chrono::milliseconds timeout);

}  // namespace fluxtrain::dist
