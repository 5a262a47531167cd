#include "lora/lycoris.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace fluxtrain::lora {
namespace {

using keys::Part;

// ComfyUI normalises in the patched weight's dtype, which is fp32 (its intermediate dtype).
constexpr double kEps = std::numeric_limits<float>::epsilon();

at::Tensor get(const PartTensors& parts, Part part) {
  auto it = parts.find(part);
  return it == parts.end() ? at::Tensor() : it->second;
}

bool has(const PartTensors& parts, Part part) {
  return parts.count(part) > 0;
}

std::string shape(const at::Tensor& t) {
  return cat(t.sizes());
}

// w = a @ b; "" or what is wrong.
std::string check_pair(const PartTensors& parts, Part a, Part b, int64_t* rows, int64_t* cols) {
  if (!has(parts, a) || !has(parts, b))
    return cat("has ", has(parts, a) || has(parts, b) ? "only one of " : "none of ", keys::part_label(a), " + ",
               keys::part_label(b));
  const at::Tensor& ta = parts.at(a);
  const at::Tensor& tb = parts.at(b);
  if (ta.dim() != 2 || tb.dim() != 2 || ta.size(1) != tb.size(0))
    return cat(keys::part_label(a), " ", shape(ta), " and ", keys::part_label(b), " ", shape(tb),
               " do not multiply (2-D, inner sizes equal)");
  *rows = ta.size(0);
  *cols = tb.size(1);
  return "";
}

// w = full, or a @ b; "" or what is wrong.
std::string check_factor(const PartTensors& parts, Part full, Part a, Part b, int64_t* rows, int64_t* cols) {
  if (has(parts, full)) {
    if (has(parts, a) || has(parts, b))
      return cat("has both ", keys::part_label(full), " and ", keys::part_label(a), "/", keys::part_label(b));
    const at::Tensor& w = parts.at(full);
    if (w.dim() != 2) return cat(keys::part_label(full), " has shape ", shape(w), ", expected 2-D");
    *rows = w.size(0);
    *cols = w.size(1);
    return "";
  }
  if (!has(parts, a) && !has(parts, b)) return cat("has neither ", keys::part_label(full), " nor ", keys::part_label(a));
  return check_pair(parts, a, b, rows, cols);
}

at::Tensor factor(const PartTensors& parts, Part full, Part a, Part b) {
  if (has(parts, full)) return parts.at(full).to(at::kFloat);
  return at::mm(parts.at(a).to(at::kFloat), parts.at(b).to(at::kFloat));
}

// kaiming_uniform_(a = sqrt(5)) on [rows, cols]: bound 1 / sqrt(cols).
at::Tensor kaiming(int64_t rows, int64_t cols, at::Generator& g, at::Device device) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(cols));
  return (at::rand({rows, cols}, g, at::kFloat) * (2 * bound) - bound).to(device);
}

}  // namespace

std::string_view adapter_type(const PartTensors& parts) {
  for (const auto& [part, tensor] : parts) {
    const std::string_view type = keys::lycoris_type(part);
    if (type == "LoKr" || type == "LoHa") return type;
  }
  return "LoRA";
}

