// Optimizers and schedules: optimizer_args parsing and its errors, exact resume through the state files,
// the 8-bit state, per-parameter multipliers. Numerical parity with the Python references is in
// tests/parity/test_optimizers.py and test_schedules.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <filesystem>
#include <functional>
#include <set>

#include "core/error.h"
#include "core/safetensors.h"
#include "optim/adamw.h"
#include "optim/args.h"
#include "optim/optimizer.h"
#include "optim/quantize.h"
#include "optim/schedule.h"

namespace fluxtrain::optim {
namespace {

namespace fs = std::filesystem;

ScheduleOptions schedule(const std::string& name, double warmup, int64_t total) {
  ScheduleOptions s;
  s.name = name;
  s.warmup = warmup;
  s.num_training_steps = total;
  return s;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(OptimizerArgs, SplitsKohyaStrings) {
  auto kv = split_optimizer_args(
      "decouple=True weight_decay=0.01 betas=0.9,0.99   use_bias_correction=True d_coef=2 \"eps=1e-8\"");
  ASSERT_EQ(kv.size(), 6u);
  EXPECT_EQ(kv[0], (std::pair<std::string, std::string>{"decouple", "True"}));
  EXPECT_EQ(kv[2].second, "0.9,0.99");
  EXPECT_EQ(kv[5], (std::pair<std::string, std::string>{"eps", "1e-8"}));
  kv = split_optimizer_args("betas=(0.9, 0.99) eps='(1e-30, 1e-3)'");
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[0].second, "(0.9, 0.99)");
  EXPECT_EQ(kv[1].second, "(1e-30, 1e-3)");
  EXPECT_TRUE(split_optimizer_args("   ").empty());
}

TEST(OptimizerArgs, TypedValues) {
  ArgReader r("Prodigy", "a=True b=false c=1 d=0 e=2.5e-3 f=(0.9, 0.99) g=[1,2] h=None i=inf j=11");
  EXPECT_TRUE(r.flag("a", false));
  EXPECT_FALSE(r.flag("b", true));
  EXPECT_TRUE(r.flag("c", false));
  EXPECT_FALSE(r.flag("d", true));
  EXPECT_DOUBLE_EQ(r.real("e", 0), 2.5e-3);
  EXPECT_EQ(r.pair("f", {}), (std::pair<double, double>{0.9, 0.99}));
  EXPECT_EQ(r.pair("g", {}), (std::pair<double, double>{1, 2}));
  EXPECT_FALSE(r.optional_real("h", 1.0).has_value());
  EXPECT_TRUE(std::isinf(r.real("i", 0)));
  EXPECT_EQ(r.integer("j", 0), 11);
  EXPECT_EQ(r.real("absent", 7.0), 7.0);
  EXPECT_NO_THROW(r.finish());
}

TEST(OptimizerArgs, MalformedStrings) {
  EXPECT_NE(error_of([] { split_optimizer_args("decouple"); }).find("not key=value"), std::string::npos);
  EXPECT_NE(error_of([] { split_optimizer_args("d0=1 d0=2"); }).find("twice"), std::string::npos);
  EXPECT_NE(error_of([] { split_optimizer_args("betas=(0.9,0.99"); }).find("unbalanced"), std::string::npos);
  EXPECT_NE(error_of([] { split_optimizer_args("=3"); }).find("no key"), std::string::npos);
}

TEST(OptimizerArgs, UnknownKeyNamesKeyOptimizerHintAndList) {
  std::vector<at::Tensor> params = {at::zeros({3})};
  std::string e = error_of([&] { make_optimizer("Prodigy", "decouple=True safeguard_warmpu=True", params, 1.0, 0); });
  EXPECT_NE(e.find("Prodigy"), std::string::npos) << e;
  EXPECT_NE(e.find("\"safeguard_warmpu\""), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean \"safeguard_warmup\""), std::string::npos) << e;
  EXPECT_NE(e.find("d_coef"), std::string::npos) << e;  // the list of valid keys
  e = error_of([&] { make_optimizer("AdamW", "amsgrad=True momentum=0.9", params, 1e-3, 0); });
  EXPECT_NE(e.find("AdamW has no argument \"momentum\""), std::string::npos) << e;
}

TEST(OptimizerArgs, BadValueNamesKeyValueAndType) {
  std::vector<at::Tensor> params = {at::zeros({3})};
  std::string e = error_of([&] { make_optimizer("Prodigy", "decouple=yes", params, 1.0, 0); });
  EXPECT_NE(e.find("decouple=yes"), std::string::npos) << e;
  EXPECT_NE(e.find("boolean"), std::string::npos) << e;
  e = error_of([&] { make_optimizer("Prodigy", "betas=0.9", params, 1.0, 0); });
  EXPECT_NE(e.find("betas=0.9 is not a pair"), std::string::npos) << e;
  e = error_of([&] { make_optimizer("Prodigy", "d_coef=two", params, 1.0, 0); });
  EXPECT_NE(e.find("d_coef=two is not a number"), std::string::npos) << e;
  e = error_of([&] { make_optimizer("Prodigy", "slice_p=1.5", params, 1.0, 0); });
  EXPECT_NE(e.find("integer"), std::string::npos) << e;
}

TEST(OptimizerFactory, TypeNamesAreCaseInsensitiveAndUnknownOnesListed) {
  std::vector<at::Tensor> params = {at::zeros({3})};
  EXPECT_EQ(make_optimizer("prodigy", "", params, 1.0, 0)->name(), "Prodigy");
  EXPECT_EQ(make_optimizer("ADAMW8BIT", "", params, 1e-3, 0)->name(), "AdamW8bit");
  EXPECT_EQ(make_optimizer("adafactor", "relative_step=False", params, 1e-3, 0)->name(), "Adafactor");
  EXPECT_EQ(make_optimizer("lion", "", params, 1e-4, 0)->name(), "Lion");
  EXPECT_EQ(make_optimizer("sgd", "momentum=0.9", params, 1e-2, 0)->name(), "SGD");
  std::string e = error_of([&] { make_optimizer("Prodigyy", "", params, 1.0, 0); });
  EXPECT_NE(e.find("did you mean Prodigy"), std::string::npos) << e;
  EXPECT_NE(e.find("AdamW8bit, Adafactor, Lion, SGD"), std::string::npos) << e;
  e = error_of([&] { make_optimizer("Adafactor", "relative_step=False warmup_init=True", params, 1e-3, 0); });
  EXPECT_NE(e.find("warmup_init=True requires relative_step=True"), std::string::npos) << e;
}

// A deterministic float32 problem: grad = (P X - Y) Xᵀ per parameter, one parameter starting at zero.
struct Problem {
  std::vector<at::Tensor> x, y, init;
  Problem() {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    std::vector<std::vector<int64_t>> shapes = {{48, 96}, {96}, {16, 96}};
    for (size_t i = 0; i < shapes.size(); ++i) {
      int64_t n = shapes[i].back(), rows = shapes[i].size() == 1 ? 1 : shapes[i][0];
      init.push_back(i == 2 ? at::zeros(shapes[i]) : 0.5 * at::randn(shapes[i], gen, at::kFloat));
      x.push_back(at::randn({n, 12}, gen, at::kFloat) / std::sqrt(static_cast<double>(n)));
      y.push_back(at::randn({rows, 12}, gen, at::kFloat));
    }
  }
  void set_grads(std::vector<at::Tensor>& params) const {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor p = params[i].detach().reshape({-1, x[i].size(0)});
      params[i].mutable_grad() = at::matmul(at::matmul(p, x[i]) - y[i], x[i].t()).reshape(params[i].sizes());
    }
  }
  std::vector<at::Tensor> fresh() const {
    std::vector<at::Tensor> out;
    for (const auto& t : init) out.push_back(t.clone().requires_grad_(true));
    return out;
  }
};

