#include "train/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "lora/selection.h"
#include "optim/args.h"

namespace fluxtrain::train {
namespace {

constexpr int64_t kF32 = 4;

// Activation widths per token, in hidden widths (H) and MLP widths (M), of the compute dtype: what a
// block's autograd graph keeps (docs/performance.md "Memory planner" lists the tensors), fitted to the live
// peaks the code's own steps measure (tests/e2e/test_memory_plan.py, fp32 on the CPU; two shapes, with and
// without checkpointing):
//   double block  15.5 H + 2 M   (two streams' LayerNorms, modulation, qkv, q/k norms, joined q/k/v, RoPE,
//                                 attention and its halves, projection, residual, MLP, output)
//   single block  11.4 H + 2 M   (LayerNorm, modulation, linear1, q/k norms, RoPE, attention, the joined
//                                 attention and GELU output, linear2, output)
//   backward      2.5 H + M      the gradients in flight while one block is differentiated
struct Widths {
  double h = 0, m = 0;
};
constexpr Widths kDoubleGraph{15.5, 2}, kSingleGraph{11.4, 2};
constexpr Widths kBackwardExtra{2.5, 1};

int64_t per_token(const Widths& w, const models::FluxConfig& c, int64_t bytes) {
  return static_cast<int64_t>((w.h * static_cast<double>(c.hidden_size) + w.m * static_cast<double>(c.mlp_hidden)) *
                              static_cast<double>(bytes));
}

bool is_checkpointed(const MemoryPlanInputs& in, int64_t block, int64_t blocks) {
  const CheckpointSettings& ck = in.checkpointing;
  const int64_t interval = std::max<int64_t>(ck.interval, 1);
  return ck.enabled && block != blocks - 1 && block % interval == 0;
}

// An optimizer's state bytes for the trained tensors (what its first step allocates).
int64_t optimizer_state_bytes(const optim::OptimizerSettings& settings,
                              const std::vector<std::pair<std::vector<int64_t>, bool>>& tensors) {
  std::map<std::string, std::string> args;
  for (const auto& [key, value] : optim::split_optimizer_args(settings.args)) args[key] = value;
  auto arg = [&](const std::string& key, const std::string& fallback) {
    auto it = args.find(key);
    return it == args.end() ? fallback : it->second;
  };
  const std::string& type = settings.type;
  int64_t total = 0;
  for (const auto& [shape, zero_initialised] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (type == "Prodigy") {
      const int64_t slice = std::max<int64_t>(1, std::stoll(arg("slice_p", "1")));
      const std::string betas = arg("betas", "0.9,0.999");
      const bool first_moment = std::stod(betas.substr(0, betas.find(','))) > 0;
      const int64_t sliced = (n + slice - 1) / slice;
      total += kF32 * (n * (first_moment ? 2 : 1) + sliced + (zero_initialised ? 1 : sliced));
    } else if (type == "AdamW") {
      const std::string ams = arg("amsgrad", "False");
      total += kF32 * n * (ams == "True" || ams == "true" ? 3 : 2);
    } else if (type == "AdamW8bit") {
      const int64_t min_size = std::stoll(arg("min_8bit_size", "4096"));
      total += n >= min_size ? 2 * (n + kF32 * ((n + 255) / 256)) : 2 * kF32 * n;
    } else if (type == "Adafactor") {
      const bool first_moment = args.count("beta1") && arg("beta1", "None") != "None";
      const int64_t second = shape.size() >= 2 ? shape[shape.size() - 1] + shape[shape.size() - 2] : n;
      total += kF32 * ((first_moment ? n : 0) + second);
    } else if (type == "Lion") {
      total += kF32 * n;
    } else if (type == "SGD") {
      total += std::stod(arg("momentum", "0")) > 0 ? kF32 * n : 0;
    } else {
      fail("the memory planner does not know the optimizer '", type, "'");
    }
  }
  return total;
}

// What a trained text encoder's graph keeps per token and layer until the backward (the models' forward in
// models/clip/clip_text.cpp and models/t5/t5_encoder.cpp), in bytes at `b` per number, with a LoRA of `rank`
// on each adapted Linear:
//   CLIP  the LayerNorms' inputs and outputs (4 widths), q/k/v, the attention's output and out_proj's input
//         (5), fc1's output, its sigmoid and their product (3 MLP widths), the log-sum-exp per head
//   T5    each T5LayerNorm's fp32 input (2 x 4 bytes a width) and output (2), q/k/v, the attention's output
//         and o's input (5 inner widths), wi_0's output, its GELU, wi_1's output and their product (4 MLP
//         widths), the log-sum-exp per head
//   and each adapted Linear's LoRA down output (rank numbers).
int64_t encoder_token_bytes(const TextEncoderShape& e, int64_t b, int64_t rank) {
  const int64_t inner = e.heads * e.head_width;
  const int64_t lora = static_cast<int64_t>(e.adapted_linears().size()) * rank * b;
  if (e.kind == TextEncoderShape::Kind::clip) return b * (9 * e.width + 3 * e.mlp) + e.heads * kF32 + lora;
  return 2 * kF32 * e.width + b * (2 * e.width + 5 * inner + 4 * e.mlp) + e.heads * kF32 + lora;
}

}  // namespace

int64_t TextEncoderShape::parameters() const {
  const int64_t d = width, f = mlp, inner = heads * head_width;
  if (kind == Kind::clip)  // embeddings; q/k/v/out, two LayerNorms, fc1, fc2 with biases; the final LayerNorm
    return vocab * d + tokens * d + layers * (4 * (d * d + d) + 4 * d + 2 * d * f + f + d) + 2 * d;
  // the shared embedding; q/k/v/o, wi_0/wi_1/wo and two norms (no biases); block 0's relative bias (32 buckets)
  return vocab * d + layers * (4 * d * inner + 3 * d * f + 2 * d) + 32 * heads + d;
}

std::vector<std::pair<int64_t, int64_t>> TextEncoderShape::adapted_linears() const {
  const int64_t d = width, f = mlp, inner = heads * head_width;
  if (kind == Kind::clip) return {{d, d}, {d, d}, {d, d}, {d, d}, {d, f}, {f, d}};
  return {{d, inner}, {d, inner}, {d, inner}, {inner, d}, {d, f}, {d, f}, {f, d}};
}

std::string gigabytes(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f GB", static_cast<double>(bytes) / 1e9);
  return text;
}

int64_t max_blocks_to_swap(const models::FluxConfig& config) {
  return std::max<int64_t>(0, config.depth + config.depth_single_blocks - 1);
}

int64_t held_bytes(const MemoryPlanInputs& in, int64_t block, models::KeepProducts keep) {
  const models::FluxConfig& c = in.model;
  const int64_t li = (in.image_width / 16) * (in.image_height / 16), l = li + in.text_tokens;
  const int64_t h = c.hidden_size, m = c.mlp_hidden, b = in.compute_bytes;
  const bool is_double = block < c.depth;
  int64_t bytes = in.checkpointing.offload_inputs ? 0 : l * h * b;  // the block's input
  if (in.checkpointing.keep_attention) bytes += l * h * b + l * c.num_heads * kF32;  // output and log-sum-exp
  if (keep == models::KeepProducts::outputs) bytes += l * h * b * (is_double ? 2 : 1);
  if (keep == models::KeepProducts::all) bytes += l * (is_double ? 5 * h + m : 4 * h + m) * b;
  return bytes;
}

// The tokens an adapted Linear of a layer type sees per image: its stream's in a double block, both streams'
// in a single block, one for a modulation (it takes the pooled vector).
int64_t tokens_of(const std::string& type, int64_t li, int64_t lt) {
  if (type.ends_with("_mod")) return 1;
  if (type.starts_with("img_")) return li;
  if (type.starts_with("txt_")) return lt;
  return li + lt;
}

MemoryPlan plan_memory(const MemoryPlanInputs& in) {
  const models::FluxConfig& c = in.model;
  MemoryPlan plan;
  const int64_t blocks = c.depth + c.depth_single_blocks;
  const int64_t b = in.compute_bytes;
  const int64_t li = (in.image_width / 16) * (in.image_height / 16), lt = in.text_tokens, l = li + lt;
  plan.image_tokens = li;
  plan.text_tokens = lt;
  if (in.blocks_to_swap < 0 || in.blocks_to_swap > max_blocks_to_swap(c))
    fail("blocks_to_swap ", in.blocks_to_swap, " is outside 0..", max_blocks_to_swap(c), " for this model");
  const int64_t first_swapped = blocks - in.blocks_to_swap;

  // Weights as stored, and the largest block Linear (upcast once per call when stored in fp8).
  int64_t swapped_block_bytes = 0, largest_upcast = 0;
  std::vector<int64_t> block_bytes(static_cast<size_t>(blocks), 0);
  for (const auto& t : models::flux_parameter_shapes(c)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    const bool fp8 = t.block_linear && in.fp8_base && !in.full_finetune;
    const int64_t bytes = n * (in.full_finetune ? kF32 : fp8 ? 1 : b);
    if (fp8) largest_upcast = std::max(largest_upcast, n * b);
    if (in.full_finetune) {
      continue;  // every weight is trained: counted with the trained tensors below
    } else if (t.block >= first_swapped && t.block_linear) {
      plan.swapped += bytes;
      swapped_block_bytes = std::max(swapped_block_bytes, block_bytes[static_cast<size_t>(t.block)] += bytes);
    } else {
      plan.weights += bytes;
    }
  }
  // Two swapped blocks are on the device at a time: the one running and the one arriving.
  const int64_t in_flight = in.blocks_to_swap > 0 ? std::min<int64_t>(2, in.blocks_to_swap) * swapped_block_bytes : 0;
  plan.weights += in_flight;
  if (!in.full_finetune) {
    plan.terms.push_back({"frozen transformer weights" + std::string(in.fp8_base ? " (fp8 blocks)" : ""),
                          plan.weights - in_flight, false});
  }
  if (in.blocks_to_swap > 0) {
    plan.terms.push_back({"block swap: " + std::to_string(in.blocks_to_swap) + " blocks in host memory (" +
                              gigabytes(plan.swapped) + "), two on the device at a time",
                          in_flight, false});
  }

  // A text-encoder LoRA keeps both encoders loaded (in the compute dtype).
  int64_t encoder_weights = 0, encoder_graphs = 0;
  std::string encoder_names, trained_names;
  for (const TextEncoderShape& e : in.text_encoders) {
    encoder_weights += e.parameters() * b;
    encoder_names += std::string(encoder_names.empty() ? "" : " and ") + e.name();
    if (!e.trained) continue;
    trained_names += std::string(trained_names.empty() ? "" : " and ") + e.name();
    encoder_graphs += e.tokens * e.layers * encoder_token_bytes(e, b, in.lora.rank) +
                      (e.kind == TextEncoderShape::Kind::t5 ? e.heads * e.tokens * e.tokens * b : 0);  // T5's bias
  }
  if (encoder_weights > 0) {
    plan.weights += encoder_weights;
    plan.terms.push_back({"text encoders kept loaded (" + encoder_names + ")", encoder_weights, false});
  }

  // Trained tensors: fp32 parameters, fp32 gradients, the optimizer's state.
  std::vector<int64_t> adapter_graph(static_cast<size_t>(blocks), 0);      // per step, per block
  std::vector<int64_t> adapter_per_token(static_cast<size_t>(blocks), 0);  // per image, per block
  int64_t adapter_temporary = 0;
  int64_t dora_backward = 0;  // per image: the gradient of one module's output through the magnitude
  std::vector<std::pair<std::vector<int64_t>, bool>> trained;
  if (in.full_finetune) {
    for (const auto& t : models::flux_parameter_shapes(c)) trained.emplace_back(t.shape, false);
  } else {
    for (const auto& target : lora::adapter_targets(c, in.lora)) {
      const auto block = static_cast<size_t>(target.block);
      const int64_t tokens = tokens_of(target.type, li, lt);
      for (int64_t out : target.outs) {
        // LoRA's down (random) and up (zeros), or a LyCORIS type's factors.
        for (const auto& f : lora::factor_shapes(in.lora, out, target.in_features, target.rank))
          trained.emplace_back(std::vector<int64_t>{f.rows, f.cols}, f.zero);
        if (in.lora.dora_wd) trained.emplace_back(std::vector<int64_t>{out}, false);  // DoRA's magnitude
        // What a LyCORIS module adds to its block's graph (lora/lycoris.cpp's forward): LoKr's ΔW in the compute
        // dtype (the input of the product with x), LoHa's too and the two fp32 products its Hadamard product
        // keeps; DoRA keeps two outputs per token (x Wᵀ and the LoRA's, each multiplied by the trained
        // magnitude's factor). Each also forms fp32 temporaries of the weight's size once per forward (ΔW;
        // DoRA's ‖W + ΔW‖ from an fp32 copy of W).
        const int64_t weight = out * target.in_features;
        if (in.lora.type == lora::NetworkType::lokr) adapter_graph[block] += weight * b;
        if (in.lora.type == lora::NetworkType::loha) adapter_graph[block] += weight * (b + 2 * kF32);
        if (in.lora.dora_wd) adapter_per_token[block] += 2 * tokens * out * b;
        if (in.lora.dora_wd) dora_backward = std::max(dora_backward, tokens * out * b);
        // The temporaries: LoKr's ΔW before the scale and its gradient; LoHa's product and the gradients of its
        // two factors' products; DoRA's fp32 W, W + ΔW and the norm's input.
        if (in.lora.lycoris())
          adapter_temporary = std::max(adapter_temporary,
                                       weight * kF32 * (in.lora.type == lora::NetworkType::lokr ? 2 : 3));
      }
    }
  }
  // The text encoders' LoRA: down (random) and up (zeros) per adapted Linear of every layer.
  for (const TextEncoderShape& e : in.text_encoders) {
    if (!e.trained) continue;
    for (int64_t layer = 0; layer < e.layers; ++layer) {
      for (const auto& [in_features, out_features] : e.adapted_linears()) {
        trained.emplace_back(std::vector<int64_t>{in.lora.rank, in_features}, false);
        trained.emplace_back(std::vector<int64_t>{out_features, in.lora.rank}, true);
      }
    }
  }
  int64_t largest_trained = 0;
  for (const auto& [shape, zero] : trained) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    plan.trainable_params += n;
    largest_trained = std::max(largest_trained, n);
  }
  const int64_t shards = std::max<int64_t>(1, in.optimizer_shards);
  const int64_t state = (optimizer_state_bytes(in.optimizer, trained) + shards - 1) / shards;
  plan.trainable = kF32 * plan.trainable_params + state;
  plan.terms.push_back({in.full_finetune ? "trained weights (fp32)" : "LoRA parameters (fp32)",
                        kF32 * plan.trainable_params, false});
  plan.terms.push_back({in.optimizer.type + (shards > 1 ? cat(" state (this rank's 1/", shards, ", zero_stage 1)")
                                                        : std::string(" state")),
                        state, false});
  if (in.ema_on_device) {
    plan.trainable += kF32 * plan.trainable_params;
    plan.terms.push_back({"EMA of the trained tensors (fp32)", kF32 * plan.trainable_params, false});
  }
  // With several ranks the all-reduce's buckets in flight hold a flat copy of some gradients: at most four
  // buckets of 25 MiB (src/dist/process_group.cpp).
  const int64_t buckets = in.ranks > 1 ? std::min<int64_t>(kF32 * plan.trainable_params, 4 * (int64_t{25} << 20)) : 0;
  // The optimizer step works tensor by tensor: two temporaries of the largest one (AdamW's denominator and
  // update).
  plan.fixed_workspace = kF32 * plan.trainable_params + buckets + std::max(largest_upcast, 2 * kF32 * largest_trained);
  plan.terms.push_back({in.ranks > 1 ? "gradients, their all-reduce buckets and an upcast weight (when the activations "
                                       "are gone)"
                                     : "gradients and an upcast weight (when the activations are gone)",
                        plan.fixed_workspace, false});

