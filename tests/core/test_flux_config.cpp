// FluxConfig::detect: one detector for both layouts, strict for loading, lenient for identification.
#include <gtest/gtest.h>

#include "core/error.h"
#include "models/flux/flux_config.h"
#include "models/identify.h"

namespace fluxtrain::models {
namespace {

using safetensors::Dtype;
using safetensors::Header;
using safetensors::TensorInfo;

struct Shapes {
  Header h;
  Shapes& add(const std::string& name, std::vector<int64_t> shape) {
    h.index[name] = h.tensors.size();
    h.tensors.push_back(TensorInfo{name, Dtype::BF16, std::move(shape), 0, 0});
    return *this;
  }
  FluxConfig::Find find() const {
    return [this](const std::string& name) -> const TensorInfo* {
      auto it = h.index.find(name);
      return it == h.index.end() ? nullptr : &h.tensors[it->second];
    };
  }
};

// The tensors the config is read from, in each layout, for hidden 96, 3 heads, MLP 384, 2 + 3 blocks.
Shapes bfl(int doubles = 2, int singles = 3) {
  Shapes s;
  s.add("img_in.weight", {96, 64}).add("final_layer.linear.weight", {64, 96}).add("txt_in.weight", {96, 48});
  s.add("vector_in.in_layer.weight", {96, 32}).add("guidance_in.in_layer.weight", {96, 256});
  for (int i = 0; i < doubles; ++i) {
    const std::string b = "double_blocks." + std::to_string(i) + ".";
    s.add(b + "img_attn.qkv.weight", {288, 96}).add(b + "img_attn.qkv.bias", {288});
    s.add(b + "img_attn.norm.query_norm.scale", {32}).add(b + "img_mlp.0.weight", {384, 96});
  }
  for (int i = 0; i < singles; ++i) {
    const std::string b = "single_blocks." + std::to_string(i) + ".";
    s.add(b + "linear1.weight", {672, 96}).add(b + "norm.query_norm.scale", {32});
  }
  return s;
}

Shapes diffusers(int doubles = 2, int singles = 3) {
  Shapes s;
  s.add("x_embedder.weight", {96, 64}).add("proj_out.weight", {64, 96}).add("context_embedder.weight", {96, 48});
  s.add("time_text_embed.text_embedder.linear_1.weight", {96, 32});
  s.add("time_text_embed.guidance_embedder.linear_1.weight", {96, 256});
  for (int i = 0; i < doubles; ++i) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".";
    s.add(b + "attn.to_q.weight", {96, 96}).add(b + "attn.to_q.bias", {96});
    s.add(b + "attn.norm_q.weight", {32}).add(b + "ff.net.0.proj.weight", {384, 96});
  }
  for (int i = 0; i < singles; ++i) {
    const std::string b = "single_transformer_blocks." + std::to_string(i) + ".";
    s.add(b + "attn.to_q.weight", {96, 96}).add(b + "attn.norm_q.weight", {32}).add(b + "proj_mlp.weight", {384, 96});
  }
  return s;
}

void expect_tiny(const FluxConfig& c, int doubles, int singles) {
  EXPECT_EQ(c.hidden_size, 96);
  EXPECT_EQ(c.in_channels, 64);
  EXPECT_EQ(c.out_channels, 64);
  EXPECT_EQ(c.context_in_dim, 48);
  EXPECT_EQ(c.vec_in_dim, 32);
  EXPECT_EQ(c.mlp_hidden, 384);
  EXPECT_EQ(c.num_heads, 3);
  EXPECT_EQ(c.depth, doubles);
  EXPECT_EQ(c.depth_single_blocks, singles);
  EXPECT_EQ(c.axes_dim, (std::vector<int64_t>{4, 14, 14}));
  EXPECT_TRUE(c.guidance_embed);
}

TEST(FluxConfig, BothLayoutsGiveTheSameConfig) {
  for (auto [doubles, singles] : {std::pair{2, 3}, std::pair{0, 3}, std::pair{2, 0}}) {
    const Shapes b = bfl(doubles, singles), d = diffusers(doubles, singles);
    expect_tiny(FluxConfig::detect(b.find(), "bfl.safetensors"), doubles, singles);
    expect_tiny(FluxConfig::detect(d.find(), "diffusers", FluxLayout::diffusers), doubles, singles);
    expect_tiny(FluxConfig::detect_partial(b.find()), doubles, singles);
    expect_tiny(FluxConfig::detect_partial(d.find(), FluxLayout::diffusers), doubles, singles);
  }
}

TEST(FluxConfig, StrictErrorsNameTheFileAndTensor) {
  Shapes no_final = bfl();
  no_final.h.index.erase("final_layer.linear.weight");
  try {
    FluxConfig::detect(no_final.find(), "f.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f.safetensors: no 'final_layer.linear.weight'"), std::string::npos)
        << e.what();
  }
  try {
    FluxConfig::detect(bfl(0, 0).find(), "f.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("neither double nor single blocks"), std::string::npos) << e.what();
  }
  try {
    FluxConfig::detect(diffusers().find(), "f.safetensors");  // diffusers names read as BFL
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a Flux transformer in BFL layout"), std::string::npos) << e.what();
  }
}

TEST(FluxConfig, PartialReadingOfAnIncompleteHeader) {
  Shapes s = bfl();
  for (const char* name : {"final_layer.linear.weight", "double_blocks.0.img_mlp.0.weight", "txt_in.weight"}) {
    s.h.index.erase(name);
  }
  const FluxConfig c = FluxConfig::detect_partial(s.find());
  EXPECT_EQ(c.hidden_size, 96);
  EXPECT_EQ(c.num_heads, 3);
  EXPECT_EQ(c.out_channels, -1);
  EXPECT_EQ(c.context_in_dim, -1);
  EXPECT_EQ(c.mlp_hidden, -1);
}

TEST(FluxConfig, IdentificationReadsDiffusersLayoutLikeTheLoader) {
  const auto components = identify(diffusers().h);
  ASSERT_EQ(components.size(), 1u);
  const Component& c = components[0];
  EXPECT_EQ(c.kind, "flux-transformer");
  EXPECT_EQ(c.details.at("layout"), "diffusers");
  EXPECT_EQ(c.details.at("num_heads"), "3");
  EXPECT_EQ(c.details.at("double_blocks"), "2");
  EXPECT_EQ(c.details.at("single_blocks"), "3");
  EXPECT_EQ(c.details.at("context_in_dim"), "48");
  EXPECT_NE(c.description.find("in diffusers layout"), std::string::npos) << c.description;
}

}  // namespace
}  // namespace fluxtrain::models