std::string check_adapter(const PartTensors& parts, int64_t out, int64_t in) {
  const std::string_view type = adapter_type(parts);
  for (const auto& [part, tensor] : parts) {
    const std::string_view other = keys::lycoris_type(part);
    const bool lora_part = part == Part::down || part == Part::up;
    if ((type == "LoRA" && !other.empty() && other != "DoRA") || (type != "LoRA" && lora_part) ||
        (type != "LoRA" && !other.empty() && other != "DoRA" && other != type))
      return cat("mixes ", type, " tensors with ", keys::part_label(part));
  }
  int64_t rows = 0, cols = 0;
  if (type == "LoRA") {
    if (!has(parts, Part::down) || !has(parts, Part::up))
      return cat("has no ", keys::part_label(has(parts, Part::down) ? Part::up : Part::down), " weight");
    const at::Tensor& d = parts.at(Part::down);
    const at::Tensor& u = parts.at(Part::up);
    if (d.dim() != 2 || u.dim() != 2 || u.size(1) != d.size(0))
      return cat("down ", shape(d), " / up ", shape(u), " do not multiply");
    rows = u.size(0);
    cols = d.size(1);
  } else if (type == "LoKr") {
    int64_t r1 = 0, c1 = 0, r2 = 0, c2 = 0;
    std::string problem = check_factor(parts, Part::lokr_w1, Part::lokr_w1_a, Part::lokr_w1_b, &r1, &c1);
    if (problem.empty()) problem = check_factor(parts, Part::lokr_w2, Part::lokr_w2_a, Part::lokr_w2_b, &r2, &c2);
    if (!problem.empty()) return problem;
    rows = r1 * r2;
    cols = c1 * c2;
  } else {
    int64_t r1 = 0, c1 = 0, r2 = 0, c2 = 0;
    std::string problem = check_pair(parts, Part::hada_w1_a, Part::hada_w1_b, &r1, &c1);
    if (problem.empty()) problem = check_pair(parts, Part::hada_w2_a, Part::hada_w2_b, &r2, &c2);
    if (!problem.empty()) return problem;
    if (r1 != r2 || c1 != c2) return cat("its two Hadamard factors are [", r1, ", ", c1, "] and [", r2, ", ", c2, "]");
    rows = r1;
    cols = c1;
  }
  if (rows != out || cols != in)
    return cat(type, " ΔW is [", rows, ", ", cols, "], expected [", out, ", ", in, "]");
  if (has(parts, Part::alpha) && parts.at(Part::alpha).numel() != 1)
    return cat("alpha has shape ", shape(parts.at(Part::alpha)), ", expected a single number");
  if (has(parts, Part::dora_scale)) {
    const at::Tensor& s = parts.at(Part::dora_scale);
    const bool on_out = s.dim() == 2 && s.size(0) == out && s.size(1) == 1;
    const bool on_in = s.dim() == 2 && s.size(0) == 1 && s.size(1) == in;
    if (!on_out && !on_in) return cat("dora_scale has shape ", shape(s), ", expected [", out, ", 1] or [1, ", in, "]");
  }
  return "";
}

double adapter_scale(const PartTensors& parts) {
  const at::Tensor alpha = get(parts, Part::alpha);
  if (!alpha.defined()) return 1.0;
  const std::string_view type = adapter_type(parts);
  int64_t rank = 0;
  if (type == "LoRA") {
    rank = parts.at(Part::down).size(0);
  } else if (type == "LoHa") {
    rank = parts.at(Part::hada_w1_b).size(0);
  } else {
    // ComfyUI: the inner size of a decomposed factor (w2's when both are), none: scale 1.
    if (has(parts, Part::lokr_w1_b)) rank = parts.at(Part::lokr_w1_b).size(0);
    if (has(parts, Part::lokr_w2_b)) rank = parts.at(Part::lokr_w2_b).size(0);
    if (rank == 0) return 1.0;
  }
  return alpha.item<double>() / static_cast<double>(rank);
}

at::Tensor adapter_diff(const PartTensors& parts) {
  const std::string_view type = adapter_type(parts);
  at::Tensor product;
  if (type == "LoRA") {
    product = at::mm(parts.at(Part::up).to(at::kFloat), parts.at(Part::down).to(at::kFloat));
  } else if (type == "LoKr") {
    product = at::kron(factor(parts, Part::lokr_w1, Part::lokr_w1_a, Part::lokr_w1_b),
                       factor(parts, Part::lokr_w2, Part::lokr_w2_a, Part::lokr_w2_b));
  } else {
    product = at::mm(parts.at(Part::hada_w1_a).to(at::kFloat), parts.at(Part::hada_w1_b).to(at::kFloat)) *
              at::mm(parts.at(Part::hada_w2_a).to(at::kFloat), parts.at(Part::hada_w2_b).to(at::kFloat));
  }
  return product * adapter_scale(parts);
}

at::Tensor apply_adapter(const at::Tensor& weight, const PartTensors& parts, double strength) {
  at::Tensor diff = adapter_diff(parts).to(weight.device());
  const at::Tensor dora_scale = get(parts, Part::dora_scale);
  if (!dora_scale.defined()) return weight + diff * strength;
  at::Tensor merged = weight + diff;
  at::Tensor norm = dora_scale.size(0) == weight.size(0) && dora_scale.size(1) == 1
                        ? weight.norm(2, {1}, /*keepdim=*/true)   // ComfyUI: the base weight's rows
                        : merged.norm(2, {0}, /*keepdim=*/true);  // the merged weight's columns
  merged = merged * (dora_scale.to(weight.device()).to(at::kFloat) / (norm + kEps));
  if (strength == 1.0) return merged;
  return weight + (merged - weight) * strength;
}