struct Case {
  std::string type, args;
  double lr;
};

class Resume : public ::testing::TestWithParam<Case> {};

// N steps uninterrupted == K steps, state written to disk (safetensors + JSON text), a new optimizer
// built and loaded, N - K more steps — bit for bit, for every optimizer, under a changing lr.
TEST_P(Resume, SaveLoadContinueIsBitExact) {
  const Case c = GetParam();
  const Problem problem;
  const int total = 30, cut = 13;
  LrSchedule lr_schedule(schedule("cosine", 3, total), c.lr);
  auto run = [&](std::vector<at::Tensor>& params, Optimizer& opt, int from, int to) {
    for (int s = from; s < to; ++s) {
      problem.set_grads(params);
      opt.set_lr(lr_schedule.lr(s));
      opt.step();
      opt.zero_grad();
    }
  };
  auto straight = problem.fresh();
  auto a = make_optimizer(c.type, c.args, straight, c.lr, 0.01);
  run(straight, *a, 0, total);

  auto params = problem.fresh();
  auto b = make_optimizer(c.type, c.args, params, c.lr, 0.01);
  run(params, *b, 0, cut);
  fs::path file = fs::temp_directory_path() / ("fluxtrain_unit_" + std::to_string(::getpid()) + "_optim.safetensors");
  safetensors::write(file.string(), b->state_tensors());
  const std::string scalars = b->state_scalars().dump();
  b.reset();
  auto resumed = params;  // same tensors, as a trainer reloads its LoRA weights
  auto restored = make_optimizer(c.type, c.args, resumed, c.lr, 0.01);
  {
    safetensors::Reader reader(file.string());
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& info : reader.header().tensors) tensors.emplace_back(info.name, reader.tensor(info));
    restored->load_state(tensors, nlohmann::json::parse(scalars));
  }
  fs::remove(file);
  run(resumed, *restored, cut, total);
  for (size_t i = 0; i < straight.size(); ++i)
    EXPECT_TRUE(at::equal(straight[i], resumed[i])) << c.type << " param " << i;
  EXPECT_EQ(a->stats(), restored->stats());
  EXPECT_EQ(a->state_scalars(), restored->state_scalars());
}

