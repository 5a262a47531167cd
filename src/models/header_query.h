// Reading a model's configuration off its tensor names and shapes (the header alone): the lookups
// every `XxxConfig::detect` needs, with one clear error for a tensor that must be there.
#pragma once

#include <functional>
#include <string>

#include "core/safetensors_format.h"

namespace fluxtrain::models {

class HeaderQuery {
 public:
  using Find = std::function<const safetensors::TensorInfo*(const std::string&)>;
  // `what` names the model family in errors ("Flux autoencoder").
  HeaderQuery(const Find& find, const std::string& file, std::string what)
      : find_(find), file_(file), what_(std::move(what)) {}

  const safetensors::TensorInfo* find(const std::string& name) const { return find_(name); }
  bool has(const std::string& name) const { return find_(name) != nullptr; }
  // Error "<file>: no '<name>': not a <what> (`fluxtrain inspect` shows what it is)" when absent.
  const safetensors::TensorInfo& need(const std::string& name) const;
  // How many consecutive N from 0 have a tensor `head + N + tail` (block counts).
  int64_t count(const std::string& head, const std::string& tail) const;
  const std::string& file() const { return file_; }

 private:
  const Find& find_;
  const std::string& file_;
  std::string what_;
};

}  // namespace fluxtrain::models