// --- the trained module

LycorisModule::LycorisModule(std::string name, models::LinearImpl& target, const LoraOptions& options, int64_t rank,
                             double alpha, at::Device device, at::Generator generator)
    : name_(std::move(name)),
      network_(options.type),
      dora_(options.dora_wd),
      rank_(rank),
      alpha_(alpha),
      target_(&target) {
  const int64_t out = target.out_features, in = target.in_features;
  auto add = [&](Part part, at::Tensor t) {
    t.requires_grad_(true);
    factors_.emplace_back(part, std::move(t));
  };
  // The shapes and which factor starts at zero: lora/selection.h (the memory planner counts the same).
  bool any_decomposed = false;
  for (const FactorShape& f : factor_shapes(options, out, in, rank)) {
    add(f.part, f.zero ? at::zeros({f.rows, f.cols}, at::TensorOptions().dtype(at::kFloat).device(device))
                       : kaiming(f.rows, f.cols, generator, device));
    any_decomposed = any_decomposed || f.part == Part::lokr_w1_b || f.part == Part::lokr_w2_b;
  }
  // LyCORIS: a LoKr with both factors full trains at scale 1, and says so with alpha = rank.
  if (network_ == NetworkType::lokr && !any_decomposed) alpha_ = static_cast<double>(rank);
  PartTensors p = parts();
  p[Part::alpha] = at::scalar_tensor(alpha_, at::kFloat);
  scale_ = adapter_scale(p);
  if (dora_) {
    at::NoGradGuard no_grad;
    magnitude_ = base_weight().norm(2, {1}).to(device).requires_grad_(true);
  }
}

std::string_view LycorisModule::type() const {
  if (network_ == NetworkType::lokr) return "LoKr";
  if (network_ == NetworkType::loha) return "LoHa";
  return "DoRA";
}

PartTensors LycorisModule::parts() const {
  PartTensors out;
  for (const auto& [part, t] : factors_) out[part] = t;
  return out;
}

at::Tensor LycorisModule::base_weight() const {
  return target_->weight_as(at::kFloat).detach().to(factors_.front().second.device());
}

std::vector<at::Tensor> LycorisModule::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [part, t] : factors_) out.push_back(t);
  if (magnitude_.defined()) out.push_back(magnitude_);
  return out;
}

at::Tensor LycorisModule::forward(const at::Tensor& x, const at::Tensor& base) {
  if (multiplier_ == 0) return base;
  const at::ScalarType dtype = x.scalar_type();
  if (!dora_) {
    // The weight change is formed (kron / Hadamard products), then one product with the input.
    // parts() holds no alpha, so adapter_diff gives the bare product.
    at::Tensor delta = (adapter_diff(parts()) * scale_).to(dtype);
    return at::add(base, at::linear(x, delta), multiplier_);
  }
  // PEFT's DoRA: with n = ‖W + s·up@down‖ per row (detached) and g = m / n,
  // y = base + (g − 1)·(x Wᵀ) + g·s·up(down(x)), base's bias kept once.
  const at::Tensor& down = factors_[0].second;
  const at::Tensor& up = factors_[1].second;
  at::Tensor norm;
  {
    at::NoGradGuard no_grad;
    norm = (base_weight() + at::mm(up, down) * scale_).norm(2, {1});
  }
  at::Tensor g = (magnitude_ / norm).to(dtype);
  at::Tensor product = target_->bias.defined() ? base - target_->bias.to(dtype) : base;
  at::Tensor lora = at::linear(at::linear(x, down.to(dtype)), up.to(dtype));
  at::Tensor dora = (g - 1) * product + g * lora * scale_;
  return at::add(base, dora, multiplier_);
}

at::Tensor LycorisModule::delta_weight() const {
  at::NoGradGuard no_grad;
  at::Tensor diff = adapter_diff(parts()) * scale_;
  if (!dora_) return diff;
  const at::Tensor w = base_weight();
  const at::Tensor merged = w + diff;
  return merged * (magnitude_.detach() / merged.norm(2, {1})).unsqueeze(1) - w;
}

