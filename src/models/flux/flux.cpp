#include "models/flux/flux.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/error.h"
#include "models/attention.h"

namespace fluxtrain::models {

// ---------------------------------------------------------------------------------------------- ops

at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, double time_factor) {
  // t is scaled in its own dtype (BFL: bf16 rounding of 1000 t), the rest in fp32; cos first.
  at::Tensor scaled = t * time_factor;
  int64_t half = dim / 2;
  at::Tensor freqs = at::exp(-std::log(10000.0) * at::arange(half, t.options().dtype(at::kFloat)) / half);
  at::Tensor args = scaled.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);
  return at::isFloatingType(t.scalar_type()) ? emb.to(t.scalar_type()) : emb;
}

at::Tensor rope_embed(const at::Tensor& ids, const std::vector<int64_t>& axes_dim, double theta) {
  // omega and angles in fp64 (as diffusers, kohya and ComfyUI do), the rotations returned in fp32.
  std::vector<at::Tensor> parts;
  for (size_t axis = 0; axis < axes_dim.size(); ++axis) {
    int64_t dim = axes_dim[axis];
    at::Tensor scale = at::arange(0, dim, 2, ids.options().dtype(at::kDouble)) / static_cast<double>(dim);
    at::Tensor omega = 1.0 / at::pow(theta, scale);
    at::Tensor pos = ids.select(-1, static_cast<int64_t>(axis)).to(at::kDouble);
    at::Tensor angle = pos.unsqueeze(-1) * omega;  // [B, L, dim/2]
    at::Tensor cos = at::cos(angle), sin = at::sin(angle);
    parts.push_back(at::stack({cos, -sin, sin, cos}, -1).view({angle.size(0), angle.size(1), angle.size(2), 2, 2}));
  }
  return at::cat(parts, 2).unsqueeze(1).to(at::kFloat);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& rope) {
  // Interleaved pairs (x[2j], x[2j+1]) rotated by the 2x2 matrices, in fp32.
  auto shape = x.sizes().vec();
  at::Tensor pairs = x.to(at::kFloat).reshape({shape[0], shape[1], shape[2], -1, 1, 2});
  at::Tensor out = rope.select(-1, 0) * pairs.select(-1, 0) + rope.select(-1, 1) * pairs.select(-1, 1);
  return out.reshape(shape).to(x.scalar_type());
}

at::Tensor pack_latents(const at::Tensor& latents) {
  int64_t b = latents.size(0), c = latents.size(1), h = latents.size(2) / 2, w = latents.size(3) / 2;
  return latents.view({b, c, h, 2, w, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, h * w, c * 4});
}

