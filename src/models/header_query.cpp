#include "models/header_query.h"

#include "core/error.h"

namespace fluxtrain::models {

const safetensors::TensorInfo& HeaderQuery::need(const std::string& name) const {
  const safetensors::TensorInfo* t = find_(name);
  if (t == nullptr) fail(file_, ": no '", name, "': not a ", what_, " (`fluxtrain inspect ", file_, "` shows what it is)");
  return *t;
}

int64_t HeaderQuery::count(const std::string& head, const std::string& tail) const {
  int64_t n = 0;
  while (find_(head + std::to_string(n) + tail) != nullptr) ++n;
  return n;
}

}  // namespace fluxtrain::models
