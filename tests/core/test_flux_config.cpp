// FluxConfig::detect: one detector for both layouts, strict for loading, lenient for identification; the
// RoPE axes from a stated config.json (StatedConfig) or Flux.1's head width.
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

// The tensors the config is read from, in each layout, for Flux.1's proportions at a small size: hidden
// 256 in 2 heads of Flux.1's width 128 (or `head_dim`), MLP 1024, 2 + 3 blocks.
Shapes bfl(int doubles = 2, int singles = 3, int64_t head_dim = 128) {
  Shapes s;
  s.add("img_in.weight", {256, 64}).add("final_layer.linear.weight", {64, 256}).add("txt_in.weight", {256, 48});
  s.add("vector_in.in_layer.weight", {256, 128}).add("guidance_in.in_layer.weight", {256, 256});
  for (int i = 0; i < doubles; ++i) {
    const std::string b = "double_blocks." + std::to_string(i) + ".";
    s.add(b + "img_attn.qkv.weight", {768, 256}).add(b + "img_attn.qkv.bias", {768});
    s.add(b + "img_attn.norm.query_norm.scale", {head_dim}).add(b + "img_mlp.0.weight", {1024, 256});
  }
  for (int i = 0; i < singles; ++i) {
    const std::string b = "single_blocks." + std::to_string(i) + ".";
    s.add(b + "linear1.weight", {1792, 256}).add(b + "norm.query_norm.scale", {head_dim});
  }
  return s;
}

Shapes diffusers(int doubles = 2, int singles = 3) {
  Shapes s;
  s.add("x_embedder.weight", {256, 64}).add("proj_out.weight", {64, 256}).add("context_embedder.weight", {256, 48});
  s.add("time_text_embed.text_embedder.linear_1.weight", {256, 128});
  s.add("time_text_embed.guidance_embedder.linear_1.weight", {256, 256});
  for (int i = 0; i < doubles; ++i) {
    const std::string b = "transformer_blocks." + std::to_string(i) + ".";
    s.add(b + "attn.to_q.weight", {256, 256}).add(b + "attn.to_q.bias", {256});
    s.add(b + "attn.norm_q.weight", {128}).add(b + "ff.net.0.proj.weight", {1024, 256});
  }
  for (int i = 0; i < singles; ++i) {
    const std::string b = "single_transformer_blocks." + std::to_string(i) + ".";
    s.add(b + "attn.to_q.weight", {256, 256})
        .add(b + "attn.norm_q.weight", {128})
        .add(b + "proj_mlp.weight", {1024, 256});
  }
  return s;
}

void expect_tiny(const FluxConfig& c, int doubles, int singles) {
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.in_channels, 64);
  EXPECT_EQ(c.out_channels, 64);
  EXPECT_EQ(c.context_in_dim, 48);
  EXPECT_EQ(c.vec_in_dim, 128);
  EXPECT_EQ(c.mlp_hidden, 1024);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.depth, doubles);
  EXPECT_EQ(c.depth_single_blocks, singles);
  EXPECT_EQ(c.axes_dim, (std::vector<int64_t>{16, 56, 56}));
  EXPECT_TRUE(c.guidance_embed);
}

// The error's text, or "" when `f` does not throw.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
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
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.axes_dim, (std::vector<int64_t>{16, 56, 56}));
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
  EXPECT_EQ(c.details.at("num_heads"), "2");
  EXPECT_EQ(c.details.at("double_blocks"), "2");
  EXPECT_EQ(c.details.at("single_blocks"), "3");
  EXPECT_EQ(c.details.at("context_in_dim"), "48");
  EXPECT_NE(c.description.find("in diffusers layout"), std::string::npos) << c.description;
}

