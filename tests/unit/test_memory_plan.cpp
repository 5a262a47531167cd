// The memory planner's exact terms against the objects they describe: the parameter inventory against the
// transformer's own parameters, the LoRA selection against LoraNetwork, the optimizer state against what
// each optimizer allocates in its first step. (The activation terms are checked against measured peaks in
// tests/e2e/test_memory_plan.py.)
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <map>

#include "lora/network.h"
#include "lora/selection.h"
#include "lora/text_encoder_network.h"
#include "models/clip/clip_text.h"
#include "models/flux/flux.h"
#include "models/t5/t5_encoder.h"
#include "optim/optimizer.h"
#include "train/ema.h"
#include "train/memory_plan.h"

namespace fluxtrain::train {
namespace {

models::FluxConfig small_config() {
  models::FluxConfig c;
  c.hidden_size = 64;
  c.mlp_hidden = 256;
  c.num_heads = 2;
  c.depth = 2;
  c.depth_single_blocks = 3;
  c.context_in_dim = 32;
  c.vec_in_dim = 16;
  c.axes_dim = {8, 12, 12};
  return c;
}

TEST(MemoryPlan, ParameterInventoryIsTheTransformers) {
  models::FluxConfig c = small_config();
  for (bool guidance : {true, false}) {
    c.guidance_embed = guidance;
    models::ModelOptions options;
    options.device = at::kMeta;
    options.fp8_base = true;
    models::FluxTransformer model(c, options);
    std::map<std::string, std::pair<std::vector<int64_t>, at::ScalarType>> real;
    for (const auto& p : model->named_parameters()) real[p.key()] = {p.value().sizes().vec(), p.value().scalar_type()};
    const auto planned = models::flux_parameter_shapes(c);
    ASSERT_EQ(planned.size(), real.size());
    for (const auto& t : planned) {
      ASSERT_TRUE(real.count(t.path)) << t.path;
      EXPECT_EQ(real[t.path].first, t.shape) << t.path;
      // The fp8 base stores exactly the planner's block Linear weights in e4m3.
      EXPECT_EQ(real[t.path].second == at::kFloat8_e4m3fn, t.block_linear) << t.path;
    }
  }
}

TEST(MemoryPlan, LoraSelectionCountsWhatTheNetworkBuilds) {
  const models::FluxConfig c = small_config();
  models::ModelOptions options;
  models::FluxTransformer model(c, options);
  std::vector<lora::LoraOptions> cases(5);
  cases[1].split_qkv = true;
  cases[2].train_blocks = lora::TrainBlocks::single;
  cases[3].type_dims = {{"img_mod", 0}, {"single", 2}};
  cases[4].train_double_block_indices = "1";
  cases[4].train_single_block_indices = "0,2";
  for (auto& o : cases) {
    o.rank = 4;
    lora::LoraNetwork network(*model, o, 1);
    int64_t planned = 0;
    for (const auto& t : lora::adapter_targets(c, o)) planned += t.parameter_count();
    EXPECT_EQ(planned, network.parameter_count());
  }
}

TEST(MemoryPlan, OptimizerStateIsWhatTheFirstStepAllocates) {
  const models::FluxConfig c = small_config();
  models::FluxTransformer model(c, models::ModelOptions{});
  lora::LoraOptions o;
  o.rank = 8;
  for (const std::string type : {"Prodigy", "AdamW", "AdamW8bit", "Adafactor", "Lion", "SGD"}) {
    for (const std::string& args : {std::string(""), std::string(type == "SGD" ? "momentum=0.9" : "")}) {
      lora::LoraNetwork network(*model, o, 1);
      std::vector<at::Tensor> params = network.parameters();
      optim::OptimizerSettings settings;
      settings.type = type;
      settings.args = args;
      settings.learning_rate = 1e-3;
      auto optimizer = optim::make_optimizer(settings, params);
      for (auto& p : params) p.mutable_grad() = at::ones_like(p);
      optimizer->step();
      MemoryPlanInputs in;
      in.model = c;
      in.lora = o;
      in.optimizer = settings;
      const MemoryPlan plan = plan_memory(in);
      int64_t planned = 0;
      for (const auto& term : plan.terms)
        if (term.name == type + " state") planned = term.bytes;
      EXPECT_EQ(planned, optimizer->state_bytes()) << type << " " << args;
    }
  }
}

TEST(MemoryPlan, ChoicesFitTheirBudget) {
  MemoryPlanInputs in;
  in.model = models::FluxConfig::dev();
  in.image_width = 1280;
  in.image_height = 768;
  const MemoryPlan plan = plan_memory(in);
  // Flux.1 dev in fp8 is about 11.9 GB (spec/performance.md).
  EXPECT_NEAR(static_cast<double>(plan.weights) / 1e9, 11.9, 0.2);
  const int64_t budget = 80'000'000'000;
  const int64_t largest = plan.largest_batch(budget);
  ASSERT_GT(largest, 0);
  EXPECT_LE(plan.peak(largest), budget);
  EXPECT_GT(plan.peak(largest + 1), budget);
  // Kept products auto fills the budget left at that batch, never beyond it.
  MemoryPlanInputs keep = in;
  keep.checkpointing.keep_per_block = choose_kept_products(in, largest, budget);
  EXPECT_LE(plan_memory(keep).peak(largest), budget);
  // Block swap: the fewest blocks that bring one image under a small card's memory.
  const int64_t small = 16'000'000'000;
  const int64_t swap = choose_blocks_to_swap(in, 1, small);
  ASSERT_GT(swap, 0);
  MemoryPlanInputs swapped = in;
  swapped.blocks_to_swap = swap;
  EXPECT_LE(plan_memory(swapped).peak(1), small);
  swapped.blocks_to_swap = swap - 1;
  EXPECT_GT(plan_memory(swapped).peak(1), small);
}

TEST(MemoryPlan, AnEmaOnTheDeviceIsOneMoreCopyOfTheTrainedTensors) {
  const models::FluxConfig c = small_config();
  models::FluxTransformer model(c, models::ModelOptions{});
  lora::LoraOptions o;
  o.rank = 4;
  o.dora_wd = true;
  lora::LoraNetwork network(*model, o, 1);
  EmaOptions ema_options;
  ema_options.decay = 0.99;
  const Ema ema(ema_options, network.parameters(), at::kCPU);
  int64_t held = 0;
  for (const auto& [name, tensor] : ema.state_tensors()) held += tensor.nbytes();
  MemoryPlanInputs in;
  in.model = c;
  in.lora = o;
  const MemoryPlan without = plan_memory(in);
  in.ema_on_device = true;
  const MemoryPlan with = plan_memory(in);
  int64_t planned = -1;
  for (const auto& term : with.terms)
    if (term.name == "EMA of the trained tensors (fp32)") planned = term.bytes;
  EXPECT_EQ(planned, held);
  EXPECT_EQ(with.trainable - without.trainable, held);
  EXPECT_EQ(with.peak(2) - without.peak(2), held);
}

TEST(MemoryPlan, TextEncoderTermsCountWhatTheEncodersAndTheirLoraHold) {
  models::ClipConfig clip_config;
  clip_config.hidden_size = 64, clip_config.num_heads = 1, clip_config.num_layers = 2, clip_config.intermediate_size = 96;
  clip_config.vocab_size = 50;
  models::T5Config t5_config;
  t5_config.d_model = 24, t5_config.d_kv = 8, t5_config.num_heads = 4, t5_config.d_ff = 40, t5_config.num_layers = 3;
  t5_config.vocab_size = 60;
  models::ClipTextModel clip(clip_config, models::ModelOptions{});
  models::T5Encoder t5(t5_config, models::ModelOptions{});
  TextEncoderShape clip_shape{.kind = TextEncoderShape::Kind::clip, .vocab = 50, .width = 64, .heads = 1,
                              .head_width = 64, .mlp = 96, .layers = 2, .tokens = 77};
  TextEncoderShape t5_shape{.kind = TextEncoderShape::Kind::t5, .vocab = 60, .width = 24, .heads = 4, .head_width = 8,
                            .mlp = 40, .layers = 3, .tokens = 16};
  auto numbers = [](const std::vector<at::Tensor>& tensors) {
    int64_t n = 0;
    for (const auto& t : tensors) n += t.numel();
    return n;
  };
  EXPECT_EQ(clip_shape.parameters(), numbers(clip->parameters()));
  EXPECT_EQ(t5_shape.parameters(), numbers(t5->parameters()));

  // The LoRA: the planner's trained numbers with both encoders trained equal TextEncoderNetwork's.
  lora::LoraOptions o;
  o.rank = 4;
  lora::TextEncoderNetwork network(clip.get(), t5.get(), o, 1, at::detail::createCPUGenerator(2));
  MemoryPlanInputs in;
  in.model = small_config();
  in.lora = o;
  MemoryPlanInputs with = in;
  clip_shape.trained = t5_shape.trained = true;
  with.text_encoders = {clip_shape, t5_shape};
  EXPECT_EQ(plan_memory(with).trainable_params - plan_memory(in).trainable_params, numbers(network.parameters()));
  // Both encoders' weights count whichever trains, in the compute dtype.
  with.text_encoders[1].trained = false;
  EXPECT_EQ(plan_memory(with).weights - plan_memory(in).weights,
            (clip_shape.parameters() + t5_shape.parameters()) * in.compute_bytes);
}

}  // namespace
}  // namespace fluxtrain::train
