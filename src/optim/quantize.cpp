#include "optim/quantize.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fluxtrain::optim {

at::Tensor dynamic_code_book(bool is_signed) {
  // bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8).
  const int max_exponent_bits = 7, non_sign_bits = 7;
  std::vector<double> data;
  for (int i = 0; i < max_exponent_bits; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << (i + non_sign_bits - max_exponent_bits)) + 1
                                    : (int64_t{1} << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    // Midpoints of linspace(0.1, 1, items), in float32 as torch.linspace makes them, times the decade as
    // a float32 tensor op (as bitsandbytes does: a double product rounded once differs in the last bit
    // for ~30 of the 256 values; tests/parity/test_optimizers.py compares the books exactly).
    at::Tensor bounds = at::linspace(0.1, 1.0, items, at::kFloat);
    at::Tensor means = (bounds.slice(0, 0, items - 1) + bounds.slice(0, 1)) / 2.0;
    const double scale = std::pow(10.0, -(max_exponent_bits - 1) + i);
    at::Tensor positive = means * scale, negative = means * -scale;
    auto pos = positive.accessor<float, 1>();
    auto neg = negative.accessor<float, 1>();
    for (int64_t j = 0; j < pos.size(0); ++j) {
      data.push_back(pos[j]);
      if (is_signed) data.push_back(neg[j]);
    }
  }
  data.push_back(0.0);
  data.push_back(1.0);
  while (data.size() < 256) data.push_back(0.0);
  std::sort(data.begin(), data.end());
  return at::tensor(data, at::kDouble).to(at::kFloat);
}

Quantized quantize_blockwise(const at::Tensor& values, const at::Tensor& code_book) {
  at::Tensor flat = values.detach().flatten().to(at::kFloat);
  const int64_t n = flat.numel(), blocks = (n + kQuantBlock - 1) / kQuantBlock;
  at::Tensor padded = at::constant_pad_nd(flat, {0, blocks * kQuantBlock - n}).view({blocks, kQuantBlock});
  at::Tensor absmax = padded.abs().amax(1);
  at::Tensor scale = at::where(absmax > 0, absmax, at::ones_like(absmax));
  at::Tensor normalized = (padded / scale.unsqueeze(1)).flatten().slice(0, 0, n).clamp(-1.0, 1.0);
  // Nearest code: compare the neighbours on either side of the insertion point.
  at::Tensor hi = at::searchsorted(code_book, normalized).clamp(0, 255);
  at::Tensor lo = (hi - 1).clamp(0, 255);
  at::Tensor pick_lo = (normalized - code_book.index({lo})).abs() <= (code_book.index({hi}) - normalized).abs();
  return {at::where(pick_lo, lo, hi).to(at::kByte), absmax};
}

at::Tensor dequantize_blockwise(const Quantized& q, const at::Tensor& code_book, const at::Tensor& like) {
  const int64_t n = like.numel(), blocks = q.absmax.numel();
  at::Tensor values = code_book.index({q.codes.to(at::kLong)});
  at::Tensor padded = at::constant_pad_nd(values, {0, blocks * kQuantBlock - n}).view({blocks, kQuantBlock});
  return (padded * q.absmax.unsqueeze(1)).flatten().slice(0, 0, n).view(like.sizes()).to(like.scalar_type());
}

}  // namespace fluxtrain::optim
