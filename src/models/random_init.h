// Random weights for tiny test models and `fluxtrain make-tiny`: N(0, 1/fan_in) for matrices and
// convolution kernels, 1 + N(0, 0.1) for norm scales/weights, N(0, 0.05) for biases and other vectors.
#pragma once

#include <cstdint>

namespace torch::nn {
class Module;
}

namespace fluxtrain::models {

void init_random(torch::nn::Module& module, uint64_t seed);

}  // namespace fluxtrain::models
