#include "models/linear.h"

#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::models {

at::Tensor register_empty(torch::nn::Module& module, const std::string& name, at::IntArrayRef shape,
                          const at::TensorOptions& options) {
  return module.register_parameter(name, at::empty(shape, options));
}

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias, const at::TensorOptions& options,
                       std::optional<at::ScalarType> weight_dtype)
    : in_features(in), out_features(out) {
  weight = register_empty(*this, "weight", {out, in}, weight_dtype ? options.dtype(*weight_dtype) : options);
  if (with_bias) bias = register_empty(*this, "bias", {out}, options);
}

at::Tensor LinearImpl::weight_as(at::ScalarType dtype) const {
  return weight.scalar_type() == dtype ? weight : weight.to(dtype);
}

at::Tensor LinearImpl::forward_base(const at::Tensor& x) {
  at::Tensor b = bias.defined() && bias.scalar_type() != x.scalar_type() ? bias.to(x.scalar_type()) : bias;
  if (fp8_matmul != Fp8Matmul::off && weight.scalar_type() == at::kFloat8_e4m3fn &&
      fp8_matmul_supported(x.device(), fp8_matmul, x.scalar_type())) {
    return fp8_linear(x, weight, b, fp8_matmul);
  }
  const bool upcast = weight.scalar_type() != x.scalar_type();
  if (upcast && at::GradMode::is_enabled() && !weight.requires_grad() && !(b.defined() && b.requires_grad()) &&
      x.requires_grad()) {
    return upcast_linear(x, weight, b);
  }
  return at::linear(x, weight_as(x.scalar_type()), b);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  at::Tensor out = forward_base(x);
  return adapter ? adapter->forward(x, out) : out;
}

at::Tensor LinearImpl::forward_stashed(const at::Tensor& x, ProductStash* stash, bool wide) {
  if (!stash) return forward(x);
  at::Tensor out = stash->base(*this, x, wide);
  return adapter ? adapter->forward(x, out) : out;
}

namespace {

constexpr double kE4M3Max = 448.0;

// x2d [M, K] -> (e4m3 values, fp32 inverse scale [] or [M, 1]) with x ≈ values * inverse scale.
// The arithmetic is the float8 training recipe's (torchao): scale = 448 / amax computed in float64 and
// rounded to float32, values = saturate(x * scale), inverse = 1 / scale. Dividing by amax / 448 instead
// differs in the last bit for some elements, and an element on an e4m3 rounding boundary then lands on
// the neighbouring fp8 value: a different number now and then in a forward pass.
std::pair<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x2d, Fp8Matmul mode) {
  at::Tensor x32 = x2d.to(at::kFloat);
  at::Tensor amax = mode == Fp8Matmul::rowwise ? x32.abs().amax({1}, /*keepdim=*/true) : x32.abs().max();
  at::Tensor scale = (kE4M3Max / amax.to(at::kDouble).clamp_min(1e-12)).to(at::kFloat);
  at::Tensor values = (x32 * scale).clamp(-kE4M3Max, kE4M3Max).to(at::kFloat8_e4m3fn);
  return {values, scale.reciprocal()};
}

at::Tensor scaled_mm(const at::Tensor& x, const at::Tensor& weight, Fp8Matmul mode, at::ScalarType out_dtype) {
  at::Tensor x2d = x.reshape({-1, x.size(-1)});
  auto [values, scale_a] = quantize_rows(x2d, mode);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(x.device());
  at::Tensor scale_b = mode == Fp8Matmul::rowwise ? at::ones({1, weight.size(0)}, f32) : at::ones({}, f32);
  // weight [N, K] row-major: its transpose is the column-major [K, N] the kernel wants.
  at::Tensor out = at::_scaled_mm(values, weight.t(), scale_a, scale_b, std::nullopt, std::nullopt, out_dtype);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = weight.size(0);
  return out.reshape(shape);
}

class Fp8LinearFunction : public torch::autograd::Function<Fp8LinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            int64_t mode) {
    ctx->save_for_backward({weight});
    return scaled_mm(x, weight, static_cast<Fp8Matmul>(mode), x.scalar_type());
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    at::Tensor weight = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    return {at::matmul(g, weight.to(g.scalar_type())), at::Tensor(), at::Tensor()};
  }
};

