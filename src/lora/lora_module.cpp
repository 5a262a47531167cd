#include "lora/lora_module.h"

#include <ATen/ATen.h>

#include <cmath>

namespace fluxtrain::lora {

LoraModule::LoraModule(std::string name, int64_t in_features, std::vector<int64_t> split_dims, int64_t rank,
                       double alpha, at::Device device, at::Generator generator)
    : name_(std::move(name)), rank_(rank), alpha_(alpha), split_dims_(std::move(split_dims)) {
  // kaiming_uniform_(a = sqrt(5)) on [rank, in]: bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  for (int64_t rows : split_dims_) {
    LoraPart part;
    part.down = (at::rand({rank, in_features}, generator, at::kFloat) * (2 * bound) - bound).to(device);
    part.up = at::zeros({rows, rank}, at::TensorOptions().dtype(at::kFloat).device(device));
    part.down.requires_grad_(true);
    part.up.requires_grad_(true);
    parts_.push_back(std::move(part));
  }
}

void LoraModule::set_dropout(const DropoutOptions& dropout, at::Generator generator) {
  dropout_ = dropout;
  dropout_generator_ = std::move(generator);
}

at::Tensor LoraModule::forward(const at::Tensor& x, const at::Tensor& base) {
  if (!enabled_ || multiplier_ == 0) return base;
  const bool train = training_;
  if (train && dropout_.module > 0) {
    if (at::rand({1}, dropout_generator_, at::kFloat).item<double>() < dropout_.module) return base;
  }
  double scale = this->scale();
  at::Tensor rank_mask;
  if (train && dropout_.rank > 0) {
    // One mask per sample over the rank dimension, shared by the parts; broadcast over the tokens.
    rank_mask = at::rand({x.size(0), rank_}, dropout_generator_, at::kFloat).gt(dropout_.rank);
    rank_mask = rank_mask.to(x.device()).to(x.scalar_type());
    for (int64_t d = 2; d < x.dim(); ++d) rank_mask = rank_mask.unsqueeze(1);
    scale /= (1.0 - dropout_.rank);
  }
  // LoRA weights are fp32 masters; the matmuls run in the input's dtype (bf16 on GPUs).
  const at::ScalarType dtype = x.scalar_type();
  const bool neuron_dropout = train && dropout_.neuron > 0;
  auto finish_part = [&](at::Tensor h, const LoraPart& part) {
    if (neuron_dropout) {
      at::Tensor keep = at::rand(h.sizes(), dropout_generator_, at::kFloat).gt(dropout_.neuron).to(h.device());
      h = h * keep.to(h.scalar_type()) / (1.0 - dropout_.neuron);
    }
    if (rank_mask.defined()) h = h * rank_mask;
    return at::linear(h, part.up.to(dtype));
  };
  at::Tensor delta;
  if (parts_.size() == 1) {
    delta = finish_part(at::linear(x, parts_[0].down.to(dtype)), parts_[0]);
  } else {
    // Split parts: one product for all the down projections (stacked [parts * rank, in]) unless neuron
    // dropout draws its masks part by part; the parts' outputs are concatenated.
    at::Tensor stacked;
    if (!neuron_dropout) {
      std::vector<at::Tensor> downs;
      downs.reserve(parts_.size());
      for (const LoraPart& part : parts_) downs.push_back(part.down.to(dtype));
      stacked = at::linear(x, at::cat(downs, 0));
    }
    std::vector<at::Tensor> outputs;
    outputs.reserve(parts_.size());
    for (size_t i = 0; i < parts_.size(); ++i) {
      at::Tensor h = stacked.defined() ? stacked.narrow(-1, static_cast<int64_t>(i) * rank_, rank_)
                                       : at::linear(x, parts_[i].down.to(dtype));
      outputs.push_back(finish_part(h, parts_[i]));
    }
    delta = at::cat(outputs, -1);
  }
  return at::add(base, delta, multiplier_ * scale);
}

const at::Tensor* take_part(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                            keys::Part part, std::set<std::string>& used) {
  auto it = tensors.find(keys::tensor_key(module, part));
  if (it == tensors.end()) return nullptr;
  used.insert(it->first);
  return &it->second;
}

}  // namespace fluxtrain::lora