// No tensor holds the RoPE axes: Flux.1's (16, 56, 56) are for head width 128 only; another head width
// needs them stated (a diffusers transformer/config.json), and what is stated must fit the weights.
TEST(FluxConfig, RopeAxesOfAnotherHeadWidthMustBeStated) {
  const Shapes narrow = bfl(2, 3, 64);  // 4 heads of 64
  const std::string unknown = error_of([&] { FluxConfig::detect(narrow.find(), "f.safetensors"); });
  EXPECT_NE(unknown.find("f.safetensors: head width 64 (from 'double_blocks.0.img_attn.norm.query_norm.scale', "
                         "hidden 256 = 4 heads x 64) has no known RoPE axes: no tensor stores them, and Flux.1's "
                         "[16, 56, 56] are for head width 128. Fix: use a transformer of head width 128, or load it "
                         "as a diffusers folder whose transformer/config.json states \"axes_dims_rope\""),
            std::string::npos)
      << unknown;
  // Identification describes it all the same, with the axes unknown.
  EXPECT_EQ(FluxConfig::detect_partial(narrow.find()).axes_dim, (std::vector<int64_t>{-1, -1, -1}));
  EXPECT_EQ(FluxConfig::detect_partial(narrow.find()).num_heads, 4);

  const auto stated = [](const std::string& json) { return StatedConfig::parse("repo/config.json", json); };
  const FluxConfig c = FluxConfig::detect(
      narrow.find(), "f.safetensors", FluxLayout::bfl,
      stated(R"({"_class_name": "FluxTransformer2DModel", "attention_head_dim": 64, "axes_dims_rope": [8, 28, 28]})"));
  EXPECT_EQ(c.axes_dim, (std::vector<int64_t>{8, 28, 28}));
  EXPECT_EQ(c.num_heads, 4);
  // Head width 128 takes the stated axes too (any split that sums to it).
  EXPECT_EQ(FluxConfig::detect(bfl().find(), "f.safetensors", FluxLayout::bfl,
                               stated(R"({"_class_name": "FluxTransformer2DModel", "axes_dims_rope": [32, 48, 48]})"))
                .axes_dim,
            (std::vector<int64_t>{32, 48, 48}));
  // A config.json of another model is not read.
  EXPECT_NE(error_of([&] {
              FluxConfig::detect(narrow.find(), "f.safetensors", FluxLayout::bfl,
                                 stated(R"({"model_type": "clip_text_model", "axes_dims_rope": [8, 28, 28]})"));
            }).find("has no known RoPE axes"),
            std::string::npos);

  const std::string odd = error_of([&] {
    FluxConfig::detect(narrow.find(), "f.safetensors", FluxLayout::bfl,
                       stated(R"({"_class_name": "FluxTransformer2DModel", "axes_dims_rope": [8, 27, 29]})"));
  });
  EXPECT_NE(odd.find("repo/config.json: \"axes_dims_rope\" [8, 27, 29] must be positive even widths that sum to the "
                     "head width 64 (from 'double_blocks.0.img_attn.norm.query_norm.scale' in f.safetensors); "
                     "Flux.1's are [16, 56, 56] for head width 128"),
            std::string::npos)
      << odd;
  const std::string sum = error_of([&] {
    FluxConfig::detect(narrow.find(), "f.safetensors", FluxLayout::bfl,
                       stated(R"({"_class_name": "FluxTransformer2DModel", "axes_dims_rope": [16, 56, 56]})"));
  });
  EXPECT_NE(sum.find("\"axes_dims_rope\" [16, 56, 56] must be positive even widths that sum to the head width 64"),
            std::string::npos)
      << sum;
  const std::string other = error_of([&] {
    FluxConfig::detect(narrow.find(), "f.safetensors", FluxLayout::bfl,
                       stated(R"({"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128})"));
  });
  EXPECT_NE(other.find("repo/config.json: \"attention_head_dim\" is 128 but the weights of f.safetensors have head "
                       "width 64 (from 'double_blocks.0.img_attn.norm.query_norm.scale'): this config.json does not "
                       "describe these weights"),
            std::string::npos)
      << other;
}

TEST(StatedConfig, ValuesSectionsAndTypeErrorsNameTheSourceAndKey) {
  const StatedConfig c = StatedConfig::parse(
      "c.json", R"({"model_type": "clip", "text_config": {"num_attention_heads": 12, "hidden_size": "768"},
                    "axes_dims_rope": [16, 56, 56], "bad_list": [1, "2"], "nothing": null})");
  EXPECT_FALSE(c.empty());
  EXPECT_EQ(c.model_type(), "clip");
  EXPECT_EQ(c.class_name(), "");
  EXPECT_EQ(c.integers("axes_dims_rope"), (std::vector<int64_t>{16, 56, 56}));
  EXPECT_EQ(c.integer("absent"), std::nullopt);
  EXPECT_EQ(c.integer("nothing"), std::nullopt);
  const StatedConfig text = c.section("text_config");
  EXPECT_EQ(text.integer("num_attention_heads"), 12);
  EXPECT_EQ(text.source(), "c.json");
  EXPECT_TRUE(c.section("vision_config").empty());
  EXPECT_TRUE(StatedConfig{}.empty());
  EXPECT_EQ(StatedConfig{}.integer("x"), std::nullopt);
  EXPECT_NE(error_of([&] {
              text.integer("hidden_size");
            }).find(R"(c.json: "text_config.hidden_size" must be an integer, got "768")"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { c.integers("bad_list"); }).find(R"(c.json: "bad_list" must be a list of integers, got [1,"2"])"),
      std::string::npos);
  EXPECT_NE(error_of([&] { c.section("model_type"); }).find(R"(c.json: "model_type" must be a JSON object)"),
            std::string::npos);
  EXPECT_NE(error_of([] { StatedConfig::parse("d.json", "{\"a\": "); }).find("d.json: not valid JSON"),
            std::string::npos);
  EXPECT_NE(error_of([] { StatedConfig::parse("d.json", "[1]"); }).find("d.json: is not a JSON object"),
            std::string::npos);
}

}  // namespace
}  // namespace fluxtrain::models