  // Per image: what checkpointed blocks hold until their backward.
  int64_t checkpointed = 0, graph = 0, graph_adapters = 0;
  const auto keep_of = [&](int64_t block) {
    if (block < static_cast<int64_t>(in.checkpointing.keep_per_block.size()))
      return in.checkpointing.keep_per_block[static_cast<size_t>(block)];
    return in.checkpointing.keep_products;
  };
  for (int64_t i = 0; i < blocks; ++i) {
    if (is_checkpointed(in, i, blocks)) {
      ++checkpointed;
      plan.held_per_image += held_bytes(in, i, keep_of(i));
    } else {
      graph += l * per_token(i < c.depth ? kDoubleGraph : kSingleGraph, c, b) + l * c.num_heads * kF32 +
               adapter_per_token[static_cast<size_t>(i)];
      graph_adapters += adapter_graph[static_cast<size_t>(i)];
    }
  }
  plan.terms.push_back({std::to_string(checkpointed) + " checkpointed blocks: inputs" +
                            (in.checkpointing.keep_attention ? ", attention" : "") + ", kept products",
                        plan.held_per_image, true});
  plan.terms.push_back({std::to_string(blocks - checkpointed) + " blocks with their whole graph", graph, true});
  // With checkpointing the graphs of the blocks that are not checkpointed are gone by the time the first
  // recomputation runs (the last block's backward comes first): the peak holds the larger of that graph
  // and one recomputed block's (the second-to-last, whose kind is the planner's).
  int64_t recompute = 0;
  if (checkpointed > 0) {
    int64_t last_checkpointed = blocks - 2;
    while (last_checkpointed > 0 && !is_checkpointed(in, last_checkpointed, blocks)) --last_checkpointed;
    const auto recomputed = static_cast<size_t>(last_checkpointed);
    const int64_t one = l * per_token(last_checkpointed < c.depth ? kDoubleGraph : kSingleGraph, c, b) +
                        adapter_per_token[recomputed];
    if (blocks - checkpointed == 1) {  // only the last block keeps its graph
      recompute = std::max<int64_t>(0, one - graph);
    } else {
      recompute = one;
    }
    graph_adapters = std::max(graph_adapters, adapter_graph[recomputed]);
  }
  // LyCORIS: the ΔWs the graphs keep (per step, not per image) and the fp32 temporaries of one module.
  plan.adapter_workspace = graph_adapters + adapter_temporary;
  if (plan.adapter_workspace > 0)
    plan.terms.push_back({in.lora.dora_wd ? "DoRA: the norm's fp32 temporaries of one weight"
                                          : "LyCORIS: the weight changes the graphs keep, fp32 temporaries of one",
                          plan.adapter_workspace, false});
  const int64_t backward = l * per_token(kBackwardExtra, c, b) + dora_backward;
  plan.terms.push_back({"recomputation and backward of one block", recompute + backward, true});
  // The model's inputs and tables: packed latents, T5 states, RoPE rotations (fp32), the embedded
  // streams, the prediction and loss in fp32.
  const int64_t inputs = li * c.in_channels * (b + 3 * kF32) + lt * c.context_in_dim * b + l * c.head_dim() * 2 * kF32 +
                         l * c.hidden_size * b;
  int64_t host = 0;
  if (in.host_is_device) {
    // fp32 latents, noise and target, the T5 states and CLIP pooled as read, per waiting batch too.
    const int64_t batch_bytes = kF32 * (li * c.in_channels / 4 * 3 + lt * c.context_in_dim + c.vec_in_dim);
    host = batch_bytes * (1 + std::max<int64_t>(0, in.prefetch_batches));
  }
  // A trained text encoder's graph is made before the transformer's and differentiated after it.
  if (encoder_graphs > 0)
    plan.terms.push_back({"the graphs of the trained text encoders (" + trained_names + ")", encoder_graphs, true});
  plan.step_per_image = graph + recompute + backward + inputs + host + encoder_graphs;
  plan.tail_per_image = recompute + backward + inputs + host + encoder_graphs;
  plan.terms.push_back({"inputs, RoPE tables, prediction and loss", inputs, true});
  if (host > 0) plan.terms.push_back({"batches in host memory (CPU training)", host, true});
  return plan;
}

