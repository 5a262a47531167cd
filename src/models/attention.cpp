#include "models/attention.h"

#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "core/error.h"
#include "core/log.h"

namespace fluxtrain::models {

enum class StashKernel { cpu_flash, cuda_flash };

struct StashedAttention : torch::CustomClassHolder {
  StashKernel kernel = StashKernel::cpu_flash;
  std::vector<int64_t> q_shape;  // checked again in the replay
  at::Tensor out, logsumexp;     // handed to the autograd node in the replay
  at::Tensor mask;               // CPU: the additive float mask the kernel saw (undefined: none)
  // CUDA flash kernel results its backward needs.
  at::Tensor cum_seq_q, cum_seq_k, philox_seed, philox_offset;
  int64_t max_q = 0, max_k = 0;
};

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<int64_t> replays{0};

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

at::Tensor plain_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  return at::scaled_dot_product_attention(q, k, v, opt(mask));
}

// What scaled_dot_product_attention hands the fused kernels for a boolean mask: 0 where attended,
// -inf elsewhere, in the query's dtype.
at::Tensor additive_mask(const at::Tensor& mask, at::ScalarType dtype) {
  if (!mask.defined() || mask.scalar_type() != at::kBool) return mask;
  return at::where(mask.logical_not(), -std::numeric_limits<double>::infinity(),
                   at::scalar_tensor(0.0, at::TensorOptions().dtype(dtype).device(mask.device())));
}

// The fused forward; fills `e` with what the backward needs and returns the output.
at::Tensor run_kernel(StashedAttention& e, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& mask) {
  if (e.kernel == StashKernel::cpu_flash) {
    e.mask = additive_mask(mask, q.scalar_type());
    auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, false, opt(e.mask), std::nullopt);
    e.logsumexp = lse;
    return out;
  }
  auto r = at::_scaled_dot_product_flash_attention(q, k, v, 0.0, false, false, std::nullopt);
  e.logsumexp = std::get<1>(r);
  e.cum_seq_q = std::get<2>(r);
  e.cum_seq_k = std::get<3>(r);
  e.max_q = std::get<4>(r).expect_int();
  e.max_k = std::get<5>(r).expect_int();
  e.philox_seed = std::get<6>(r);
  e.philox_offset = std::get<7>(r);
  return std::get<0>(r);
}

// A first run's attention through `kernel` (without autograd): the entry the recomputation replays.
c10::intrusive_ptr<StashedAttention> record(StashKernel kernel, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const at::Tensor& mask) {
  at::NoGradGuard no_grad;
  auto entry = c10::make_intrusive<StashedAttention>();
  entry->kernel = kernel;
  entry->q_shape = q.sizes().vec();
  entry->out = run_kernel(*entry, q, k, v, mask);
  return entry;
}

class StashedAttentionFunction : public torch::autograd::Function<StashedAttentionFunction> {
 public:
  // Returns the output kept by the first run; backward is the fused kernel's backward on the
  // recomputed q, k, v (equal to the first run's) and that output.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            c10::intrusive_ptr<StashedAttention> entry) {
    at::Tensor out = std::move(entry->out);
    // Saved after the output is wrapped, so autograd stores `out` as this node's own output (no cycle).
    ctx->save_for_backward({q, k, v, out, std::move(entry->logsumexp)});
    ctx->saved_data["entry"] = c10::IValue::make_capsule(std::move(entry));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto e = c10::static_intrusive_pointer_cast<StashedAttention>(ctx->saved_data["entry"].toCapsule());
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    std::tuple<at::Tensor, at::Tensor, at::Tensor> d;
    if (e->kernel == StashKernel::cpu_flash) {
      d = at::_scaled_dot_product_flash_attention_for_cpu_backward(g, saved[0], saved[1], saved[2], saved[3], saved[4],
                                                                   0.0, false, opt(e->mask), std::nullopt);
    } else {
      d = at::_scaled_dot_product_flash_attention_backward(g, saved[0], saved[1], saved[2], saved[3], saved[4],
                                                           e->cum_seq_q, e->cum_seq_k, e->max_q, e->max_k, 0.0, false,
                                                           e->philox_seed, e->philox_offset, std::nullopt);
    }
    return {std::get<0>(d), std::get<1>(d), std::get<2>(d), at::Tensor()};
  }
};

double relative_difference(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kFloat), y = b.to(at::kFloat);
  return (x - y).abs().max().item<double>() / std::max(y.abs().max().item<double>(), 1e-12);
}

