// Model identification from headers only (no tensor data): layouts of the real files.
#include <gtest/gtest.h>

#include <set>

#include "lora/identify.h"
#include "models/identify.h"

namespace fluxtrain::models {
namespace {

using safetensors::Dtype;
using safetensors::Header;
using safetensors::TensorInfo;

struct HeaderBuilder {
  Header h;
  HeaderBuilder& add(const std::string& name, std::vector<int64_t> shape, Dtype dtype = Dtype::BF16) {
    TensorInfo t{name, dtype, std::move(shape), 0, 0};
    h.index[name] = h.tensors.size();
    h.tensors.push_back(t);
    return *this;
  }
};

HeaderBuilder flux(const std::string& prefix, bool guidance, int hidden, int head_dim, int doubles, int singles) {
  HeaderBuilder b;
  b.add(prefix + "img_in.weight", {hidden, 64}).add(prefix + "txt_in.weight", {hidden, 4096});
  b.add(prefix + "vector_in.in_layer.weight", {hidden, 768});
  if (guidance) b.add(prefix + "guidance_in.in_layer.weight", {hidden, 256});
  for (int i = 0; i < doubles; ++i) {
    b.add(prefix + "double_blocks." + std::to_string(i) + ".img_attn.qkv.weight", {3 * hidden, hidden});
    b.add(prefix + "double_blocks." + std::to_string(i) + ".img_attn.norm.query_norm.scale", {head_dim});
  }
  for (int i = 0; i < singles; ++i)
    b.add(prefix + "single_blocks." + std::to_string(i) + ".linear1.weight", {7 * hidden, hidden});
  return b;
}

TEST(Identify, FluxDevAndSchnell) {
  auto dev = identify(flux("", true, 3072, 128, 19, 38).h);
  ASSERT_EQ(dev.size(), 1u);
  EXPECT_EQ(dev[0].kind, "flux-transformer");
  EXPECT_EQ(dev[0].details.at("variant"), "dev");
  EXPECT_EQ(dev[0].details.at("num_heads"), "24");
  EXPECT_EQ(dev[0].details.at("double_blocks"), "19");
  EXPECT_EQ(dev[0].details.at("single_blocks"), "38");
  EXPECT_NE(dev[0].description.find("FLUX.1 dev transformer"), std::string::npos) << dev[0].description;

  auto schnell = identify(flux("model.diffusion_model.", false, 256, 128, 2, 3).h);
  ASSERT_EQ(schnell.size(), 1u);
  EXPECT_EQ(schnell[0].prefix, "model.diffusion_model.");
  EXPECT_EQ(schnell[0].details.at("variant"), "schnell");
  EXPECT_EQ(schnell[0].details.at("num_heads"), "2");
  EXPECT_NE(schnell[0].description.find("Flux-architecture schnell"), std::string::npos);
}

TEST(Identify, AutoencoderClipT5) {
  HeaderBuilder ae;
  ae.add("encoder.conv_in.weight", {128, 3, 3, 3}, Dtype::F32)
      .add("decoder.conv_out.weight", {3, 128, 3, 3}, Dtype::F32);
  ae.add("decoder.conv_in.weight", {512, 16, 3, 3}, Dtype::F32);
  for (int i = 0; i < 4; ++i)
    ae.add("encoder.down." + std::to_string(i) + ".block.0.conv1.weight", {128, 128, 3, 3}, Dtype::F32);
  auto a = identify(ae.h);
  EXPECT_EQ(a.at(0).kind, "flux-ae");
  EXPECT_NE(a.at(0).description.find("FLUX.1 autoencoder"), std::string::npos);

  HeaderBuilder clip;
  clip.add("text_model.embeddings.token_embedding.weight", {49408, 768}, Dtype::F16);
  for (int i = 0; i < 12; ++i)
    clip.add("text_model.encoder.layers." + std::to_string(i) + ".mlp.fc1.weight", {3072, 768}, Dtype::F16);
  EXPECT_NE(identify(clip.h).at(0).description.find("CLIP-L text encoder"), std::string::npos);

  HeaderBuilder t5;
  t5.add("shared.weight", {32128, 4096}, Dtype::F16).add("encoder.embed_tokens.weight", {32128, 4096}, Dtype::F16);
  for (int i = 0; i < 24; ++i)
    t5.add("encoder.block." + std::to_string(i) + ".layer.0.SelfAttention.q.weight", {4096, 4096}, Dtype::F16);
  auto t = identify(t5.h);
  EXPECT_EQ(t.at(0).kind, "t5-encoder");
  EXPECT_NE(t.at(0).description.find("T5-XXL encoder"), std::string::npos);
  EXPECT_EQ(t.at(0).details.at("duplicate_embedding"), "true");
}

TEST(Identify, LorasAndMergedAndUnknown) {
  HeaderBuilder lora;
  lora.add("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", {16, 3072}, Dtype::F32);
  lora.add("lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight", {9216, 16}, Dtype::F32);
  lora.add("lora_unet_double_blocks_0_img_attn_qkv.alpha", {}, Dtype::F32);
  lora.add("lora_unet_single_blocks_0_linear1.lora_down.weight", {16, 3072}, Dtype::F32);
  lora.add("lora_unet_single_blocks_0_linear1.alpha", {}, Dtype::F32);
  auto l = identify(lora.h, {lora::lora_recogniser([](const TensorInfo&) { return 8.0; })});
  EXPECT_EQ(l.at(0).kind, "lora-kohya");
  EXPECT_EQ(l.at(0).details.at("modules"), "2");
  EXPECT_EQ(l.at(0).details.at("rank"), "16");
  EXPECT_EQ(l.at(0).details.at("alpha"), "8");
  EXPECT_EQ(l.at(0).details.at("flux"), "true");

  HeaderBuilder peft;
  peft.add("transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight", {4, 3072});
  EXPECT_EQ(identify(peft.h, {lora::lora_recogniser()}).at(0).kind, "lora-peft");

  HeaderBuilder merged = flux("model.diffusion_model.", true, 128, 128, 1, 1);
  merged.add("vae.encoder.conv_in.weight", {32, 3, 3, 3}).add("vae.decoder.conv_out.weight", {3, 32, 3, 3});
  merged.add("vae.decoder.conv_in.weight", {64, 16, 3, 3});
  merged.add("text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight", {49408, 64});
  auto m = identify(merged.h);
  ASSERT_EQ(m.size(), 3u);
  std::set<std::string> kinds;
  for (const auto& c : m) kinds.insert(c.kind);
  EXPECT_EQ(kinds, (std::set<std::string>{"flux-transformer", "flux-ae", "clip-text"}));

  HeaderBuilder other;
  other.add("conv.weight", {3, 3});
  EXPECT_EQ(identify(other.h).at(0).kind, "unknown");
}

}  // namespace
}  // namespace fluxtrain::models
