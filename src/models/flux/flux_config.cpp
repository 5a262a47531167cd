#include "models/flux/flux_config.h"

#include <optional>

#include "core/error.h"
#include "models/header_query.h"

namespace fluxtrain::models {
namespace {

// The tensors each config value is read from, as one layout names them (block tensors relative to
// their block: "<double_block>N.<name>").
struct ConfigKeys {
  const char* layout;       // for messages
  const char* img_in;       // [hidden, in_channels]
  const char* final_out;    // [out_channels, hidden]
  const char* txt_in;       // [hidden, context_in_dim]
  const char* vector_in;    // [hidden, vec_in_dim]
  const char* guidance_in;  // present: guidance embedding (dev)
  const char* double_block;
  const char* double_probe;       // block N exists when it has this tensor
  const char* double_query_norm;  // [head_dim]
  const char* double_mlp_in;      // [mlp_hidden, hidden]
  const char* double_qkv_bias;    // present: q, k, v have biases
  const char* single_block;
  const char* single_probe;
  const char* single_query_norm;          // [head_dim]
  const char* single_mlp_in;              // [q, k, v rows in front (see below) + mlp_hidden, hidden]
  int64_t single_mlp_in_attention_parts;  // hidden_size-row parts in front of the MLP input rows
};

// BFL model.py: single blocks fuse q, k, v and the MLP input into linear1.
constexpr ConfigKeys kBfl = {"BFL",
                             "img_in.weight",
                             "final_layer.linear.weight",
                             "txt_in.weight",
                             "vector_in.in_layer.weight",
                             "guidance_in.in_layer.weight",
                             "double_blocks.",
                             "img_attn.qkv.weight",
                             "img_attn.norm.query_norm.scale",
                             "img_mlp.0.weight",
                             "img_attn.qkv.bias",
                             "single_blocks.",
                             "linear1.weight",
                             "norm.query_norm.scale",
                             "linear1.weight",
                             3};

// diffusers FluxTransformer2DModel (the names of models::flux_diffusers_map): separate to_q/to_k/to_v
// and proj_mlp.
constexpr ConfigKeys kDiffusers = {"diffusers",
                                   "x_embedder.weight",
                                   "proj_out.weight",
                                   "context_embedder.weight",
                                   "time_text_embed.text_embedder.linear_1.weight",
                                   "time_text_embed.guidance_embedder.linear_1.weight",
                                   "transformer_blocks.",
                                   "attn.to_q.weight",
                                   "attn.norm_q.weight",
                                   "ff.net.0.proj.weight",
                                   "attn.to_q.bias",
                                   "single_transformer_blocks.",
                                   "attn.to_q.weight",
                                   "attn.norm_q.weight",
                                   "proj_mlp.weight",
                                   0};

const ConfigKeys& keys_of(FluxLayout layout) {
  return layout == FluxLayout::diffusers ? kDiffusers : kBfl;
}

// Reads the config's values; strict: a missing tensor is HeaderQuery's Error, lenient: it reads -1.
class ShapeReader {
 public:
  ShapeReader(const HeaderQuery& query, bool strict) : query_(query), strict_(strict) {}
  int64_t dim(const std::string& name, size_t axis) const {
    if (strict_) return query_.need(name).shape.at(axis);
    const safetensors::TensorInfo* t = query_.find(name);
    return t != nullptr && t->shape.size() > axis ? t->shape[axis] : -1;
  }
  bool has(const std::string& name) const { return query_.has(name); }
  int64_t count(const std::string& head, const std::string& tail) const { return query_.count(head, tail); }