INSTANTIATE_TEST_SUITE_P(AllOptimizers, Resume,
                         ::testing::Values(Case{"Prodigy", "use_bias_correction=True safeguard_warmup=True", 1.0},
                                           Case{"Prodigy", "decouple=False betas=0,0.99 slice_p=3", 1.0},
                                           Case{"AdamW", "amsgrad=True", 1e-2}, Case{"AdamW8bit", "", 1e-2},
                                           Case{"Adafactor", "", 1.0},
                                           Case{"Adafactor", "relative_step=False beta1=0.9", 1e-2},
                                           Case{"Lion", "", 1e-3}, Case{"SGD", "momentum=0.9 nesterov=True", 0.1}),
                         [](const auto& info) { return info.param.type + std::to_string(info.index); });

TEST(OptimizerState, LoadRejectsForeignState) {
  std::vector<at::Tensor> params = {at::zeros({3})};
  auto adamw = make_optimizer("AdamW", "", params, 1e-3, 0);
  auto prodigy = make_optimizer("Prodigy", "", params, 1.0, 0);
  std::string e = error_of([&] { prodigy->load_state({}, adamw->state_scalars()); });
  EXPECT_NE(e.find("saved by AdamW"), std::string::npos) << e;
  e = error_of([&] { adamw->load_state({{"7.exp_avg", at::zeros({3})}}, adamw->state_scalars()); });
  EXPECT_NE(e.find("\"7.exp_avg\""), std::string::npos) << e;
  e = error_of([&] { adamw->load_state({}, nlohmann::json{{"optimizer", "AdamW"}}); });
  EXPECT_NE(e.find("incomplete"), std::string::npos) << e;
}

TEST(Quantize, DynamicCodeBooks) {
  at::Tensor s = dynamic_code_book(true), u = dynamic_code_book(false);
  ASSERT_EQ(s.numel(), 256);
  ASSERT_EQ(u.numel(), 256);
  EXPECT_TRUE(at::equal(s, std::get<0>(s.sort())));
  EXPECT_EQ(s.max().item<float>(), 1.0f);
  EXPECT_EQ(u.max().item<float>(), 1.0f);
  EXPECT_GE(u.min().item<float>(), 0.0f);
  EXPECT_LT(s.min().item<float>(), -0.99f);
  EXPECT_TRUE((s == 0).any().item<bool>());
}

TEST(Quantize, BlockwiseRoundTrip) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Tensor v = at::randn({1000}, gen, at::kFloat);
  v.index_put_({at::indexing::Slice(300, 400)}, 0.0);
  at::Tensor code = dynamic_code_book(true);
  Quantized q = quantize_blockwise(v, code);
  EXPECT_EQ(q.codes.scalar_type(), at::kByte);
  EXPECT_EQ(q.absmax.numel(), 4);
  at::Tensor back = dequantize_blockwise(q, code, v);
  EXPECT_TRUE(at::equal(back.slice(0, 300, 400), at::zeros({100})));       // zeros stay zeros
  EXPECT_EQ(back.abs().max().item<float>(), v.abs().max().item<float>());  // each block's max is exact
  // Largest error relative to the block's absmax: half the widest code gap (~0.0071 near 1).
  at::Tensor err = (back - v).abs().view({-1}).slice(0, 0, 768).view({3, 256}).amax(1) / q.absmax.slice(0, 0, 3);
  EXPECT_LT(err.max().item<float>(), 0.008f);
}