// Gradients of the stashed path (kernel called directly, its backward through StashedAttentionFunction)
// against autograd through scaled_dot_product_attention, on a small random problem like `like`:
// the largest relative difference of dq, dk, dv. Throws what the kernels throw.
double stash_gradient_difference(const at::Tensor& like, StashKernel kernel) {
  auto gen = at::detail::createCPUGenerator(1234);
  auto opts = like.options().requires_grad(false);
  auto make = [&] { return at::randn({1, 2, 96, like.size(-1)}, gen, at::kFloat).to(opts); };
  at::Tensor q = make(), k = make(), v = make(), w = make();
  at::AutoGradMode grad_mode(true);  // the caller may be in a checkpointed block's no-grad first run
  std::vector<at::Tensor> plain_in{q.clone().requires_grad_(true), k.clone().requires_grad_(true),
                                   v.clone().requires_grad_(true)};
  (plain_attention(plain_in[0], plain_in[1], plain_in[2], at::Tensor()) * w).sum().backward();
  auto entry = record(kernel, q, k, v, at::Tensor());
  std::vector<at::Tensor> in{q.clone().requires_grad_(true), k.clone().requires_grad_(true),
                             v.clone().requires_grad_(true)};
  (StashedAttentionFunction::apply(in[0], in[1], in[2], entry) * w).sum().backward();
  double worst = 0;
  for (int i = 0; i < 3; ++i) worst = std::max(worst, relative_difference(in[i].grad(), plain_in[i].grad()));
  return worst;
}

// Whether the CUDA flash kernel called directly, with its backward, gives what autograd gives through
// scaled_dot_product_attention; checked once per device and dtype (not through choose_kernel, which
// calls this).
bool cuda_flash_stash_works(const at::Tensor& like) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(static_cast<int>(like.device().index()), static_cast<int>(like.scalar_type()));
  auto it = known.find(key);
  if (it != known.end()) return it->second;
  bool ok = false;
  try {
    const double worst = stash_gradient_difference(like, StashKernel::cuda_flash);
    ok = worst <= 2e-2;  // bf16/fp16 kernels; a wrong call differs by O(1)
    if (!ok)
      log::warn("attention kept for recomputation: gradients differ from autograd's by ", worst, " on ",
                like.device().str(), "; recomputing attention instead");
  } catch (const std::exception& e) {
    log::warn("attention kept for recomputation is not available on ", like.device().str(), " (",
              std::string(e.what()).substr(0, 160), "); recomputing attention instead");
  }
  known[key] = ok;
  return ok;
}

std::optional<StashKernel> choose_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& mask) {
  if (q.dim() != 4) return std::nullopt;
  int64_t choice = at::_fused_sdp_choice(q, k, v, opt(mask), 0.0, false, std::nullopt, false);
  if (choice != static_cast<int64_t>(at::SDPBackend::flash_attention)) return std::nullopt;
  if (q.device().is_cpu()) return StashKernel::cpu_flash;
  if (q.device().is_cuda() && !mask.defined() && q.size(-1) % 8 == 0 && cuda_flash_stash_works(q)) {
    return StashKernel::cuda_flash;
  }
  return std::nullopt;
}

}  // namespace

double attention_stash_self_check(at::Device device, at::ScalarType dtype) {
  at::Tensor like = at::empty({1, 1, 1, 64}, at::TensorOptions().device(device).dtype(dtype));
  return stash_gradient_difference(like, device.is_cpu() ? StashKernel::cpu_flash : StashKernel::cuda_flash);
}

AttentionStash::AttentionStash() = default;
AttentionStash::~AttentionStash() = default;

// Out of line: clearing the log destroys StashedAttention entries, a type only this file completes.
void AttentionStash::start_record() {
  log_.start_record();
}
void AttentionStash::start_replay() {
  log_.start_replay();
}

at::Tensor AttentionStash::attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask) {
  if (log_.replaying()) {
    c10::intrusive_ptr<StashedAttention> entry = log_.take("attention calls");
    if (!entry) return plain_attention(q, k, v, mask);
    TORCH_CHECK(entry->q_shape == q.sizes().vec(), "internal: a recomputed block's attention changed shape");
    replays.fetch_add(1, std::memory_order_relaxed);
    return StashedAttentionFunction::apply(q, k, v, std::move(entry));
  }
  std::optional<StashKernel> kernel;
  if (!at::GradMode::is_enabled()) kernel = choose_kernel(q, k, v, mask);
  if (!kernel) {
    log_.record(c10::intrusive_ptr<StashedAttention>());
    return plain_attention(q, k, v, mask);
  }
  c10::intrusive_ptr<StashedAttention> entry = record(*kernel, q, k, v, mask);
  at::Tensor out = entry->out;
  log_.record(std::move(entry));
  return out;
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     AttentionStash* stash) {
  return stash ? stash->attention(q, k, v, mask) : plain_attention(q, k, v, mask);
}

int64_t stashed_attention_replays() {
  return replays.load(std::memory_order_relaxed);
}

}  // namespace fluxtrain::models
