// The spelling of an enum's values, declared once next to the enum and used both ways: the option
// tables take their choices from it (and hand the parsed value over as the enum), and logs, metadata
// and state files print with it. An enum opts in with an ADL-visible function in its own namespace:
//
//   enum class LossType { l2, l1 };
//   constexpr std::array<EnumName<LossType>, 2> enum_names(LossType) { return {{{"l2", LossType::l2}, ...}}; }
//
// Torch-free, header-only.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain {

template <typename E>
struct EnumName {
  std::string_view name;
  E value;
};

template <typename E>
concept NamedEnum = std::is_enum_v<E> && requires(E e) {
  enum_names(e);
};

// The canonical names, in declaration order.
template <NamedEnum E>
std::vector<std::string> enum_name_list() {
  std::vector<std::string> out;
  for (const auto& item : enum_names(E{})) out.emplace_back(item.name);
  return out;
}

template <NamedEnum E>
std::string_view name_of(E value) {
  for (const auto& item : enum_names(E{})) {
    if (item.value == value) return item.name;
  }
  return "?";
}

// Exact match of a canonical name (the option tables have already matched case and aliases).
template <NamedEnum E>
std::optional<E> find_enum(std::string_view name) {
  for (const auto& item : enum_names(E{})) {
    if (item.name == name) return item.value;
  }
  return std::nullopt;
}

// find_enum() or an Error naming `what` (the option, flag or key the text came from) and the choices.
template <NamedEnum E>
E parse_enum(std::string_view name, const std::string& what) {
  if (auto value = find_enum<E>(name)) return *value;
  fail(what, " = '", name, "' is not one of ", join_alternatives(enum_name_list<E>()));
}

}  // namespace fluxtrain
