#include "models/ae/autoencoder.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "models/header_query.h"

namespace fluxtrain::models {

namespace {

constexpr int64_t kGroups = 32;
constexpr double kNormEps = 1e-6;

GroupNorm group_norm(int64_t channels, const at::TensorOptions& options) {
  return GroupNorm(kGroups, channels, kNormEps, options);
}

at::Tensor swish(const at::Tensor& x) {
  return at::silu(x);
}

}  // namespace

// ---------------------------------------------------------------------------------------------- config

AeConfig AeConfig::detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                          const std::string& file) {
  HeaderQuery q(find, file, "Flux autoencoder");
  AeConfig c;
  const auto& conv_in = q.need("encoder.conv_in.weight");
  c.ch = conv_in.shape.at(0);
  c.in_channels = conv_in.shape.at(1);
  int64_t levels = q.count("encoder.down.", ".block.0.conv1.weight");
  c.num_res_blocks = q.count("encoder.down.0.block.", ".conv1.weight");
  c.ch_mult.clear();
  for (int64_t l = 0; l < levels; ++l) {
    int64_t width = q.need("encoder.down." + std::to_string(l) + ".block.0.conv1.weight").shape.at(0);
    if (c.ch <= 0 || width % c.ch != 0) fail(file, ": level ", l, " width ", width, " is not a multiple of ch ", c.ch);
    c.ch_mult.push_back(width / c.ch);
  }
  c.z_channels = q.need("decoder.conv_in.weight").shape.at(1);
  c.out_ch = q.need("decoder.conv_out.weight").shape.at(0);
  int64_t moments = q.need("encoder.conv_out.weight").shape.at(0);
  if (moments != 2 * c.z_channels) {
    fail(file, ": encoder.conv_out has ", moments, " channels but the decoder takes ", c.z_channels,
         " latent channels (expected twice as many: mean and logvar)");
  }
  c.validate(file);
  return c;
}

void AeConfig::validate(const std::string& file) const {
  if (ch_mult.empty()) fail(file, ": the autoencoder has no encoder.down levels");
  if (num_res_blocks <= 0) fail(file, ": the autoencoder has no resnet blocks per level");
  for (int64_t m : ch_mult) {
    if (m <= 0 || (ch * m) % kGroups != 0) {
      fail(file, ": autoencoder width ", ch * m, " is not a positive multiple of the ", kGroups, " GroupNorm groups");
    }
  }
  if (ch % kGroups != 0) fail(file, ": autoencoder width ", ch, " is not a multiple of ", kGroups, " GroupNorm groups");
}

// ---------------------------------------------------------------------------------------------- blocks

AeResnetBlockImpl::AeResnetBlockImpl(int64_t in, int64_t out, const at::TensorOptions& options) {
  norm1 = register_module("norm1", group_norm(in, options));
  conv1 = register_module("conv1", Conv2d(in, out, 3, 1, 1, options));
  norm2 = register_module("norm2", group_norm(out, options));
  conv2 = register_module("conv2", Conv2d(out, out, 3, 1, 1, options));
  if (in != out) nin_shortcut = register_module("nin_shortcut", Conv2d(in, out, 1, 1, 0, options));
}

at::Tensor AeResnetBlockImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv1(swish(norm1(x)));
  h = conv2(swish(norm2(h)));
  return (nin_shortcut ? nin_shortcut(x) : x) + h;
}

AeAttnBlockImpl::AeAttnBlockImpl(int64_t c, const at::TensorOptions& options) {
  norm = register_module("norm", group_norm(c, options));
  q = register_module("q", Conv2d(c, c, 1, 1, 0, options));
  k = register_module("k", Conv2d(c, c, 1, 1, 0, options));
  v = register_module("v", Conv2d(c, c, 1, 1, 0, options));
  proj_out = register_module("proj_out", Conv2d(c, c, 1, 1, 0, options));
}

at::Tensor AeAttnBlockImpl::forward(const at::Tensor& x) {
  int64_t b = x.size(0), c = x.size(1), height = x.size(2), width = x.size(3);
  at::Tensor h = norm(x);
  // [B, C, H, W] -> [B, 1, H*W, C]: token y*W + x, one head of width C, scale 1/sqrt(C).
  auto tokens = [&](const at::Tensor& t) { return t.flatten(2).transpose(1, 2).unsqueeze(1); };
  at::Tensor a = at::scaled_dot_product_attention(tokens(q(h)), tokens(k(h)), tokens(v(h)));
  a = a.squeeze(1).transpose(1, 2).reshape({b, c, height, width});
  return x + proj_out(a);
}

AeResampleImpl::AeResampleImpl(int64_t c, bool down_, const at::TensorOptions& options) : down(down_) {
  conv = register_module("conv", Conv2d(c, c, 3, down ? 2 : 1, down ? 0 : 1, options));
}

at::Tensor AeResampleImpl::forward(const at::Tensor& x) {
  if (down) return conv(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));  // BFL: zeros right and bottom only
  return conv(at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2}));
}

