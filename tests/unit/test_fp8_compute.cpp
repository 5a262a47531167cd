// The fp8_compute decision (src/app/device.h decide_fp8_compute / resolve_fp8_compute): on this machine's
// CPU for real (its probe, its refusal), and on described GPUs (an H100, an L4 whose rowwise probe fails,
// an A100) for the rules that only a GPU reaches; there the probe is the description's `failure`, counted,
// so the test also sees which modes were probed.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <map>
#include <string>

#include "app/device.h"
#include "core/error.h"
#include "models/linear.h"

namespace fluxtrain::app {
namespace {

using models::Fp8Matmul;

// A GPU as the decision sees it: `failing` maps a mode to its probe failure ("" = runs).
struct DescribedGpu {
  Fp8DeviceInfo info;
  std::map<Fp8Matmul, int> probes;
  DescribedGpu(const std::string& name, int major, int minor, std::map<Fp8Matmul, std::string> failing = {}) {
    info.name = name;
    info.cuda = true;
    info.major = major;
    info.minor = minor;
    info.failure = [this, failing](Fp8Matmul mode) {
      ++probes[mode];
      auto it = failing.find(mode);
      return it == failing.end() ? std::string() : it->second;
    };
  }
  DescribedGpu(const DescribedGpu&) = delete;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Fp8Compute, AutoIsOffOnTheCpu) {
  const Fp8ComputeDecision d = resolve_fp8_compute(Fp8Compute::automatic, true, at::kCPU, at::kFloat);
  EXPECT_EQ(d.mode, Fp8Matmul::off);
  EXPECT_EQ(d.line, "fp8 compute: off (auto: the CPU has no fp8 matmul)");
}

TEST(Fp8Compute, AnExplicitModeOnTheCpuIsANamedError) {
  for (Fp8Compute mode : {Fp8Compute::tensorwise, Fp8Compute::rowwise}) {
    const std::string what = error_of([&] {
      resolve_fp8_compute(mode, true, at::kCPU, at::kFloat, "PARAMS_FP8_COMPUTE=x");
    });
    EXPECT_NE(what.find("PARAMS_FP8_COMPUTE=x needs an NVIDIA GPU with fp8 tensor cores (compute capability 8.9"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("H100"), std::string::npos) << what;
    EXPECT_NE(what.find("this run computes on the CPU (no fp8 units"), std::string::npos) << what;
    EXPECT_NE(what.find("set fp8_compute=auto"), std::string::npos) << what;
  }
}

TEST(Fp8Compute, TheCpuProbeRunsTensorwiseInFp32) {
  // What bench/fp8_compute_curve.py relies on: the internal path works on the CPU (a slow reference).
  EXPECT_EQ(models::fp8_matmul_failure(at::kCPU, Fp8Matmul::tensorwise, at::kFloat), "");
  EXPECT_TRUE(models::fp8_matmul_supported(at::kCPU, Fp8Matmul::tensorwise, at::kFloat));
}

TEST(Fp8Compute, WithoutAnFp8BaseAutoIsOffAndAModeIsAnError) {
  DescribedGpu h100("cuda:0 (H100)", 9, 0);
  const Fp8ComputeDecision d = decide_fp8_compute(Fp8Compute::automatic, false, at::kBFloat16, h100.info);
  EXPECT_EQ(d.mode, Fp8Matmul::off);
  EXPECT_EQ(d.line, "fp8 compute: off (auto: fp8_base is off)");
  const std::string what = error_of([&] {
    decide_fp8_compute(Fp8Compute::rowwise, false, at::kBFloat16, h100.info, "--fp8-compute rowwise",
                       "PARAMS_FP8_BASE=false");
  });
  EXPECT_NE(what.find("--fp8-compute rowwise multiplies the fp8 weights of an fp8 base, but PARAMS_FP8_BASE=false"),
            std::string::npos)
      << what;
  EXPECT_TRUE(h100.probes.empty());
}

TEST(Fp8Compute, OffIsOffEverywhere) {
  DescribedGpu h100("cuda:0 (H100)", 9, 0);
  EXPECT_EQ(decide_fp8_compute(Fp8Compute::off, true, at::kBFloat16, h100.info).mode, Fp8Matmul::off);
  EXPECT_TRUE(h100.probes.empty());
}

TEST(Fp8Compute, AutoPicksRowwiseOnAnH100InBf16AndTensorwiseInFp32) {
  DescribedGpu h100("cuda:0 (H100)", 9, 0);
  Fp8ComputeDecision d = decide_fp8_compute(Fp8Compute::automatic, true, at::kBFloat16, h100.info);
  EXPECT_EQ(d.mode, Fp8Matmul::rowwise);
  EXPECT_EQ(d.line, "fp8 compute: rowwise on cuda:0 (H100) (auto)");
  d = decide_fp8_compute(Fp8Compute::automatic, true, at::kFloat, h100.info);
  EXPECT_EQ(d.mode, Fp8Matmul::tensorwise);  // rowwise needs bf16: not even probed
  EXPECT_EQ(h100.probes[Fp8Matmul::rowwise], 1);
  EXPECT_EQ(h100.probes[Fp8Matmul::tensorwise], 1);
}

TEST(Fp8Compute, AutoFallsBackToTensorwiseThenOffWhereTheProbeFails) {
  DescribedGpu l4("cuda:0 (L4)", 8, 9, {{Fp8Matmul::rowwise, "rowwise scaling needs sm90"}});
  EXPECT_EQ(decide_fp8_compute(Fp8Compute::automatic, true, at::kBFloat16, l4.info).mode, Fp8Matmul::tensorwise);
  DescribedGpu odd("cuda:1", -1, -1, {{Fp8Matmul::rowwise, "no"}, {Fp8Matmul::tensorwise, "not either"}});
  const Fp8ComputeDecision d = decide_fp8_compute(Fp8Compute::automatic, true, at::kBFloat16, odd.info);
  EXPECT_EQ(d.mode, Fp8Matmul::off);
  EXPECT_EQ(d.line, "fp8 compute: off (auto: cuda:1 cannot run _scaled_mm (rowwise: no; tensorwise: not either))");
}

TEST(Fp8Compute, AnA100HasNoFp8TensorCores) {
  DescribedGpu a100("cuda:0 (A100, compute capability 8.0)", 8, 0);
  const Fp8ComputeDecision d = decide_fp8_compute(Fp8Compute::automatic, true, at::kBFloat16, a100.info);
  EXPECT_EQ(d.mode, Fp8Matmul::off);
  EXPECT_NE(d.line.find("has no fp8 tensor cores"), std::string::npos) << d.line;
  const std::string what = error_of([&] {
    decide_fp8_compute(Fp8Compute::tensorwise, true, at::kBFloat16, a100.info, "fp8_compute=tensorwise");
  });
  EXPECT_NE(what.find("fp8_compute=tensorwise needs an NVIDIA GPU with fp8 tensor cores"), std::string::npos) << what;
  EXPECT_NE(what.find("but cuda:0 (A100, compute capability 8.0) has none; set fp8_compute=auto"), std::string::npos)
      << what;
  EXPECT_TRUE(a100.probes.empty());
}

TEST(Fp8Compute, AnExplicitModeIsCheckedByTheProbe) {
  DescribedGpu l4("cuda:0 (L4)", 8, 9, {{Fp8Matmul::rowwise, "rowwise scaling needs sm90"}});
  std::string what = error_of([&] { decide_fp8_compute(Fp8Compute::rowwise, true, at::kBFloat16, l4.info); });
  EXPECT_NE(what.find("fails on cuda:0 (L4): rowwise scaling needs sm90"), std::string::npos) << what;
  what = error_of([&] { decide_fp8_compute(Fp8Compute::rowwise, true, at::kFloat, l4.info); });
  EXPECT_NE(what.find("rowwise scaling needs bf16 compute, but the run computes in Float"), std::string::npos) << what;
  const Fp8ComputeDecision d =
      decide_fp8_compute(Fp8Compute::tensorwise, true, at::kBFloat16, l4.info, "PARAMS_FP8_COMPUTE=tensorwise");
  EXPECT_EQ(d.mode, Fp8Matmul::tensorwise);
  EXPECT_EQ(d.line, "fp8 compute: tensorwise on cuda:0 (L4) (PARAMS_FP8_COMPUTE=tensorwise)");
}

}  // namespace
}  // namespace fluxtrain::app
