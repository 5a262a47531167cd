#include "models/t5/t5_encoder.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "models/header_query.h"

namespace fluxtrain::models {

T5Config T5Config::detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                          const std::string& file) {
  HeaderQuery q(find, file, "T5 encoder");
  T5Config c;
  const auto& shared = q.need("shared.weight");
  c.vocab_size = shared.shape.at(0);
  c.d_model = shared.shape.at(1);
  const auto& table = q.need("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
  c.num_buckets = table.shape.at(0);
  c.num_heads = table.shape.at(1);
  int64_t inner = q.need("encoder.block.0.layer.0.SelfAttention.q.weight").shape.at(0);
  if (c.num_heads <= 0 || inner % c.num_heads != 0) {
    fail(file, ": T5 attention width ", inner, " is not a multiple of the ", c.num_heads, " heads of the bias table");
  }
  c.d_kv = inner / c.num_heads;
  c.d_ff = q.need("encoder.block.0.layer.1.DenseReluDense.wi_0.weight").shape.at(0);
  c.num_layers = 0;
  while (find("encoder.block." + std::to_string(c.num_layers) + ".layer.0.SelfAttention.q.weight") != nullptr) {
    ++c.num_layers;
  }
  if (c.num_buckets % 4 != 0) fail(file, ": T5 bucket count ", c.num_buckets, " must be a multiple of 4");
  return c;
}

at::Tensor t5_relative_position_bucket(const at::Tensor& relative_position, int64_t num_buckets, int64_t max_distance) {
  // Bidirectional: half the buckets for keys after the query. Then half of those exact (n < max_exact),
  // the rest logarithmic up to max_distance. Same float32 ops as HF so the boundaries agree.
  int64_t half = num_buckets / 2;
  at::Tensor buckets = (relative_position > 0).to(at::kLong) * half;
  at::Tensor n = at::abs(relative_position);
  int64_t max_exact = half / 2;
  at::Tensor is_small = n < max_exact;
  at::Tensor large = (at::log(n.to(at::kFloat) / max_exact) / std::log(static_cast<double>(max_distance) / max_exact) *
                      (half - max_exact))
                         .to(at::kLong) +
                     max_exact;
  large = at::clamp_max(large, half - 1);
  return buckets + at::where(is_small, n, large);
}

// ---------------------------------------------------------------------------------------------- modules

T5LayerNormImpl::T5LayerNormImpl(int64_t dim, double eps_, const at::TensorOptions& options) : eps(eps_) {
  weight = register_empty(*this, "weight", {dim}, options);
}

at::Tensor T5LayerNormImpl::forward(const at::Tensor& x) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  auto w = weight.scalar_type();
  if (w == at::kHalf || w == at::kBFloat16) normed = normed.to(w);
  return weight * normed;
}

T5AttentionImpl::T5AttentionImpl(const T5Config& c, bool has_relative_bias, const ModelOptions& options)
    : heads(c.num_heads), d_kv(c.d_kv) {
  auto storage = options.block_weight_dtype();
  q = register_module("q", Linear(c.d_model, c.inner_dim(), false, options.tensor(), storage));
  k = register_module("k", Linear(c.d_model, c.inner_dim(), false, options.tensor(), storage));
  v = register_module("v", Linear(c.d_model, c.inner_dim(), false, options.tensor(), storage));
  o = register_module("o", Linear(c.inner_dim(), c.d_model, false, options.tensor(), storage));
  if (has_relative_bias) {
    relative_attention_bias =
        register_module("relative_attention_bias", Embedding(c.num_buckets, c.num_heads, options.tensor()));
  }
}

at::Tensor T5AttentionImpl::forward(const at::Tensor& x, const at::Tensor& bias) {
  int64_t b = x.size(0), l = x.size(1);
  auto split = [&](const at::Tensor& t) { return t.view({b, l, heads, d_kv}).transpose(1, 2); };
  // No 1/sqrt(d): T5 folds the scale into its weights. The bias carries position and mask.
  at::Tensor a = at::scaled_dot_product_attention(split(q(x)), split(k(x)), split(v(x)), bias.to(x.scalar_type()), 0.0,
                                                  false, /*scale=*/1.0);
  return o(a.transpose(1, 2).reshape({b, l, heads * d_kv}));
}

T5SelfAttentionLayerImpl::T5SelfAttentionLayerImpl(const T5Config& c, bool has_relative_bias,
                                                   const ModelOptions& options) {
  SelfAttention = register_module("SelfAttention", T5Attention(c, has_relative_bias, options));
  layer_norm = register_module("layer_norm", T5LayerNorm(c.d_model, c.layer_norm_eps, options.tensor()));
}