 private:
  const HeaderQuery& query_;
  bool strict_;
};

std::string list_text(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

// Flux.1's head width (3072 / 24 heads) and the RoPE axes BFL's FluxParams give it: the only head width
// whose axes are known without a config stating them.
constexpr int64_t kFlux1HeadDim = 128;
const std::vector<int64_t> kFlux1Axes = {16, 56, 56};

// The axes a diffusers transformer/config.json states ("axes_dims_rope"), checked against the head
// width the weights have; empty when the config states none (or describes another model).
std::vector<int64_t> stated_axes(const StatedConfig& stated, int64_t head_dim, const std::string& head_dim_source,
                                 const std::string& file) {
  if (stated.empty() || stated.class_name() != "FluxTransformer2DModel") return {};
  const std::optional<int64_t> stated_head_dim = stated.integer("attention_head_dim");
  if (stated_head_dim && *stated_head_dim != head_dim) {
    fail(stated.source(), ": \"attention_head_dim\" is ", *stated_head_dim, " but the weights of ", file,
         " have head width ", head_dim, " (from '", head_dim_source,
         "'): this config.json does not describe these weights; put the model's own config.json next to them");
  }
  std::vector<int64_t> axes = stated.integers("axes_dims_rope").value_or(std::vector<int64_t>{});
  if (axes.empty()) return {};
  bool even = true;
  int64_t sum = 0;
  for (int64_t a : axes) {
    even = even && a > 0 && a % 2 == 0;
    sum += a;
  }
  if (!even || sum != head_dim) {
    fail(stated.source(), ": \"axes_dims_rope\" ", list_text(axes),
         " must be positive even widths that sum to the head width ", head_dim, " (from '", head_dim_source, "' in ",
         file, "); Flux.1's are ", list_text(kFlux1Axes), " for head width ", kFlux1HeadDim);
  }
  return axes;
}

FluxConfig read(const FluxConfig::Find& find, const std::string& file, FluxLayout layout, bool strict,
                const StatedConfig& stated) {
  const ConfigKeys& k = keys_of(layout);
  HeaderQuery query(find, file, cat("Flux transformer in ", k.layout, " layout"));
  ShapeReader r(query, strict);
  const std::string first_double = cat(k.double_block, 0, "."), first_single = cat(k.single_block, 0, ".");
  FluxConfig c;
  c.hidden_size = r.dim(k.img_in, 0);
  c.in_channels = r.dim(k.img_in, 1);
  c.out_channels = r.dim(k.final_out, 0);
  c.context_in_dim = r.dim(k.txt_in, 1);
  c.vec_in_dim = r.dim(k.vector_in, 1);
  c.guidance_embed = r.has(k.guidance_in);
  c.depth = r.count(k.double_block, cat(".", k.double_probe));
  c.depth_single_blocks = r.count(k.single_block, cat(".", k.single_probe));
  std::string head_dim_source;
  int64_t head_dim = -1;
  if (c.depth > 0) {
    head_dim_source = first_double + k.double_query_norm;
    head_dim = r.dim(head_dim_source, 0);
    c.mlp_hidden = r.dim(first_double + k.double_mlp_in, 0);
    c.qkv_bias = r.has(first_double + k.double_qkv_bias);
  } else if (c.depth_single_blocks > 0) {
    head_dim_source = first_single + k.single_query_norm;
    head_dim = r.dim(head_dim_source, 0);
    const int64_t rows = r.dim(first_single + k.single_mlp_in, 0);
    c.mlp_hidden = rows < 0 ? -1 : rows - k.single_mlp_in_attention_parts * c.hidden_size;
  } else if (strict) {
    fail(file, ": has neither double nor single blocks (no '", first_double, k.double_probe, "' or '", first_single,
         k.single_probe, "'): not a Flux transformer");
  } else {
    c.mlp_hidden = -1;
  }
  if (head_dim <= 0 || c.hidden_size <= 0 || c.hidden_size % head_dim != 0) {
    if (strict) {
      fail(file, ": head width ", head_dim, " (from '", head_dim_source, "') does not divide hidden size ",
           c.hidden_size);
    }
    c.num_heads = head_dim > 0 && c.hidden_size > 0 ? c.hidden_size / head_dim : -1;
    c.axes_dim = {-1, -1, -1};
    return c;
  }
  c.num_heads = c.hidden_size / head_dim;
  if (!strict) {
    c.axes_dim = head_dim == kFlux1HeadDim ? kFlux1Axes : std::vector<int64_t>{-1, -1, -1};
    return c;
  }
  c.axes_dim = stated_axes(stated, head_dim, head_dim_source, file);
  if (c.axes_dim.empty()) {
    if (head_dim != kFlux1HeadDim) {
      fail(file, ": head width ", head_dim, " (from '", head_dim_source, "', hidden ", c.hidden_size, " = ",
           c.num_heads, " heads x ", head_dim, ") has no known RoPE axes: no tensor stores them, and Flux.1's ",
           list_text(kFlux1Axes), " are for head width ", kFlux1HeadDim, ". Fix: use a transformer of head width ",
           kFlux1HeadDim, ", or load it as a diffusers folder whose transformer/config.json states \"axes_dims_rope\"");
    }
    c.axes_dim = kFlux1Axes;
  }
  c.validate(file);
  return c;
}

}  // namespace

FluxConfig FluxConfig::dev() {
  return FluxConfig{};
}

FluxConfig FluxConfig::schnell() {
  FluxConfig c;
  c.guidance_embed = false;
  return c;
}

FluxConfig FluxConfig::detect(const Find& find, const std::string& file, FluxLayout layout,
                              const StatedConfig& stated) {
  return read(find, file, layout, /*strict=*/true, stated);
}

FluxConfig FluxConfig::detect_partial(const Find& find, FluxLayout layout) {
  return read(find, "", layout, /*strict=*/false, StatedConfig{});
}

void FluxConfig::validate(const std::string& file) const {
  if (num_heads <= 0 || hidden_size % num_heads != 0)
    fail(file, ": hidden size ", hidden_size, " is not a multiple of ", num_heads, " heads");
  int64_t sum = 0;
  for (int64_t a : axes_dim) {
    if (a <= 0 || a % 2 != 0)
      fail(file, ": RoPE axes ", list_text(axes_dim), " must be positive and even (head width ", head_dim(), ")");
    sum += a;
  }
  if (sum != head_dim())
    fail(file, ": RoPE axes ", list_text(axes_dim), " sum to ", sum, " but the head width is ", head_dim());
}

std::vector<FluxTensorShape> flux_parameter_shapes(const FluxConfig& c) {
  std::vector<FluxTensorShape> out;
  const int64_t h = c.hidden_size, m = c.mlp_hidden, d = c.head_dim();
  int64_t block = -1;
  std::string prefix;
  auto linear = [&](const std::string& name, int64_t in, int64_t outs, bool bias, bool in_block) {
    out.push_back({prefix + name + ".weight", {outs, in}, in_block, block});
    if (bias) out.push_back({prefix + name + ".bias", {outs}, false, block});
  };
  auto vector = [&](const std::string& name, int64_t n) { out.push_back({prefix + name, {n}, false, block}); };
  linear("img_in", c.in_channels, h, true, false);
  linear("time_in.in_layer", 256, h, true, false);
  linear("time_in.out_layer", h, h, true, false);
  linear("vector_in.in_layer", c.vec_in_dim, h, true, false);
  linear("vector_in.out_layer", h, h, true, false);
  if (c.guidance_embed) {
    linear("guidance_in.in_layer", 256, h, true, false);
    linear("guidance_in.out_layer", h, h, true, false);
  }
  linear("txt_in", c.context_in_dim, h, true, false);
  for (int64_t i = 0; i < c.depth; ++i) {
    block = i;
    prefix = "double_blocks." + std::to_string(i) + ".";
    for (const std::string stream : {"img", "txt"}) {
      linear(stream + "_mod.lin", h, 6 * h, true, true);
      linear(stream + "_attn.qkv", h, 3 * h, c.qkv_bias, true);
      vector(stream + "_attn.norm.query_norm.scale", d);
      vector(stream + "_attn.norm.key_norm.scale", d);
      linear(stream + "_attn.proj", h, h, true, true);
      linear(stream + "_mlp.0", h, m, true, true);
      linear(stream + "_mlp.2", m, h, true, true);
    }
  }
  for (int64_t i = 0; i < c.depth_single_blocks; ++i) {
    block = c.depth + i;
    prefix = "single_blocks." + std::to_string(i) + ".";
    linear("linear1", h, 3 * h + m, true, true);
    linear("linear2", h + m, h, true, true);
    vector("norm.query_norm.scale", d);
    vector("norm.key_norm.scale", d);
    linear("modulation.lin", h, 3 * h, true, true);
  }
  block = -1;
  prefix = "final_layer.";
  linear("linear", h, c.out_channels, true, false);
  linear("adaLN_modulation.1", h, 2 * h, true, false);
  return out;
}

}  // namespace fluxtrain::models
