// Blockwise 8-bit quantisation of optimizer state, the scheme of bitsandbytes' 8-bit optimizers
// (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"): the tensor is cut into blocks of
// 256 values; each block stores its absolute maximum (fp32) and one byte per value, the index of the
// nearest entry of a 256-entry "dynamic" code book (bitsandbytes' create_dynamic_map: a sign, a
// decimal exponent 10^-6..10^0 given by the position of the first set bit, and a linear fraction) in
// value / absmax. The code book is exact at 0 and 1, so zeros stay zeros and each block's largest
// value is kept exactly; relative precision is ~1/128 for values near their block's maximum and
// coarser for the small ones (that is where the dynamic exponent is worth it for Adam's second moment,
// which spans many decades).
#pragma once

#include <ATen/core/Tensor.h>

namespace fluxtrain::optim {

constexpr int64_t kQuantBlock = 256;

// bitsandbytes' create_dynamic_map(signed) with 7 exponent bits: 256 sorted float32 values in [-1, 1]
// (signed) or [0, 1] (unsigned).
at::Tensor dynamic_code_book(bool is_signed);

struct Quantized {
  at::Tensor codes;   // uint8, same number of elements as the input (flattened)
  at::Tensor absmax;  // float32, one per block of kQuantBlock
};

Quantized quantize_blockwise(const at::Tensor& values, const at::Tensor& code_book);
// Values of `like`'s shape and dtype.
at::Tensor dequantize_blockwise(const Quantized& q, const at::Tensor& code_book, const at::Tensor& like);

}  // namespace fluxtrain::optim
