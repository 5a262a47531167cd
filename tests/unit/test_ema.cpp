// The EMA's pieces that the end-to-end reference check (tests/e2e/test_ema.py, against diffusers' EMAModel)
// does not isolate: the decay schedule at its edges, the update interval, the swap of the averaged values
// into the trained tensors (the live ones come back bit for bit) and the state round trip.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"
#include "train/ema.h"

namespace fluxtrain::train {
namespace {

TEST(Ema, DecayFollowsDiffusersGetDecay) {
  EmaOptions o;
  o.decay = 0.6;
  Ema plain(o, {at::zeros({2})}, at::Device(at::kCPU));
  EXPECT_EQ(plain.decay_of(1), 0.0);         // the first update copies
  EXPECT_EQ(plain.decay_of(2), 2.0 / 11.0);  // (1 + s) / (10 + s), s = 1
  EXPECT_EQ(plain.decay_of(14), 0.6);        // capped: 14 / 23 > 0.6
  o.warmup = true;
  o.inv_gamma = 2;
  o.power = 0.75;
  o.update_after_step = 3;
  o.min_decay = 0.3;
  Ema warm(o, {at::zeros({2})}, at::Device(at::kCPU));
  EXPECT_EQ(warm.decay_of(4), 0.0);  // update_after_step + 1 updates copy
  EXPECT_EQ(warm.decay_of(5), 0.3);  // s = 1: 1 - 1.5^-0.75 = 0.262, raised to min_decay
  EXPECT_DOUBLE_EQ(warm.decay_of(6), 1 - std::pow(1 + 2.0 / 2, -0.75));  // s = 2: 0.405
  EXPECT_EQ(warm.decay_of(1000), 0.6);
}

TEST(Ema, UpdatesEveryIntervalAndSwapsBack) {
  EmaOptions o;
  o.decay = 0.5;
  o.update_interval = 2;
  at::Tensor w = at::full({3}, 1.0f);
  Ema ema(o, {w}, at::Device(at::kCPU));
  ema.after_step(1, {w});  // not a multiple of 2: no update
  EXPECT_EQ(ema.updates(), 0);
  w.fill_(2.0f);
  ema.after_step(2, {w});  // update 1 copies
  EXPECT_EQ(ema.updates(), 1);
  w.fill_(4.0f);
  ema.after_step(4, {w});  // update 2: decay 2/11 -> 2 - (9/11) * (2 - 4)
  const float expected = 2.0f - static_cast<float>(9.0 / 11.0) * (2.0f - 4.0f);
  {
    const Ema::Applied averaged(ema, {w});
    EXPECT_TRUE(at::equal(w, at::full({3}, expected)));
  }
  EXPECT_TRUE(at::equal(w, at::full({3}, 4.0f)));  // the live values are back

  Ema restored(o, {at::zeros({3})}, at::Device(at::kCPU));
  restored.load_state(ema.state_tensors(), ema.state_info(), "a state");
  EXPECT_EQ(restored.updates(), 2);
  EXPECT_TRUE(at::equal(restored.state_tensors()[0].second, ema.state_tensors()[0].second));
  Ema other(o, {at::zeros({4})}, at::Device(at::kCPU));
  EXPECT_THROW(other.load_state(ema.state_tensors(), ema.state_info(), "a state"), Error);
}

TEST(Ema, FileNameBesideTheLora) {
  EXPECT_EQ(ema_file_name("out/flux-lora-step00000100.safetensors"), "out/flux-lora-step00000100-ema.safetensors");
  EXPECT_EQ(ema_file_name("out/flux-lora.safetensors"), "out/flux-lora-ema.safetensors");
}

}  // namespace
}  // namespace fluxtrain::train