void LycorisModule::append_state(std::vector<std::pair<std::string, at::Tensor>>& out) const {
  at::NoGradGuard no_grad;
  out.emplace_back(keys::tensor_key(name_, Part::alpha), at::scalar_tensor(alpha_, at::kFloat));
  for (const auto& [part, t] : factors_)
    out.emplace_back(keys::tensor_key(name_, part), t.detach().to(at::kCPU).contiguous().clone());
  if (dora_) {
    // ComfyUI's out-axis rule divides by the base weight's row norms: m·(‖W‖ + eps)/‖W + ΔW‖ makes its
    // weight equal the trained m·(W + ΔW)/‖W + ΔW‖.
    const at::Tensor w = base_weight();
    const at::Tensor merged = w + adapter_diff(parts()) * scale_;
    at::Tensor scale = magnitude_.detach() * (w.norm(2, {1}) + kEps) / merged.norm(2, {1});
    out.emplace_back(keys::tensor_key(name_, Part::dora_scale), scale.unsqueeze(1).to(at::kCPU).contiguous());
  }
}

void LycorisModule::load(const std::map<std::string, at::Tensor>& tensors, std::set<std::string>& used,
                         std::vector<std::string>& problems) {
  at::NoGradGuard no_grad;
  PartTensors file;
  auto take = [&](Part part) {
    auto it = tensors.find(keys::tensor_key(name_, part));
    if (it == tensors.end()) return false;
    used.insert(it->first);
    file[part] = it->second;
    return true;
  };
  for (const auto& [part, t] : factors_) take(part);
  take(Part::alpha);
  const bool has_dora_scale = take(Part::dora_scale);
  // The parts of this module's kind that it was not built with (another rank or factor decision).
  for (Part part : {Part::down, Part::up, Part::lokr_w1, Part::lokr_w1_a, Part::lokr_w1_b, Part::lokr_w2,
                    Part::lokr_w2_a, Part::lokr_w2_b, Part::hada_w1_a, Part::hada_w1_b, Part::hada_w2_a,
                    Part::hada_w2_b}) {
    if (file.count(part) == 0 && tensors.count(keys::tensor_key(name_, part)) > 0) {
      used.insert(keys::tensor_key(name_, part));
      problems.push_back(cat(name_, ": the file has ", keys::part_label(part), ", the ", type(),
                             " network built here has none (another rank, factor, decompose_both or full_matrix?)"));
      return;
    }
  }
  if (file.size() == (file.count(Part::alpha) + (has_dora_scale ? 1 : 0))) {
    problems.push_back(cat(name_, ": missing from the file"));
    return;
  }
  for (const auto& [part, t] : factors_) {
    auto it = file.find(part);
    if (it == file.end()) {
      problems.push_back(cat(name_, ": the file has no ", keys::part_label(part)));
      return;
    }
    if (!it->second.sizes().equals(t.sizes())) {
      problems.push_back(cat(name_, ": ", keys::part_label(part), " is ", it->second.sizes(), ", expected ",
                             t.sizes(), " (rank ", rank_, ")"));
      return;
    }
  }
  if (dora_ != has_dora_scale) {
    problems.push_back(cat(name_, dora_ ? ": the file has no dora_scale (not a DoRA), the network trains DoRA"
                                        : ": the file has a dora_scale (DoRA), the network does not train DoRA"));
    return;
  }
  for (auto& [part, t] : factors_) t.copy_(file.at(part));
  if (file.count(Part::alpha)) {
    PartTensors p = parts();
    p[Part::alpha] = file.at(Part::alpha);
    alpha_ = file.at(Part::alpha).item<double>();
    scale_ = adapter_scale(p);
  }
  if (dora_) {
    const at::Tensor& s = file.at(Part::dora_scale);
    if (s.dim() != 2 || s.size(0) != magnitude_.size(0) || s.size(1) != 1) {
      problems.push_back(cat(name_, ": dora_scale is ", s.sizes(), "; only the output-axis form [",
                             magnitude_.size(0), ", 1] continues training (PEFT's DoRA)"));
      return;
    }
    const at::Tensor w = base_weight();
    const at::Tensor merged = w + adapter_diff(parts()) * scale_;
    magnitude_.copy_(s.squeeze(1).to(w.device()) * merged.norm(2, {1}) / (w.norm(2, {1}) + kEps));
  }
}

}  // namespace fluxtrain::lora
