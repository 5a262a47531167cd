#include "models/clip/clip_text.h"

#include <ATen/ATen.h>

#include <optional>

#include "core/error.h"
#include "models/header_query.h"

namespace fluxtrain::models {

namespace {

// Every released CLIP text tower has heads of width 64 (L 768 / 12, H 1024 / 16, bigG 1280 / 20).
constexpr int64_t kClipHeadDim = 64;
constexpr const char* kTokenEmbedding = "text_model.embeddings.token_embedding.weight";

// The text tower's part of a transformers config.json: CLIPTextModel's own ("clip_text_model"), or
// CLIPModel's "text_config"; empty for a config of another model.
StatedConfig text_tower(const StatedConfig& stated) {
  if (stated.model_type() == "clip_text_model") return stated;
  if (stated.model_type() == "clip") return stated.section("text_config");
  return {};
}

// The head count, which no tensor's shape holds: as the config states it, else hidden / 64.
int64_t head_count(int64_t hidden, const StatedConfig& stated, const std::string& file) {
  const StatedConfig text = text_tower(stated);
  if (const std::optional<int64_t> heads = text.integer("num_attention_heads")) {
    const std::optional<int64_t> stated_hidden = text.integer("hidden_size");
    if (stated_hidden && *stated_hidden != hidden) {
      fail(text.source(), ": \"", text.key_name("hidden_size"), "\" is ", *stated_hidden, " but the weights of ", file,
           " are ", hidden, " wide (from '", kTokenEmbedding,
           "'): this config.json does not describe these weights; put the model's own config.json next to them");
    }
    if (*heads <= 0 || hidden % *heads != 0) {
      fail(text.source(), ": \"", text.key_name("num_attention_heads"), "\" is ", *heads,
           ", which does not divide the width ", hidden, " of ", file, " (from '", kTokenEmbedding,
           "'): expected a head count whose heads are equally wide (CLIP-L: 12 heads of 64); fix the config.json");
    }
    return *heads;
  }
  if (hidden <= 0 || hidden % kClipHeadDim != 0) {
    fail(file, ": CLIP text encoder width ", hidden, " (from '", kTokenEmbedding, "') is not a multiple of ",
         kClipHeadDim, ": no tensor stores the head count, and every released CLIP text tower has heads of width ",
         kClipHeadDim, " (CLIP-L: 768 = 12 x ", kClipHeadDim, "). Fix: use a CLIP text encoder whose width is a ",
         "multiple of ", kClipHeadDim, ", or put its transformers config.json (stating \"num_attention_heads\") ",
         "next to the file");
  }
  return hidden / kClipHeadDim;
}

}  // namespace

ClipConfig ClipConfig::detect(const std::function<const safetensors::TensorInfo*(const std::string&)>& find,
                              const std::string& file, const StatedConfig& stated) {
  HeaderQuery q(find, file, "CLIP text encoder");
  ClipConfig c;
  const auto& tokens = q.need(kTokenEmbedding);
  c.vocab_size = tokens.shape.at(0);
  c.hidden_size = tokens.shape.at(1);
  c.max_positions = q.need("text_model.embeddings.position_embedding.weight").shape.at(0);
  c.num_layers = 0;
  while (find("text_model.encoder.layers." + std::to_string(c.num_layers) + ".self_attn.q_proj.weight") != nullptr) {
    ++c.num_layers;
  }
  if (c.num_layers == 0) fail(file, ": has no text_model.encoder.layers: not a CLIP text encoder");
  c.intermediate_size = q.need("text_model.encoder.layers.0.mlp.fc1.weight").shape.at(0);
  c.num_heads = head_count(c.hidden_size, stated, file);
  c.validate(file);
  return c;
}

void ClipConfig::validate(const std::string& file) const {
  if (num_heads <= 0 || hidden_size % num_heads != 0) {
    fail(file, ": CLIP width ", hidden_size, " is not a multiple of ", num_heads, " heads");
  }
}

ClipAttentionImpl::ClipAttentionImpl(int64_t hidden, int64_t heads_, const at::TensorOptions& options) : heads(heads_) {
  k_proj = register_module("k_proj", Linear(hidden, hidden, true, options));
  v_proj = register_module("v_proj", Linear(hidden, hidden, true, options));
  q_proj = register_module("q_proj", Linear(hidden, hidden, true, options));
  out_proj = register_module("out_proj", Linear(hidden, hidden, true, options));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x) {
  int64_t b = x.size(0), l = x.size(1), d = x.size(2) / heads;
  auto split = [&](const at::Tensor& t) { return t.view({b, l, heads, d}).transpose(1, 2); };
  // Scale 1/sqrt(d) (SDPA's default), causal mask: key > query is never attended.
  at::Tensor a = at::scaled_dot_product_attention(split(q_proj(x)), split(k_proj(x)), split(v_proj(x)), {}, 0.0,
                                                  /*is_causal=*/true);
  return out_proj(a.transpose(1, 2).reshape({b, l, heads * d}));
}

ClipMlpImpl::ClipMlpImpl(int64_t hidden, int64_t intermediate, const at::TensorOptions& options) {
  fc1 = register_module("fc1", Linear(hidden, intermediate, true, options));
  fc2 = register_module("fc2", Linear(intermediate, hidden, true, options));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  at::Tensor h = fc1(x);
  return fc2(h * at::sigmoid(1.702 * h));  // quick_gelu (HF/BFL; kohya's config resolves to erf-GELU, §8.1)
}

ClipLayerImpl::ClipLayerImpl(const ClipConfig& c, const at::TensorOptions& options) {
  self_attn = register_module("self_attn", ClipAttention(c.hidden_size, c.num_heads, options));
  layer_norm1 = register_module("layer_norm1", LayerNorm(c.hidden_size, c.layer_norm_eps, options));
  mlp = register_module("mlp", ClipMlp(c.hidden_size, c.intermediate_size, options));
  layer_norm2 = register_module("layer_norm2", LayerNorm(c.hidden_size, c.layer_norm_eps, options));
}

at::Tensor ClipLayerImpl::forward(const at::Tensor& x) {
  at::Tensor h = x + self_attn(layer_norm1(x));
  return h + mlp(layer_norm2(h));
}

ClipTransformerImpl::ClipTransformerImpl(const ClipConfig& c, const at::TensorOptions& options) {
  auto embeddings = std::make_shared<torch::nn::Module>();
  token_embedding = Embedding(c.vocab_size, c.hidden_size, options);
  position_embedding = Embedding(c.max_positions, c.hidden_size, options);
  embeddings->register_module("token_embedding", token_embedding);
  embeddings->register_module("position_embedding", position_embedding);
  register_module("embeddings", embeddings);
  auto encoder = std::make_shared<torch::nn::Module>();
  layers = torch::nn::ModuleList();
  for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(ClipLayer(c, options));
  encoder->register_module("layers", layers);
  register_module("encoder", encoder);
  final_layer_norm = register_module("final_layer_norm", LayerNorm(c.hidden_size, c.layer_norm_eps, options));
}

ClipTextModelImpl::ClipTextModelImpl(const ClipConfig& c, const ModelOptions& options) : config(c) {
  text_model = register_module("text_model", ClipTransformer(c, options.tensor()));
}

ClipOutput ClipTextModelImpl::forward(const at::Tensor& ids) {
  if (ids.dim() != 2 || ids.size(1) < 1 || ids.size(1) > config.max_positions ||
      at::isFloatingType(ids.scalar_type())) {
    fail("CLIP takes integer token ids [B, L] with 1 <= L <= ", config.max_positions, "; got ", ids.scalar_type(), " ",
         ids.sizes());
  }
  auto& m = *text_model;
  at::Tensor positions = at::arange(ids.size(1), ids.options().dtype(at::kLong));
  at::Tensor x = m.token_embedding(ids) + m.position_embedding(positions).unsqueeze(0);
  for (const auto& layer : *m.layers) x = layer->as<ClipLayer>()->forward(x);
  ClipOutput out;
  out.last_hidden_state = m.final_layer_norm(x);
  // argmax returns the first maximum: the first EOS (49407, the largest id; padding is EOS too).
  at::Tensor eos = ids.argmax(-1);
  out.pooled = out.last_hidden_state.index({at::arange(ids.size(0), eos.options()), eos});
  return out;
}

}  // namespace fluxtrain::models