// A frozen Linear whose weight is stored in another dtype (fp8 base): at::linear would keep the upcast
// copy of the weight for the input gradient, one per layer of every block whose graph is kept; this keeps
// the stored weight and upcasts it again in backward. The same products as at::linear's, so the same bits.
class UpcastLinearFunction : public torch::autograd::Function<UpcastLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) {
    ctx->save_for_backward({weight});
    return at::linear(x, weight.to(x.scalar_type()), bias);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    at::Tensor weight = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    return {g.defined() ? at::matmul(g, weight.to(g.scalar_type())) : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::atomic<int64_t> product_replays{0};

struct KeptProduct : torch::CustomClassHolder {
  at::Tensor out;
};

class KeptProductFunction : public torch::autograd::Function<KeptProductFunction> {
 public:
  // Returns the product kept by the first run; backward is the frozen layer's input gradient, g W (the
  // product at::linear's and fp8_linear's backward compute).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            c10::intrusive_ptr<KeptProduct> kept) {
    (void)x;
    ctx->save_for_backward({weight});
    return std::move(kept->out);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    at::Tensor weight = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    at::Tensor dx = g.defined()
                        ? at::matmul(g, weight.scalar_type() == g.scalar_type() ? weight : weight.to(g.scalar_type()))
                        : at::Tensor();
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor ProductStash::base(LinearImpl& linear, const at::Tensor& x, bool wide) {
  const bool frozen = !linear.weight.requires_grad() && !(linear.bias.defined() && linear.bias.requires_grad());
  if (keep_ == KeepProducts::none || (wide && keep_ != KeepProducts::all) || !frozen) return linear.forward_base(x);
  if (!log_.replaying()) {
    // The first run: without autograd, the product is kept; with it (a block that is not recomputed)
    // nothing is kept.
    at::Tensor out = linear.forward_base(x);
    log_.record(at::GradMode::is_enabled() ? at::Tensor() : out);
    return out;
  }
  at::Tensor out = log_.take("kept products");
  if (!out.defined()) return linear.forward_base(x);
  TORCH_CHECK(out.dim() == x.dim() && out.sizes().slice(0, x.dim() - 1) == x.sizes().slice(0, x.dim() - 1),
              "internal: a recomputed block's product changed shape");
  product_replays.fetch_add(1, std::memory_order_relaxed);
  auto kept = c10::make_intrusive<KeptProduct>();
  kept->out = std::move(out);
  return KeptProductFunction::apply(x, linear.weight, std::move(kept));
}

int64_t kept_product_replays() {
  return product_replays.load(std::memory_order_relaxed);
}

at::Tensor upcast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return UpcastLinearFunction::apply(x, weight, bias);
}

at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Fp8Matmul mode) {
  at::Tensor out = Fp8LinearFunction::apply(x, weight, static_cast<int64_t>(mode));
  return bias.defined() ? out + bias : out;
}

namespace {

struct Fp8Probe {
  std::string failure;  // "" = supported
  bool warned = false;
};

// The probe of fp8_matmul_failure / fp8_matmul_supported, once per device, mode and output dtype.
Fp8Probe& probe_fp8_matmul(at::Device device, Fp8Matmul mode, at::ScalarType out_dtype,
                           std::unique_lock<std::mutex>& lock) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int>, Fp8Probe> known;
  lock = std::unique_lock<std::mutex>(mutex);
  auto key = std::make_tuple(static_cast<int>(device.type()), static_cast<int>(device.index()), static_cast<int>(mode),
                             static_cast<int>(out_dtype));
  auto it = known.find(key);
  if (it != known.end()) return it->second;
  Fp8Probe probe;
  try {
    at::NoGradGuard no_grad;
    auto options = at::TensorOptions().device(device);
    at::Tensor x = at::ones({16, 32}, options.dtype(out_dtype));
    at::Tensor w = at::ones({16, 32}, options.dtype(at::kFloat)).to(at::kFloat8_e4m3fn);
    at::Tensor y = scaled_mm(x, w, mode, out_dtype);
    if (!(y.to(at::kFloat).sub(32.0).abs().max().item<double>() < 1e-3))
      probe.failure = "the probe product came out wrong";
  } catch (const std::exception& e) {
    std::string what = e.what();
    probe.failure = what.substr(0, what.find('\n')).substr(0, 200);
    if (probe.failure.empty()) probe.failure = "_scaled_mm failed";
  }
  return known.emplace(key, std::move(probe)).first->second;
}

}  // namespace

std::string fp8_matmul_failure(at::Device device, Fp8Matmul mode, at::ScalarType out_dtype) {
  if (mode == Fp8Matmul::off) return "fp8 matmul is off";
  std::unique_lock<std::mutex> lock;
  return probe_fp8_matmul(device, mode, out_dtype, lock).failure;
}

bool fp8_matmul_supported(at::Device device, Fp8Matmul mode, at::ScalarType out_dtype) {
  if (mode == Fp8Matmul::off) return false;
  std::unique_lock<std::mutex> lock;
  Fp8Probe& probe = probe_fp8_matmul(device, mode, out_dtype, lock);
  if (!probe.failure.empty() && !probe.warned) {
    probe.warned = true;
    log::warn("fp8 matmul (", name_of(mode), ", ", c10::toString(out_dtype), ") is not available on ", device.str(),
              "; fp8 weights are upcast instead (", probe.failure, ")");
  }
  return probe.failure.empty();
}

int64_t set_fp8_matmul(torch::nn::Module& module, Fp8Matmul mode) {
  int64_t count = 0;
  for (const auto& child : module.modules(/*include_self=*/true)) {
    auto* linear = dynamic_cast<LinearImpl*>(child.get());
    if (!linear || linear->weight.scalar_type() != at::kFloat8_e4m3fn) continue;
    if (linear->in_features % 16 != 0 || linear->out_features % 16 != 0) continue;
    linear->fp8_matmul = mode;
    ++count;
  }
  return count;
}

}  // namespace fluxtrain::models
