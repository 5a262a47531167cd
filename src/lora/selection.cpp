#include "lora/selection.h"

#include <algorithm>

#include "core/error.h"
#include "core/strings.h"
#include "lora/keys.h"

namespace fluxtrain::lora {
namespace {

// The per-layer-type key of a block Linear ("double_blocks.3.img_attn.qkv" -> "img_attn").
std::string layer_type(const std::string& path) {
  if (path.rfind("single_blocks.", 0) == 0) {
    return path.find(".modulation.") != std::string::npos ? "single_mod" : "single";
  }
  size_t first = path.find('.', std::string("double_blocks.").size());
  std::string rest = path.substr(first + 1);  // img_attn.qkv
  return rest.substr(0, rest.find('.'));
}

const std::vector<std::string> kTypeNames = {"img_attn", "img_mlp", "img_mod", "txt_attn",
                                             "txt_mlp",  "txt_mod", "single",  "single_mod"};

}  // namespace

std::vector<bool> parse_block_selection(const std::string& text, int64_t count, const std::string& option) {
  std::vector<bool> selected(static_cast<size_t>(count), false);
  if (text == "all") return std::vector<bool>(static_cast<size_t>(count), true);
  if (text.empty() || text == "none") return selected;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    std::string item = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    int64_t lo = -1, hi = -1;
    try {
      size_t dash = item.find('-');
      size_t used = 0;
      lo = std::stoll(item.substr(0, dash), &used);
      hi = dash == std::string::npos ? lo : std::stoll(item.substr(dash + 1));
    } catch (const std::exception&) {
      fail(option, ": '", item, "' is not a block index or range; expected e.g. \"all\", \"none\", \"0,2,5-9\"");
    }
    if (lo < 0 || hi < lo || hi >= count) {
      fail(option, ": '", item, "' is outside the model's blocks 0-", count - 1);
    }
    for (int64_t i = lo; i <= hi; ++i) selected[static_cast<size_t>(i)] = true;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return selected;
}


std::pair<int64_t, int64_t> factorization(int64_t dimension, int64_t factor) {
  if (factor > 0 && dimension % factor == 0) {
    int64_t m = factor, n = dimension / factor;
    if (m > n) std::swap(m, n);
    return {m, n};
  }
  if (factor < 0) factor = dimension;
  int64_t m = 1, n = dimension;
  const int64_t length = m + n;
  while (m < n) {
    int64_t new_m = m + 1;
    while (dimension % new_m != 0) ++new_m;
    const int64_t new_n = dimension / new_m;
    if (new_m + new_n > length || new_m > factor) break;
    m = new_m;
    n = new_n;
  }
  if (m > n) std::swap(m, n);
  return {m, n};
}

std::vector<FactorShape> factor_shapes(const LoraOptions& options, int64_t out, int64_t in, int64_t rank) {
  using keys::Part;
  const double r = static_cast<double>(rank);
  if (options.type == NetworkType::lokr) {
    // out = a·b, in = c·d; w1 [a, c] is the smaller part, w2 [b, d] the larger.
    const auto [in_m, in_n] = factorization(in, options.factor);
    const auto [out_l, out_k] = factorization(out, options.factor);
    std::vector<FactorShape> shapes;
    if (options.decompose_both && !options.full_matrix && r < static_cast<double>(std::max(out_l, in_m)) / 2) {
      shapes.push_back({Part::lokr_w1_a, out_l, rank, false});
      shapes.push_back({Part::lokr_w1_b, rank, in_m, false});
    } else {
      shapes.push_back({Part::lokr_w1, out_l, in_m, false});
    }
    if (!options.full_matrix && r < static_cast<double>(std::max(out_k, in_n)) / 2) {
      shapes.push_back({Part::lokr_w2_a, out_k, rank, false});
      shapes.push_back({Part::lokr_w2_b, rank, in_n, true});
    } else {
      shapes.push_back({Part::lokr_w2, out_k, in_n, true});
    }
    return shapes;
  }
  if (options.type == NetworkType::loha) {
    return {{Part::hada_w1_a, out, rank, false},
            {Part::hada_w1_b, rank, in, false},
            {Part::hada_w2_a, out, rank, false},
            {Part::hada_w2_b, rank, in, true}};
  }
  return {{Part::down, rank, in, false}, {Part::up, out, rank, true}};
}

int64_t AdapterTarget::parameter_count() const {
  int64_t n = 0;
  for (int64_t out : outs) n += rank * (in_features + out);
  return n;
}

std::vector<AdapterTarget> adapter_targets(const models::FluxConfig& c, const LoraOptions& options) {
  if (options.rank <= 0) fail("network_dim must be a positive rank, got ", options.rank);
  for (const auto& [key, value] : options.type_dims) {
    if (std::find(kTypeNames.begin(), kTypeNames.end(), key) == kTypeNames.end()) {
      std::string hint = closest_match(key, kTypeNames);
      fail("network_args: unknown layer type '", key, "_dim'",
           hint.empty() ? "" : "; did you mean '" + hint + "_dim'?");
    }
    if (value < 0) fail("network_args: ", key, "_dim must be >= 0, got ", value);
  }
  const bool doubles = options.train_blocks != TrainBlocks::single;
  const bool singles = options.train_blocks != TrainBlocks::double_;
  auto double_sel = parse_block_selection(options.train_double_block_indices, c.depth, options.double_blocks_origin);
  auto single_sel =
      parse_block_selection(options.train_single_block_indices, c.depth_single_blocks, options.single_blocks_origin);
  std::vector<AdapterTarget> out;
  for (const auto& tensor : models::flux_parameter_shapes(c)) {
    if (!tensor.block_linear) continue;
    const std::string path = tensor.path.substr(0, tensor.path.size() - std::string(".weight").size());
    const bool is_double = tensor.block < c.depth;
    const std::string type = layer_type(path);
    int64_t rank = options.rank;
    if (!options.module_dims.empty()) {
      const auto it = options.module_dims.find(path);
      rank = it == options.module_dims.end() ? 0 : it->second;
    } else {
      if ((is_double && !doubles) || (!is_double && !singles)) continue;
      const size_t index = static_cast<size_t>(is_double ? tensor.block : tensor.block - c.depth);
      if ((is_double && !double_sel[index]) || (!is_double && !single_sel[index])) continue;
      auto dim = options.type_dims.find(type);
      if (dim != options.type_dims.end()) rank = dim->second;
    }
    if (rank == 0) continue;
    AdapterTarget target{path, tensor.shape[1], {tensor.shape[0]}, rank, tensor.block, type};
    if (const auto parts = keys::split_parts(path); options.split_qkv && !parts.empty()) {
      target.outs.clear();
      for (const auto& part : parts) target.outs.push_back(part.mlp_input ? c.mlp_hidden : c.hidden_size);
    }
    out.push_back(std::move(target));
  }
  if (out.empty()) fail("the LoRA network has no modules: train_blocks / block indices / per-layer ranks select nothing");
  return out;
}

}  // namespace fluxtrain::lora