int64_t MemoryPlan::largest_batch(int64_t budget) const {
  if (per_image() <= 0 || peak(1) > budget) return 0;
  int64_t batch = (budget - fixed() - adapter_workspace) / per_image();
  if (tail_per_image > 0) batch = std::min(batch, (budget - fixed() - fixed_workspace) / tail_per_image);
  return std::max<int64_t>(1, batch);
}

std::vector<models::KeepProducts> choose_kept_products(const MemoryPlanInputs& inputs, int64_t batch, int64_t budget) {
  const int64_t blocks = inputs.model.depth + inputs.model.depth_single_blocks;
  MemoryPlanInputs probe = inputs;
  probe.checkpointing.keep_per_block.assign(static_cast<size_t>(blocks), models::KeepProducts::none);
  std::vector<models::KeepProducts> keep = probe.checkpointing.keep_per_block;
  int64_t used = plan_memory(probe).peak(batch);
  // First `outputs` everywhere it fits (the cheaper step), then `all` block by block.
  for (models::KeepProducts level : {models::KeepProducts::outputs, models::KeepProducts::all}) {
    for (int64_t i = 0; i < blocks; ++i) {
      if (!is_checkpointed(inputs, i, blocks)) continue;
      const auto idx = static_cast<size_t>(i);
      const int64_t extra = batch * (held_bytes(inputs, i, level) - held_bytes(inputs, i, keep[idx]));
      if (used + extra > budget) continue;
      used += extra;
      keep[idx] = level;
    }
  }
  return keep;
}

int64_t choose_blocks_to_swap(const MemoryPlanInputs& inputs, int64_t batch, int64_t budget) {
  MemoryPlanInputs probe = inputs;
  for (int64_t n = 0; n <= max_blocks_to_swap(inputs.model); ++n) {
    probe.blocks_to_swap = n;
    if (plan_memory(probe).peak(batch) <= budget) return n;
  }
  return -1;
}

}  // namespace fluxtrain::train