AeLevelImpl::AeLevelImpl(int64_t in, int64_t out, int64_t blocks, const char* resample_name,
                         const at::TensorOptions& options) {
  block = register_module("block", torch::nn::ModuleList());
  for (int64_t b = 0; b < blocks; ++b) block->push_back(AeResnetBlock(b == 0 ? in : out, out, options));
  if (resample_name != nullptr) {
    resample = register_module(resample_name, AeResample(out, std::string(resample_name) == "downsample", options));
  }
}

at::Tensor AeLevelImpl::forward(at::Tensor x) {
  for (const auto& b : *block) x = b->as<AeResnetBlock>()->forward(x);
  return resample ? resample(x) : x;
}

AeMidImpl::AeMidImpl(int64_t c, const at::TensorOptions& options) {
  block_1 = register_module("block_1", AeResnetBlock(c, c, options));
  attn_1 = register_module("attn_1", AeAttnBlock(c, options));
  block_2 = register_module("block_2", AeResnetBlock(c, c, options));
}

at::Tensor AeMidImpl::forward(const at::Tensor& x) {
  return block_2(attn_1(block_1(x)));
}

// ---------------------------------------------------------------------------------------------- encoder, decoder

AeEncoderImpl::AeEncoderImpl(const AeConfig& c, const at::TensorOptions& options) {
  conv_in = register_module("conv_in", Conv2d(c.in_channels, c.ch, 3, 1, 1, options));
  down = register_module("down", torch::nn::ModuleList());
  int64_t levels = static_cast<int64_t>(c.ch_mult.size());
  int64_t width = c.ch;
  for (int64_t l = 0; l < levels; ++l) {
    int64_t out = c.ch * c.ch_mult[l];
    down->push_back(AeLevel(width, out, c.num_res_blocks, l + 1 < levels ? "downsample" : nullptr, options));
    width = out;
  }
  mid = register_module("mid", AeMid(width, options));
  norm_out = register_module("norm_out", group_norm(width, options));
  conv_out = register_module("conv_out", Conv2d(width, 2 * c.z_channels, 3, 1, 1, options));
}

at::Tensor AeEncoderImpl::forward(const at::Tensor& x) {
  at::Tensor h = conv_in(x);
  for (const auto& level : *down) h = level->as<AeLevel>()->forward(h);
  return conv_out(swish(norm_out(mid(h))));
}

AeDecoderImpl::AeDecoderImpl(const AeConfig& c, const at::TensorOptions& options) {
  int64_t levels = static_cast<int64_t>(c.ch_mult.size());
  int64_t top = c.ch * c.ch_mult.back();
  conv_in = register_module("conv_in", Conv2d(c.z_channels, top, 3, 1, 1, options));
  mid = register_module("mid", AeMid(top, options));
  // Registered in key order up.0 ... up.(n-1); level l takes the width of level l+1 (the one that ran before it).
  up = register_module("up", torch::nn::ModuleList());
  for (int64_t l = 0; l < levels; ++l) {
    int64_t in = l + 1 < levels ? c.ch * c.ch_mult[l + 1] : top;
    up->push_back(AeLevel(in, c.ch * c.ch_mult[l], c.num_res_blocks + 1, l > 0 ? "upsample" : nullptr, options));
  }
  norm_out = register_module("norm_out", group_norm(c.ch * c.ch_mult.front(), options));
  conv_out = register_module("conv_out", Conv2d(c.ch * c.ch_mult.front(), c.out_ch, 3, 1, 1, options));
}

at::Tensor AeDecoderImpl::forward(const at::Tensor& z) {
  at::Tensor h = mid(conv_in(z));
  for (int64_t l = static_cast<int64_t>(up->size()) - 1; l >= 0; --l) h = up[l]->as<AeLevel>()->forward(h);
  return conv_out(swish(norm_out(h)));
}

AutoEncoderImpl::AutoEncoderImpl(const AeConfig& c, const ModelOptions& options) : config(c) {
  encoder = register_module("encoder", AeEncoder(c, options.tensor()));
  decoder = register_module("decoder", AeDecoder(c, options.tensor()));
}

at::Tensor AutoEncoderImpl::moments(const at::Tensor& pixels) {
  int64_t factor = int64_t{1} << (config.ch_mult.size() - 1);
  if (pixels.dim() != 4 || pixels.size(1) != config.in_channels || pixels.size(2) % factor != 0 ||
      pixels.size(3) % factor != 0) {
    fail("the autoencoder takes images [B, ", config.in_channels, ", H, W] with H and W multiples of ", factor,
         "; got ", pixels.sizes());
  }
  return encoder(pixels);
}

at::Tensor AutoEncoderImpl::encode(const at::Tensor& pixels) {
  at::Tensor mean = moments(pixels).narrow(1, 0, config.z_channels);
  return config.scale_factor * (mean - config.shift_factor);
}

at::Tensor AutoEncoderImpl::decode(const at::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != config.z_channels) {
    fail("the autoencoder decodes latents [B, ", config.z_channels, ", h, w]; got ", latents.sizes());
  }
  return decoder(latents / config.scale_factor + config.shift_factor);
}

}  // namespace fluxtrain::models
