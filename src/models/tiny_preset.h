// The presets of `fluxtrain make-tiny` (models/tiny.h), torch-free so that its option table can name them.
#pragma once

#include <array>

#include "core/enum_names.h"

namespace fluxtrain::models {

enum class TinyPreset {
  test,  // random weights with strong modulation, so every term shows in parity tests
  demo,  // the demo's sizes, initialised for training from scratch: DiT's adaLN-Zero (every modulation
         // and the final projection start at zero, so each block starts as the identity)
};
constexpr std::array<EnumName<TinyPreset>, 2> enum_names(TinyPreset) {
  return {{{"test", TinyPreset::test}, {"demo", TinyPreset::demo}}};
}

}  // namespace fluxtrain::models
