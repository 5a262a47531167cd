// The CUDA paths, on a tiny model: the attention stash's self-check, the fp8 scaled matmul against its
// reference arithmetic, the checkpointed block inputs offloaded to pinned host memory, and the prefetch
// into pinned memory. Every test here is named Cuda.* (bench/gpu_proof.sh selects them by that name) and
// skips where this libtorch sees no CUDA device; on a lent GPU they run (docs/performance.md).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>

#include "lora/network.h"
#include "models/attention.h"
#include "models/flux/flux.h"
#include "models/linear.h"
#include "models/random_init.h"
#include "models/tiny.h"
#include "train/checkpointing.h"
#include "train/prefetch.h"
#include "train/step.h"

namespace fluxtrain::train {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (this libtorch sees none)"

const at::Device kCuda(at::kCUDA, 0);

TEST(Cuda, AttentionStashSelfCheck) {
  SKIP_WITHOUT_CUDA();
  // The check the CUDA attention stash runs before its first use: its gradients against autograd's,
  // within bf16 rounding (the flash kernel runs in half precision only).
  const double difference = models::attention_stash_self_check(kCuda, at::kBFloat16);
  EXPECT_GE(difference, 0.0);
  EXPECT_LE(difference, 2e-2);
}

// The reference arithmetic of models/linear.cpp's fp8 matmul, in float64 on the CPU: x scaled by
// float32(448 / amax) (per tensor or per row), saturated and rounded to e4m3, multiplied by the e4m3
// weight, divided by the scale.
at::Tensor fp8_reference(const at::Tensor& x, const at::Tensor& weight, models::Fp8Matmul mode) {
  at::Tensor x32 = x.to(at::kCPU, at::kFloat);
  at::Tensor amax = mode == models::Fp8Matmul::rowwise ? x32.abs().amax({1}, true) : x32.abs().max();
  at::Tensor scale = (448.0 / amax.to(at::kDouble).clamp_min(1e-12)).to(at::kFloat);
  at::Tensor q = (x32 * scale).clamp(-448.0, 448.0).to(at::kFloat8_e4m3fn).to(at::kDouble);
  return at::matmul(q, weight.to(at::kCPU, at::kDouble).t()) / scale.to(at::kDouble);
}

TEST(Cuda, Fp8ScaledMatmulMatchesItsReference) {
  SKIP_WITHOUT_CUDA();
  at::Generator g = at::detail::createCPUGenerator(17);
  at::Tensor x = at::randn({64, 128}, g, at::kFloat);
  x[3].mul_(40.0);  // one large row: rowwise and tensorwise scale it differently
  at::Tensor w = (at::randn({96, 128}, g, at::kFloat) * 0.5).to(at::kFloat8_e4m3fn);
  at::Tensor grad_out = at::randn({64, 96}, g, at::kFloat);
  int ran = 0;
  for (models::Fp8Matmul mode : {models::Fp8Matmul::tensorwise, models::Fp8Matmul::rowwise}) {
    SCOPED_TRACE(std::string(name_of(mode)));
    if (!models::fp8_matmul_supported(kCuda, mode, at::kBFloat16)) continue;  // before compute capability 8.9
    ++ran;
    at::Tensor xc = x.to(kCuda, at::kBFloat16).requires_grad_(true);
    at::Tensor y = models::fp8_linear(xc, w.to(kCuda), at::Tensor(), mode);
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
    at::Tensor ref = fp8_reference(xc.detach(), w, mode);
    const double err =
        (y.detach().to(at::kCPU, at::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
    EXPECT_LE(err, 1e-2) << "relative to the largest output";  // the bf16 output's rounding
    // The input gradient is g W with W upcast (the weight is frozen).
    y.backward(grad_out.to(kCuda, at::kBFloat16));
    at::Tensor dx_ref = at::matmul(grad_out.to(at::kBFloat16).to(at::kDouble), w.to(at::kDouble));
    const double dx_err =
        (xc.grad().to(at::kCPU, at::kDouble) - dx_ref).abs().max().item<double>() / dx_ref.abs().max().item<double>();
    EXPECT_LE(dx_err, 1e-2);
  }
  if (ran == 0) GTEST_SKIP() << "this GPU has no fp8 matmul (needs compute capability 8.9 or newer)";
}

struct TinyRun {
  at::Tensor loss;
  std::vector<at::Tensor> lora;  // gradients, on the CPU
};

// One forward and backward of a tiny Flux model with a LoRA on `device` (fp32), gradients copied back.
TinyRun tiny_run(at::Device device, bool checkpointed, bool offload) {
  auto config = models::tiny_flux_config(false);
  models::FluxTransformer model(config, models::ModelOptions{});
  models::init_random(*model, 1);
  model->to(device);
  for (auto& p : model->parameters()) p.requires_grad_(false);
  lora::LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 1.0;
  lo.split_qkv = true;
  lora::LoraNetwork network(*model, lo, 7);
  {
    at::NoGradGuard no_grad;
    auto g = at::detail::createCPUGenerator(11);
    for (auto& m : network.modules()) {
      for (auto& part : m->parts()) part.up.copy_(at::randn(part.up.sizes(), g, at::kFloat) * 0.1);
    }
  }
  network.set_training(true);
  at::Generator g = at::detail::createCPUGenerator(3);
  models::FluxInputs in;
  auto on = at::TensorOptions().device(device);
  in.img = at::randn({2, 15, config.in_channels}, g, at::kFloat).to(device);
  in.img_ids = models::make_img_ids(2, 5, 3, on);
  in.txt = at::randn({2, 7, config.context_in_dim}, g, at::kFloat).to(device);
  in.txt_ids = at::zeros({2, 7, 3}, on);
  in.timesteps = at::rand({2}, g, at::kFloat).to(device);
  in.y = at::randn({2, config.vec_in_dim}, g, at::kFloat).to(device);
  in.guidance = at::full({2}, 3.5, on);
  CheckpointOptions options;
  options.enabled = checkpointed;
  options.offload_inputs = offload;
  at::Tensor out = flux_forward(*model, in, options);
  at::Tensor loss = (out * out).mean();
  loss.backward();
  TinyRun r{loss.detach().cpu(), {}};
  for (const auto& p : network.parameters())
    r.lora.push_back(p.grad().defined() ? p.grad().cpu() : at::zeros(p.sizes(), at::kFloat));
  return r;
}

void expect_close(const TinyRun& a, const TinyRun& b, double rtol, const std::string& what) {
  EXPECT_TRUE(at::allclose(a.loss, b.loss, rtol, 1e-7))
      << what << ": loss " << a.loss.item<double>() << " vs " << b.loss.item<double>();
  ASSERT_EQ(a.lora.size(), b.lora.size());
  int nonzero = 0;
  for (size_t i = 0; i < a.lora.size(); ++i) {
    const double scale = std::max(b.lora[i].abs().max().item<double>(), 1e-12);
    EXPECT_LE((a.lora[i] - b.lora[i]).abs().max().item<double>() / scale, rtol) << what << ", LoRA tensor " << i;
    nonzero += b.lora[i].abs().sum().item<double>() > 0;
  }
  EXPECT_GT(nonzero, static_cast<int>(a.lora.size()) / 2) << what;
}

TEST(Cuda, OffloadCheckpointsGivesTheSameGradients) {
  SKIP_WITHOUT_CUDA();
  // offload_checkpoints: the checkpointed blocks' inputs wait in pinned host memory and come back for
  // the recomputation. The gradients equal those with the inputs kept on the device and without
  // checkpointing, and agree with the CPU's (fp32; the kernels differ, so not bit for bit).
  TinyRun kept = tiny_run(kCuda, true, false);
  TinyRun offloaded = tiny_run(kCuda, true, true);
  TinyRun plain = tiny_run(kCuda, false, false);
  TinyRun cpu = tiny_run(at::kCPU, true, false);
  expect_close(offloaded, kept, 1e-5, "offloaded vs kept on the device");
  expect_close(offloaded, plain, 1e-5, "offloaded vs no checkpointing");
  expect_close(offloaded, cpu, 1e-3, "CUDA vs CPU");
}

// Batch i holds the value i everywhere.
class ConstantSource : public DataSource {
 public:
  int64_t batches_per_epoch() const override { return 6; }
  int64_t images_per_epoch() const override { return 6; }
  LatentBatch batch(int64_t epoch, int64_t index) override {
    const double v = static_cast<double>(epoch * 6 + index);
    LatentBatch b;
    b.latents = at::full({1, 16, 4, 4}, v);
    b.t5 = at::full({1, 5, 8}, v);
    b.clip_pooled = at::full({1, 8}, v);
    b.loss_mask = at::full({1, 4, 4}, 1.0);
    return b;
  }
};

TEST(Cuda, PrefetchStagesBatchesInPinnedMemory) {
  SKIP_WITHOUT_CUDA();
  // The trainer's staging on CUDA: the worker thread puts each batch's device copies into pinned memory
  // in the compute dtype; the asynchronous copies then deliver the same values.
  ConstantSource source;
  PrefetchingSource loader(source, 2, 0, [](LatentBatch b) { return pin_for_device(std::move(b), at::kBFloat16); });
  for (int64_t i = 0; i < 6; ++i) {
    LatentBatch b = loader.batch(0, i);
    EXPECT_TRUE(b.t5.is_pinned()) << i;
    EXPECT_TRUE(b.clip_pooled.is_pinned()) << i;
    EXPECT_TRUE(b.loss_mask.is_pinned()) << i;
    EXPECT_EQ(b.t5.scalar_type(), at::kBFloat16);
    at::Tensor on_device = b.t5.to(kCuda, at::kBFloat16, /*non_blocking=*/true);
    at::accelerator::synchronizeDevice(0);
    EXPECT_TRUE(at::equal(on_device.cpu(), at::full({1, 5, 8}, static_cast<double>(i), at::kBFloat16))) << i;
  }
}

}  // namespace
}  // namespace fluxtrain::train
