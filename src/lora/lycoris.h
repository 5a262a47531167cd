// LyCORIS's network types on a frozen Linear: LoKr, LoHa, and DoRA on LoRA, trained as adapters
// (models::LinearAdapter) and read back from files by one rule.
//
// The file's meaning is ComfyUI's (comfy/weight_adapter: lora.py, lokr.py, loha.py, base.py's
// weight_decompose), which Forge shares; every reader here (sample, bake, network_weights) applies it
// and every writer writes what it means the trained weight:
//   LoRA  ΔW = s · up @ down, s = alpha / rank (alpha missing: 1)
//   LoKr  ΔW = s · kron(w1, w2), w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, w2 likewise; s = alpha / rank only
//         when a factor is decomposed (rank = that factor's inner size), else 1 (LyCORIS then stores
//         alpha = rank: both factors full train at scale 1)
//   LoHa  ΔW = s · (hada_w1_a @ hada_w1_b) ⊙ (hada_w2_a @ hada_w2_b), s = alpha / rank (missing: 1)
//   DoRA  W' = (W + ΔW) · dora_scale / ‖·‖: with dora_scale [out, 1] the norm is of the BASE weight's
//         rows ‖W‖ (+ fp32 eps), with [1, in] of (W + ΔW)'s columns; strength t gives W + t·(W' − W).
// DoRA trains as PEFT's (and the paper's): a magnitude m per output row, W' = m · (W + ΔW) / ‖W + ΔW‖
// with the norm detached. Under ComfyUI's out-axis rule that weight is written as
// dora_scale = m · (‖W‖ + eps) / ‖W + ΔW‖, computed against the base trained on; loading divides it back.
//
// LoKr's shape follows LyCORIS: out = a·b and in = c·d by factorization(dim, factor) (factor -1: the two
// factors nearest √dim), w1 [a, c] the smaller part (full, or [a, r] @ [r, c] with decompose_both when
// r < max(a, c) / 2), w2 [b, d] decomposed [b, r] @ [r, d] unless r >= max(b, d) / 2 or full_matrix.
// Initialisation as LyCORIS (PEFT's init_weights="lycoris"): w1 parts and w2_a kaiming-uniform, w2 (or
// w2_b) zero. LoHa as PEFT: w1_a, w1_b, w2_a kaiming-uniform, w2_b zero. DoRA: LoRA's init, m = ‖W‖.
// So every ΔW starts at 0.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lora/keys.h"
#include "lora/options.h"
#include "lora/selection.h"
#include "models/linear.h"

namespace fluxtrain::lora {

// One module's tensors in a file, by part (down/up/alpha/lokr_*/hada_*/dora_scale).
using PartTensors = std::map<keys::Part, at::Tensor>;

// "LoRA", "LoKr" or "LoHa" from the parts present (dora_scale alone does not decide).
std::string_view adapter_type(const PartTensors& parts);
// What is wrong with the parts as an adapter of an [out, in] weight ("" when usable): missing or
// mixed factors, shapes that do not give [out, in], a dora_scale of neither [out, 1] nor [1, in].
std::string check_adapter(const PartTensors& parts, int64_t out, int64_t in);
// The scale the file's rule gives the product (see above).
double adapter_scale(const PartTensors& parts);
// ΔW before any DoRA: adapter_scale · product, fp32 [out, in], on the parts' device.
at::Tensor adapter_diff(const PartTensors& parts);
// The weight with the adapter applied at `strength` as ComfyUI computes it (weight fp32 [out, in]).
at::Tensor apply_adapter(const at::Tensor& weight, const PartTensors& parts, double strength);

// A LoKr, LoHa or DoRA (on LoRA) adapter on one Linear, trained in fp32.
class LycorisModule : public models::LinearAdapter {
 public:
  // `target` is the frozen layer (DoRA reads its weight); the network keeps it alive.
  LycorisModule(std::string name, models::LinearImpl& target, const LoraOptions& options, int64_t rank, double alpha,
                at::Device device, at::Generator generator);

  at::Tensor forward(const at::Tensor& x, const at::Tensor& base) override;

  const std::string& name() const { return name_; }
  std::string_view type() const;  // "LoKr", "LoHa", "DoRA"
  int64_t rank() const { return rank_; }
  double scale() const { return scale_; }
  // The trained tensors in a fixed order (the training state's): the factors by part, then DoRA's magnitude.
  std::vector<at::Tensor> parameters() const;
  // The file's tensors (CPU fp32, LyCORIS names: module + ".lokr_w1", ".alpha", ".dora_scale" ...).
  void append_state(std::vector<std::pair<std::string, at::Tensor>>& out) const;
  // Loads this module's tensors from a file's; records the keys it used and what does not fit.
  void load(const std::map<std::string, at::Tensor>& tensors, std::set<std::string>& used,
            std::vector<std::string>& problems);
  // The trained layer's weight change W' − W at multiplier 1 (fp32, on the parameters' device).
  at::Tensor delta_weight() const;

  void set_training(bool training) { training_ = training; }
  void set_multiplier(double multiplier) { multiplier_ = multiplier; }

 private:
  PartTensors parts() const;
  at::Tensor base_weight() const;  // the frozen weight, fp32, on the parameters' device

  std::string name_;
  NetworkType network_;
  bool dora_;
  int64_t rank_;
  double alpha_;  // as written to the file
  double scale_;  // the file rule's scale for these parts
  models::LinearImpl* target_;
  std::vector<std::pair<keys::Part, at::Tensor>> factors_;
  at::Tensor magnitude_;  // DoRA: m [out]
  double multiplier_ = 1.0;
  bool training_ = false;
};

}  // namespace fluxtrain::lora