T5FeedForwardLayerImpl::T5FeedForwardLayerImpl(const T5Config& c, const ModelOptions& options) {
  auto storage = options.block_weight_dtype();
  auto dense = std::make_shared<torch::nn::Module>();
  wi_0 = Linear(c.d_model, c.d_ff, false, options.tensor(), storage);
  wi_1 = Linear(c.d_model, c.d_ff, false, options.tensor(), storage);
  wo = Linear(c.d_ff, c.d_model, false, options.tensor(), storage);
  dense->register_module("wi_0", wi_0);
  dense->register_module("wi_1", wi_1);
  dense->register_module("wo", wo);
  register_module("DenseReluDense", dense);
  layer_norm = register_module("layer_norm", T5LayerNorm(c.d_model, c.layer_norm_eps, options.tensor()));
}

T5BlockImpl::T5BlockImpl(const T5Config& c, bool has_relative_bias, const ModelOptions& options) {
  layer = register_module("layer", torch::nn::ModuleList());
  attention = T5SelfAttentionLayer(c, has_relative_bias, options);
  feed_forward = T5FeedForwardLayer(c, options);
  layer->push_back(attention);
  layer->push_back(feed_forward);
}

namespace {

// HF T5: in fp16 only, clamp to +-(max - 1000 if anything overflowed, else max) after each sub-layer.
at::Tensor clamp_fp16(const at::Tensor& x) {
  if (x.scalar_type() != at::kHalf) return x;
  double max = std::numeric_limits<c10::Half>::max();
  double bound = at::isinf(x).any().item<bool>() ? max - 1000 : max;
  return at::clamp(x, -bound, bound);
}

}  // namespace

at::Tensor T5BlockImpl::forward(const at::Tensor& x, const at::Tensor& bias) {
  auto& att = *attention;
  at::Tensor h = clamp_fp16(x + att.SelfAttention(att.layer_norm(x), bias));
  auto& ff = *feed_forward;
  at::Tensor n = ff.layer_norm(h);
  at::Tensor gated = at::gelu(ff.wi_0(n), "tanh") * ff.wi_1(n);
  return clamp_fp16(h + ff.wo(gated));
}

T5StackImpl::T5StackImpl(const T5Config& c, const ModelOptions& options) {
  block = register_module("block", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) block->push_back(T5Block(c, i == 0, options));
  final_layer_norm = register_module("final_layer_norm", T5LayerNorm(c.d_model, c.layer_norm_eps, options.tensor()));
}

T5EncoderImpl::T5EncoderImpl(const T5Config& c, const ModelOptions& options) : config(c) {
  shared = register_module("shared", Embedding(c.vocab_size, c.d_model, options.tensor()));
  encoder = register_module("encoder", T5Stack(c, options));
}

at::Tensor T5EncoderImpl::position_bias(int64_t length) {
  auto first = encoder->block[0]->as<T5Block>()->attention->SelfAttention->relative_attention_bias;
  auto options = first->weight.options().dtype(at::kLong);
  at::Tensor query = at::arange(length, options).unsqueeze(1);
  at::Tensor key = at::arange(length, options).unsqueeze(0);
  at::Tensor buckets = t5_relative_position_bucket(key - query, config.num_buckets, config.max_distance);
  return first(buckets).permute({2, 0, 1}).unsqueeze(0);  // [1, heads, Lq, Lk]
}

at::Tensor T5EncoderImpl::forward(const at::Tensor& ids, const at::Tensor& mask) {
  if (ids.dim() != 2 || ids.size(1) < 1 || at::isFloatingType(ids.scalar_type())) {
    fail("T5 takes integer token ids [B, L]; got ", ids.scalar_type(), " ", ids.sizes());
  }
  if (config.num_layers == 0) fail("this T5 encoder has no blocks");
  at::Tensor x = shared(ids);
  at::Tensor bias = position_bias(ids.size(1));
  if (mask.defined()) {
    if (mask.sizes() != ids.sizes())
      fail("T5 mask must have the shape of the ids ", ids.sizes(), "; got ", mask.sizes());
    // (1 - mask) * finfo(compute dtype).min, added in fp32 and then cast with the bias.
    double min = x.scalar_type() == at::kFloat      ? std::numeric_limits<float>::lowest()
                 : x.scalar_type() == at::kHalf     ? static_cast<double>(std::numeric_limits<c10::Half>::lowest())
                 : x.scalar_type() == at::kBFloat16 ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
                                                    : std::numeric_limits<double>::lowest();
    at::Tensor additive = (1.0 - mask.to(at::kFloat)) * min;
    bias = bias.to(at::kFloat) + additive.view({ids.size(0), 1, 1, ids.size(1)});
  }
  bias = bias.to(x.scalar_type());
  for (const auto& block : *encoder->block) x = block->as<T5Block>()->forward(x, bias);
  return encoder->final_layer_norm(x);
}

}  // namespace fluxtrain::models