at::Tensor unpack_latents(const at::Tensor& packed, int64_t height, int64_t width) {
  int64_t b = packed.size(0), h = height / 2, w = width / 2, c = packed.size(2) / 4;
  return packed.view({b, h, w, c, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({b, c, height, width});
}

at::Tensor make_img_ids(int64_t batch, int64_t h, int64_t w, const at::TensorOptions& options) {
  at::Tensor ids = at::zeros({h, w, 3}, options.dtype(at::kFloat));
  ids.select(2, 1).copy_(at::arange(h, options.dtype(at::kFloat)).unsqueeze(1).expand({h, w}));
  ids.select(2, 2).copy_(at::arange(w, options.dtype(at::kFloat)).unsqueeze(0).expand({h, w}));
  return ids.reshape({1, h * w, 3}).expand({batch, h * w, 3}).contiguous();
}

namespace {

at::Tensor layer_norm(const at::Tensor& x) {
  // LayerNorm(eps 1e-6, no affine) with fp32 statistics.
  return at::layer_norm(x.to(at::kFloat), {x.size(-1)}, {}, {}, 1e-6).to(x.scalar_type());
}

// The element-wise products and sums below are written as diffusers and BFL write them, not as at::addcmul:
// the CPU addcmul kernel fuses multiply and add (one rounding), which moves fp32 results by an ulp, and
// the fp8 matmul path then quantises some inputs to the neighbouring e4m3 value (tests/parity/test_flux.py
// compares that path with diffusers exactly).
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return (1 + scale) * layer_norm(x) + shift;
}

// [B, L, 3H] -> q, k, v each [B, heads, L, D].
std::vector<at::Tensor> split_heads(const at::Tensor& qkv, int64_t heads) {
  int64_t b = qkv.size(0), l = qkv.size(1), d = qkv.size(2) / (3 * heads);
  return qkv.view({b, l, 3, heads, d}).permute({2, 0, 3, 1, 4}).unbind(0);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const BlockContext& ctx) {
  at::Tensor qr = apply_rope(q, ctx.rope), kr = apply_rope(k, ctx.rope);
  at::Tensor out = models::attention(qr, kr, v, ctx.attn_mask, ctx.stash);
  return out.transpose(1, 2).flatten(2);  // [B, L, heads * D]
}

}  // namespace

// ---------------------------------------------------------------------------------------------- modules

RmsNormImpl::RmsNormImpl(int64_t dim, const at::TensorOptions& options) {
  scale = register_empty(*this, "scale", {dim}, options);
}

at::Tensor RmsNormImpl::forward(const at::Tensor& x) {
  // BFL: statistics in fp32, cast back, then the scale.
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = (xf * at::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(x.scalar_type());
  return normed * scale.to(x.scalar_type());
}

QkNormImpl::QkNormImpl(int64_t dim, const at::TensorOptions& options) {
  query_norm = register_module("query_norm", RmsNorm(dim, options));
  key_norm = register_module("key_norm", RmsNorm(dim, options));
}

MlpEmbedderImpl::MlpEmbedderImpl(int64_t in_dim, int64_t hidden, const at::TensorOptions& options) {
  in_layer = register_module("in_layer", Linear(in_dim, hidden, true, options));
  out_layer = register_module("out_layer", Linear(hidden, hidden, true, options));
}

at::Tensor MlpEmbedderImpl::forward(const at::Tensor& x) {
  return out_layer(at::silu(in_layer(x)));
}

ModulationImpl::ModulationImpl(int64_t hidden, int64_t n, const ModelOptions& options) : chunks(n) {
  lin = register_module("lin", Linear(hidden, n * hidden, true, options.tensor(), options.block_weight_dtype()));
}

std::vector<at::Tensor> ModulationImpl::forward(const at::Tensor& vec) {
  return lin(at::silu(vec)).unsqueeze(1).chunk(chunks, -1);
}

SelfAttentionImpl::SelfAttentionImpl(int64_t hidden, int64_t heads, bool qkv_bias, const ModelOptions& options) {
  auto storage = options.block_weight_dtype();
  qkv = register_module("qkv", Linear(hidden, 3 * hidden, qkv_bias, options.tensor(), storage));
  norm = register_module("norm", QkNorm(hidden / heads, options.tensor()));
  proj = register_module("proj", Linear(hidden, hidden, true, options.tensor(), storage));
}

FluxMlpImpl::FluxMlpImpl(int64_t hidden, int64_t mlp_hidden, const ModelOptions& options) {
  auto storage = options.block_weight_dtype();
  fc1 = register_module("0", Linear(hidden, mlp_hidden, true, options.tensor(), storage));
  fc2 = register_module("2", Linear(mlp_hidden, hidden, true, options.tensor(), storage));
}

at::Tensor FluxMlpImpl::forward(const at::Tensor& x, ProductStash* stash) {
  return fc2->forward_stashed(at::gelu(fc1->forward_stashed(x, stash, /*wide=*/true), "tanh"), stash, /*wide=*/false);
}

DoubleBlockImpl::DoubleBlockImpl(const FluxConfig& c, const ModelOptions& options) : heads(c.num_heads) {
  img_mod = register_module("img_mod", Modulation(c.hidden_size, 6, options));
  img_attn = register_module("img_attn", SelfAttention(c.hidden_size, c.num_heads, c.qkv_bias, options));
  img_mlp = register_module("img_mlp", FluxMlp(c.hidden_size, c.mlp_hidden, options));
  txt_mod = register_module("txt_mod", Modulation(c.hidden_size, 6, options));
  txt_attn = register_module("txt_attn", SelfAttention(c.hidden_size, c.num_heads, c.qkv_bias, options));
  txt_mlp = register_module("txt_mlp", FluxMlp(c.hidden_size, c.mlp_hidden, options));
}

std::pair<at::Tensor, at::Tensor> DoubleBlockImpl::forward(const at::Tensor& img_in, const at::Tensor& txt_in,
                                                           const BlockContext& ctx) {
  auto im = img_mod(ctx.vec);  // shift1, scale1, gate1, shift2, scale2, gate2
  auto tm = txt_mod(ctx.vec);
  auto qkv_of = [&](SelfAttention& attn, const at::Tensor& x, const std::vector<at::Tensor>& m) {
    auto parts = split_heads(attn->qkv->forward_stashed(modulate(x, m[0], m[1]), ctx.products, /*wide=*/true), heads);
    at::Tensor v = parts[2];
    return std::vector<at::Tensor>{attn->norm->query_norm(parts[0]).to(v.scalar_type()),
                                   attn->norm->key_norm(parts[1]).to(v.scalar_type()), v};
  };
  auto img_qkv = qkv_of(img_attn, img_in, im);
  auto txt_qkv = qkv_of(txt_attn, txt_in, tm);
  at::Tensor q = at::cat({txt_qkv[0], img_qkv[0]}, 2);
  at::Tensor k = at::cat({txt_qkv[1], img_qkv[1]}, 2);
  at::Tensor v = at::cat({txt_qkv[2], img_qkv[2]}, 2);
  at::Tensor a = attention(q, k, v, ctx);
  int64_t lt = txt_in.size(1);
  // Contiguous once here rather than copied by each product that reads them (base and LoRA).
  at::Tensor txt_a = a.narrow(1, 0, lt).contiguous(), img_a = a.narrow(1, lt, a.size(1) - lt).contiguous();

  at::Tensor img = img_in + im[2] * img_attn->proj->forward_stashed(img_a, ctx.products, /*wide=*/false);
  img = img + im[5] * img_mlp->forward(modulate(img, im[3], im[4]), ctx.products);
  at::Tensor txt = txt_in + tm[2] * txt_attn->proj->forward_stashed(txt_a, ctx.products, /*wide=*/false);
  txt = txt + tm[5] * txt_mlp->forward(modulate(txt, tm[3], tm[4]), ctx.products);
  return {img, txt};
}

SingleBlockImpl::SingleBlockImpl(const FluxConfig& c, const ModelOptions& options)
    : hidden(c.hidden_size), mlp_hidden(c.mlp_hidden), heads(c.num_heads) {
  auto storage = options.block_weight_dtype();
  linear1 = register_module("linear1", Linear(hidden, 3 * hidden + mlp_hidden, true, options.tensor(), storage));
  linear2 = register_module("linear2", Linear(hidden + mlp_hidden, hidden, true, options.tensor(), storage));
  norm = register_module("norm", QkNorm(c.head_dim(), options.tensor()));
  modulation = register_module("modulation", Modulation(hidden, 3, options));
}

at::Tensor SingleBlockImpl::forward(const at::Tensor& x, const BlockContext& ctx) {
  auto m = modulation(ctx.vec);  // shift, scale, gate
  at::Tensor h = linear1->forward_stashed(modulate(x, m[0], m[1]), ctx.products, /*wide=*/true);
  at::Tensor qkv = h.narrow(-1, 0, 3 * hidden), mlp = h.narrow(-1, 3 * hidden, mlp_hidden);
  auto parts = split_heads(qkv, heads);
  at::Tensor v = parts[2];
  at::Tensor q = norm->query_norm(parts[0]).to(v.scalar_type());
  at::Tensor k = norm->key_norm(parts[1]).to(v.scalar_type());
  at::Tensor a = attention(q, k, v, ctx);
  return x + m[2] * linear2->forward_stashed(at::cat({a, at::gelu(mlp, "tanh")}, 2), ctx.products, /*wide=*/false);
}

LastLayerImpl::LastLayerImpl(int64_t hidden, int64_t out_channels, const at::TensorOptions& options) {
  linear = register_module("linear", Linear(hidden, out_channels, true, options));
  auto holder = std::make_shared<torch::nn::Module>();
  modulation = Linear(hidden, 2 * hidden, true, options);
  holder->register_module("1", modulation);
  register_module("adaLN_modulation", holder);
}

at::Tensor LastLayerImpl::forward(const at::Tensor& x, const at::Tensor& vec) {
  auto parts = modulation(at::silu(vec)).chunk(2, 1);  // shift, scale
  return linear(modulate(x, parts[0].unsqueeze(1), parts[1].unsqueeze(1)));
}

FluxTransformerImpl::FluxTransformerImpl(const FluxConfig& c, const ModelOptions& options) : config(c) {
  auto opts = options.tensor();
  img_in = register_module("img_in", Linear(c.in_channels, c.hidden_size, true, opts));
  time_in = register_module("time_in", MlpEmbedder(256, c.hidden_size, opts));
  vector_in = register_module("vector_in", MlpEmbedder(c.vec_in_dim, c.hidden_size, opts));
  if (c.guidance_embed) guidance_in = register_module("guidance_in", MlpEmbedder(256, c.hidden_size, opts));
  txt_in = register_module("txt_in", Linear(c.context_in_dim, c.hidden_size, true, opts));
  // Blocks from `first_host` on keep their Linear weights in host memory (ModelOptions::host_blocks): each
  // is moved there right after it is built, so the device holds at most one of them at a time.
  const int64_t total = c.depth + c.depth_single_blocks;
  if (options.host_blocks < 0 || options.host_blocks > total)
    fail("host_blocks = ", options.host_blocks, ": this Flux model has ", total, " blocks");
  const int64_t first_host = total - options.host_blocks;
  const bool to_host = !options.device.is_cpu() && !options.device.is_meta();
  double_blocks = register_module("double_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.depth; ++i) {
    DoubleBlock block(c, options);
    if (to_host && i >= first_host) move_linear_weights_to_host(*block);
    double_blocks->push_back(block);
  }
  single_blocks = register_module("single_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.depth_single_blocks; ++i) {
    SingleBlock block(c, options);
    if (to_host && c.depth + i >= first_host) move_linear_weights_to_host(*block);
    single_blocks->push_back(block);
  }
  final_layer = register_module("final_layer", LastLayer(c.hidden_size, c.out_channels, opts));
}

BlockContext FluxTransformerImpl::prepare(const FluxInputs& in, at::Tensor& img, at::Tensor& txt) {
  BlockContext ctx;
  img = img_in(in.img);
  // Timesteps and guidance are embedded from fp32 values whatever the compute dtype (as ComfyUI does;
  // BFL rounds t to bf16 first, which moves t = 0.98066 to 980/1000).
  ctx.vec = time_in(timestep_embedding(in.timesteps.to(at::kFloat)).to(img.scalar_type()));
  if (config.guidance_embed) {
    if (!in.guidance.defined()) fail("this Flux model (dev) needs a guidance value; none was given");
    ctx.vec = ctx.vec + guidance_in(timestep_embedding(in.guidance.to(at::kFloat)).to(img.scalar_type()));
  }
  ctx.vec = ctx.vec + vector_in(in.y);
  txt = txt_in(in.txt);
  ctx.rope = rope_embed(at::cat({in.txt_ids, in.img_ids}, 1), config.axes_dim, config.theta);
  if (in.txt_mask.defined()) {
    at::Tensor keep_img = at::ones({in.img.size(0), in.img.size(1)}, in.txt_mask.options().dtype(at::kBool));
    ctx.attn_mask = at::cat({in.txt_mask.to(at::kBool), keep_img}, 1).view({in.img.size(0), 1, 1, -1});
  }
  return ctx;
}

at::Tensor FluxTransformerImpl::finish(const at::Tensor& img, const BlockContext& ctx) {
  return final_layer(img, ctx.vec);
}

void move_linear_weights_to_host(torch::nn::Module& block) {
  at::NoGradGuard no_grad;
  for (const auto& child : block.modules(/*include_self=*/true)) {
    auto* linear = dynamic_cast<LinearImpl*>(child.get());
    if (!linear || linear->weight.device().is_cpu()) continue;
    const bool pin = linear->weight.device().is_cuda();
    at::Tensor host = at::empty(linear->weight.sizes(), linear->weight.options().device(at::kCPU).pinned_memory(pin));
    host.copy_(linear->weight);
    // The registered parameter and the member are one tensor: both now hold the host copy.
    linear->weight.set_data(host);
  }
}

at::Tensor FluxTransformerImpl::forward(const FluxInputs& in) {
  at::Tensor img, txt;
  BlockContext ctx = prepare(in, img, txt);
  int64_t index = 0;
  // Around each block: the hooks (block swapping); after_block also when the block throws.
  auto hooked = [&](auto&& run) {
    if (!block_hooks) return run();
    const int64_t i = index;
    block_hooks->before_block(i, BlockPass::forward);
    struct After {
      BlockHooks* hooks;
      int64_t i;
      ~After() { hooks->after_block(i); }
    } after{block_hooks, i};
    return run();
  };
  for (const auto& block : *double_blocks) {
    std::tie(img, txt) = hooked([&] { return block->as<DoubleBlock>()->forward(img, txt, ctx); });
    ++index;
  }
  at::Tensor x = at::cat({txt, img}, 1);
  for (const auto& block : *single_blocks) {
    x = hooked([&] { return block->as<SingleBlock>()->forward(x, ctx); });
    ++index;
  }
  return finish(x.narrow(1, txt.size(1), img.size(1)), ctx);
}

}  // namespace fluxtrain::models
