// One LoRA adapter on a frozen Linear: out = base(x) + multiplier * scale * up(down(x)), scale = alpha/rank.
// With split_dims (kohya's split_qkv) the output rows are cut into parts (q, k, v[, mlp]) that each get
// their own down/up pair; the parts' outputs are concatenated. Dropouts follow kohya's LoRAModule:
// neuron dropout on down(x), rank dropout (a [batch, rank] mask, scale divided by 1 - p) and module
// dropout (skip the adapter for the whole call), all only in training mode.
#pragma once

#include <ATen/core/Generator.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "lora/keys.h"
#include "lora/options.h"
#include "models/linear.h"

namespace fluxtrain::lora {

struct LoraPart {
  at::Tensor down;  // [rank, in]
  at::Tensor up;    // [rows, rank]
};

class LoraModule : public models::LinearAdapter {
 public:
  // Allocates fp32 parameters on `device`: down kaiming-uniform (a = sqrt 5) from `generator`, up zeros.
  LoraModule(std::string name, int64_t in_features, std::vector<int64_t> split_dims, int64_t rank, double alpha,
             at::Device device, at::Generator generator);

  at::Tensor forward(const at::Tensor& x, const at::Tensor& base) override;

  const std::string& name() const { return name_; }
  int64_t rank() const { return rank_; }
  double alpha() const { return alpha_; }
  double scale() const { return alpha_ / static_cast<double>(rank_); }
  const std::vector<int64_t>& split_dims() const { return split_dims_; }
  std::vector<LoraPart>& parts() { return parts_; }
  const std::vector<LoraPart>& parts() const { return parts_; }

  void set_training(bool training) { training_ = training; }
  void set_dropout(const DropoutOptions& dropout, at::Generator generator);
  void set_multiplier(double multiplier) { multiplier_ = multiplier; }
  void set_alpha(double alpha) { alpha_ = alpha; }
  void set_enabled(bool enabled) { enabled_ = enabled; }

 private:
  std::string name_;
  int64_t rank_;
  double alpha_;
  std::vector<int64_t> split_dims_;  // one entry (the whole output) when not split
  std::vector<LoraPart> parts_;
  double multiplier_ = 1.0;
  bool training_ = false;
  bool enabled_ = true;
  DropoutOptions dropout_;
  at::Generator dropout_generator_;
};

// A kohya-format file's tensor of `module`'s `part` (keys::tensor_key), or nullptr when the file has none; the key
// goes into `used`, so a loader can name the tensors that belong to no module.
const at::Tensor* take_part(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                            keys::Part part, std::set<std::string>& used);

}  // namespace fluxtrain::lora