TEST(AdamW8bit, SavesMemoryAndFollowsFp32) {
  const Problem problem;
  auto p8 = problem.fresh(), p32 = problem.fresh();
  AdamWOptions eight_bit;
  eight_bit.state_8bit = true;
  AdamWOptimizer eight(p8, 1e-2, eight_bit), full(p32, 1e-2, {});
  for (int s = 0; s < 40; ++s) {
    problem.set_grads(p8);
    problem.set_grads(p32);
    p32[1].mutable_grad() = p8[1].grad().clone();  // equal parameters: one gradient (see LrMultipliers)
    eight.step();
    full.step();
  }
  // Params 0 (4608 elements) is 8-bit, 1 (96) stays fp32 (below min_8bit_size 4096), 2 (1536) too.
  const auto names = [](const Optimizer& o) {
    std::set<std::string> out;
    for (const auto& [n, t] : o.state_tensors()) out.insert(n);
    return out;
  };
  EXPECT_TRUE(names(eight).count("0.exp_avg.codes"));
  EXPECT_TRUE(names(eight).count("1.exp_avg"));
  const int64_t bytes32_param0 = 2 * 4608 * 4, bytes8_param0 = 2 * (4608 + 18 * 4);
  EXPECT_EQ(full.state_bytes() - eight.state_bytes(), bytes32_param0 - bytes8_param0);
  // Distance from the fp32 trajectory relative to the distance travelled (measured ~0.06; the parity test
  // states the bounds).
  const double drift = ((p8[0] - p32[0]).norm() / (p32[0] - problem.init[0]).norm()).item<double>();
  EXPECT_LT(drift, 0.1);
  EXPECT_TRUE(at::equal(p8[1], p32[1]));  // the fp32-state parameters are untouched by quantisation
}

TEST(LrMultipliers, ScaleTheLearningRatePerParameter) {
  const Problem problem;
  auto a = problem.fresh(), b = problem.fresh();
  auto doubled = make_optimizer("AdamW", "", a, 1e-3, 0);
  doubled->set_lr_multipliers({2.0, 2.0, 2.0});
  auto plain = make_optimizer("AdamW", "", b, 2e-3, 0);
  for (int s = 0; s < 5; ++s) {
    // One gradient for both: two products of equal inputs can round differently when the BLAS picks a
    // different thread count under load.
    problem.set_grads(a);
    for (size_t i = 0; i < a.size(); ++i) b[i].mutable_grad() = a[i].grad().clone();
    doubled->step();
    plain->step();
  }
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i]));
  auto prodigy = make_optimizer("Prodigy", "", a, 1.0, 0);
  EXPECT_NE(error_of([&] { prodigy->set_lr_multipliers({1.0, 16.0, 1.0}); }).find("not supported"), std::string::npos);
}

TEST(Optimizers, SkipParametersWithoutGradient) {
  std::vector<at::Tensor> params = {at::ones({4}).requires_grad_(true), at::ones({4}).requires_grad_(true)};
  params[0].mutable_grad() = at::full({4}, 0.5);
  for (const auto& type : optimizer_types()) {
    auto opt = make_optimizer(type, type == "Adafactor" ? "relative_step=False" : "", params, 1e-2, 0);
    opt->step();
    EXPECT_TRUE(at::equal(params[1], at::ones({4}))) << type;
  }
}

TEST(Schedule, WarmupStepsAndErrors) {
  EXPECT_EQ(resolve_warmup_steps(0.1, 95), 9);
  EXPECT_EQ(resolve_warmup_steps(20, 95), 20);
  EXPECT_EQ(resolve_warmup_steps(0, 95), 0);
  EXPECT_NE(error_of([] { resolve_warmup_steps(2.5, 10); }).find("lr_warmup_steps"), std::string::npos);
  std::string e = error_of([] { LrSchedule(schedule("cosine_with_restart", 0, 10), 1.0); });
  EXPECT_NE(e.find("did you mean cosine_with_restarts"), std::string::npos) << e;
  EXPECT_NE(e.find("constant_with_warmup"), std::string::npos) << e;
  e = error_of([] { LrSchedule(schedule("polynomial", 0, 10), 1e-8); });
  EXPECT_NE(e.find("lr_end"), std::string::npos) << e;
  LrSchedule warm(schedule("Constant_With_Warmup", 0.25, 8), 2.0);
  EXPECT_EQ(warm.warmup_steps(), 2);
  EXPECT_EQ(warm.lr(0), 0.0);
  EXPECT_EQ(warm.lr(1), 1.0);
  EXPECT_EQ(warm.lr(2), 2.0);
}

}  // namespace
}  // namespace fluxtrain::optim
