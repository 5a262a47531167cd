// The LoRA key grammar (lora/keys.h): every spelling parses to the same module and part.
#include <gtest/gtest.h>

#include "lora/keys.h"

namespace fluxtrain::lora::keys {
namespace {

TEST(LoraKeys, EverySpellingParses) {
  struct Case {
    const char* key;
    const char* module;
    Part part;
    Spelling spelling;
  };
  const Case cases[] = {
      {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv", Part::down,
       Spelling::kohya},
      {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", "lora_unet_double_blocks_0_img_attn_qkv", Part::up,
       Spelling::kohya},
      {"lora_unet_double_blocks_0_img_attn_qkv.alpha", "lora_unet_double_blocks_0_img_attn_qkv", Part::alpha,
       Spelling::kohya},
      {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_q",
       Part::down, Spelling::peft},
      {"transformer.transformer_blocks.0.attn.to_q.lora_B.weight", "transformer.transformer_blocks.0.attn.to_q",
       Part::up, Spelling::peft},
      {"base_model.model.proj_out.lora_A.default.weight", "base_model.model.proj_out", Part::down, Spelling::peft},
      {"diffusion_model.double_blocks.0.img_attn.qkv.lora_B.default.weight",
       "diffusion_model.double_blocks.0.img_attn.qkv", Part::up, Spelling::peft},
      {"unet.x.lora.down.weight", "unet.x", Part::down, Spelling::diffusers_legacy},
      {"unet.x.lora_linear_layer.up.weight", "unet.x", Part::up, Spelling::diffusers_legacy},
      {"unet.attn.to_q_lora.down.weight", "unet.attn.to_q", Part::down, Spelling::diffusers_legacy},
  };
  for (const Case& c : cases) {
    auto parsed = parse(c.key);
    ASSERT_TRUE(parsed) << c.key;
    EXPECT_EQ(parsed->module, c.module) << c.key;
    EXPECT_EQ(parsed->part, c.part) << c.key;
    EXPECT_EQ(parsed->spelling, c.spelling) << c.key;
  }
  EXPECT_FALSE(parse("double_blocks.0.img_attn.qkv.weight"));
  EXPECT_FALSE(parse("lora_unet_x.hada_t1"));
}

TEST(LoraKeys, LycorisParts) {
  // LyCORIS's names, as its kohya wrapper writes them (no ".weight"), round trip through tensor_key.
  const std::pair<const char*, Part> cases[] = {
      {"lokr_w1", Part::lokr_w1},     {"lokr_w1_a", Part::lokr_w1_a}, {"lokr_w1_b", Part::lokr_w1_b},
      {"lokr_w2", Part::lokr_w2},     {"lokr_w2_a", Part::lokr_w2_a}, {"lokr_w2_b", Part::lokr_w2_b},
      {"hada_w1_a", Part::hada_w1_a}, {"hada_w1_b", Part::hada_w1_b}, {"hada_w2_a", Part::hada_w2_a},
      {"hada_w2_b", Part::hada_w2_b}, {"dora_scale", Part::dora_scale}};
  for (const auto& [suffix, part] : cases) {
    const std::string key = std::string("lora_unet_double_blocks_0_img_attn_qkv.") + suffix;
    auto parsed = parse(key);
    ASSERT_TRUE(parsed) << key;
    EXPECT_EQ(parsed->module, "lora_unet_double_blocks_0_img_attn_qkv");
    EXPECT_EQ(parsed->part, part) << key;
    EXPECT_EQ(parsed->spelling, Spelling::kohya);
    EXPECT_EQ(tensor_key(parsed->module, part), key);
    EXPECT_EQ(part_label(part), suffix);
  }
  EXPECT_EQ(lycoris_type(Part::lokr_w2_b), "LoKr");
  EXPECT_EQ(lycoris_type(Part::hada_w1_a), "LoHa");
  EXPECT_EQ(lycoris_type(Part::dora_scale), "DoRA");
  EXPECT_EQ(lycoris_type(Part::down), "");
  EXPECT_EQ(lycoris_type(Part::alpha), "");
}

TEST(LoraKeys, NoSuffixEndsAnother) {
  // parse() takes the first suffix that fits; that is only unambiguous while none ends another.
  for (const PartSuffix& a : part_suffixes()) {
    for (const PartSuffix& b : part_suffixes()) {
      if (&a == &b) continue;
      EXPECT_FALSE(a.suffix.ends_with(b.suffix)) << a.suffix << " / " << b.suffix;
    }
  }
}

TEST(LoraKeys, KohyaKeysAndModuleNames) {
  EXPECT_EQ(tensor_key("lora_unet_x", Part::down), "lora_unet_x.lora_down.weight");
  EXPECT_EQ(tensor_key("lora_unet_x", Part::up), "lora_unet_x.lora_up.weight");
  EXPECT_EQ(tensor_key("lora_unet_x", Part::alpha), "lora_unet_x.alpha");
  for (Part part : {Part::down, Part::up, Part::alpha}) {
    auto parsed = parse(tensor_key("m", part));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->part, part);
    EXPECT_EQ(parsed->spelling, Spelling::kohya);
  }
  EXPECT_EQ(module_name(kTransformerPrefix, "double_blocks.0.img_attn.qkv"), "lora_unet_double_blocks_0_img_attn_qkv");
  EXPECT_EQ(module_name(kClipPrefix, "text_model.encoder.layers.0.mlp.fc1"),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1");
  EXPECT_EQ(module_name(kT5Prefix, "encoder.block.0.layer.0.SelfAttention.q"),
            "lora_te3_encoder_block_0_layer_0_SelfAttention_q");
  EXPECT_EQ(component_prefix("lora_te1_text_model_x"), kClipPrefix);
  EXPECT_EQ(component_prefix("lora_transformer_proj_out"), kDiffusersTransformerPrefix);
  EXPECT_EQ(component_prefix("lora_unet_x"), kTransformerPrefix);
  EXPECT_EQ(component_prefix("lora_te2_x"), "");
  EXPECT_EQ(part_label(Part::down), "down (lora_A)");
  EXPECT_EQ(part_label(Part::up), "up (lora_B)");
}

TEST(LoraKeys, TextEncodersAdaptersAndSplitParts) {
  for (const char* module : {"lora_te1_text_model_x", "lora_te3_encoder_x", "lora_te_x", "text_encoder.x",
                             "text_encoder_2.x", "text_encoders.clip_l.x", "te1.x", "te2.x"}) {
    EXPECT_TRUE(is_text_encoder(module)) << module;
  }
  EXPECT_FALSE(is_text_encoder("lora_unet_double_blocks_0_img_attn_qkv"));
  EXPECT_FALSE(is_text_encoder("transformer.transformer_blocks.0.attn.to_q"));

  EXPECT_FALSE(unsupported_adapter("lora_unet_x.hada_w1_a"));  // LoHa, LoKr and DoRA are applied
  EXPECT_FALSE(unsupported_adapter("lora_unet_x.lokr_w1"));
  EXPECT_FALSE(unsupported_adapter("lora_unet_x.dora_scale"));
  EXPECT_EQ(unsupported_adapter("lora_unet_x.hada_t1")->name, "Tucker LoHa");
  EXPECT_EQ(unsupported_adapter("lora_unet_x.lokr_t2")->name, "Tucker LoKr");
  EXPECT_EQ(unsupported_adapter("lora_unet_x.oft_blocks")->name, "OFT");
  EXPECT_EQ(unsupported_adapter("lora_unet_x.diff")->name, "full weight difference");
  EXPECT_EQ(unsupported_adapter("lora_unet_x.lora_mid.weight")->name, "Tucker LoCon");
  EXPECT_FALSE(unsupported_adapter("lora_unet_x.lora_down.weight"));

  EXPECT_EQ(split_parts_text("double_blocks.3.img_attn.qkv"), "q/k/v");
  EXPECT_EQ(split_parts_text("double_blocks.3.txt_attn.qkv"), "q/k/v");
  EXPECT_EQ(split_parts_text("single_blocks.0.linear1"), "q/k/v/mlp");
  EXPECT_TRUE(split_parts("single_blocks.0.linear1").back().mlp_input);
  EXPECT_TRUE(split_parts("single_blocks.0.linear2").empty());
  EXPECT_TRUE(split_parts("double_blocks.0.img_attn.proj").empty());
}

}  // namespace
}  // namespace fluxtrain::lora::keys
