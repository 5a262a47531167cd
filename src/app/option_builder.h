// The fluent way to write an option table entry that says where its value goes (llama.cpp's common_arg
// is the model: each argument carries its handler and its variable):
//
//   Opt<TrainSettings>("network_dim", kInt, "network", "16", "LoRA rank.")
//       .min(1).max(4096)
//       .to(&TrainSettings::training, &train::TrainOptions::lora, &lora::LoraOptions::rank)
//       .metadata("ss_network_dim")
//
// `to(member, member, ...)` walks a chain of member pointers from the settings struct to the field and
// converts the resolved value to the field's type: bool, any integer, double, std::string,
// std::filesystem::path, std::vector<std::string>, a NamedEnum (core/enum_names.h; a choice option's
// choices must be the enum's names) or std::optional of these (unset stays nullopt). It also gives the
// option a reader, with which a test holds the struct's initialisers equal to the table's defaults.
// `set(fn)` takes a function (Settings&, const T&) or (Settings&, const T&, const std::string& described)
// for anything else; T is the option type's value type (bool, int64_t, double, std::string,
// std::vector<std::string>). `lift(member, spec)` moves a spec written for a part of the settings
// (shared_options.h) onto the whole.
#pragma once

#include <filesystem>
#include <optional>
#include <type_traits>
#include <utility>

#include "app/options.h"
#include "core/enum_names.h"
#include "core/error.h"

namespace fluxtrain::app {

constexpr OptionType kBool = OptionType::boolean, kInt = OptionType::integer, kReal = OptionType::real,
                     kString = OptionType::string, kPath = OptionType::path, kChoice = OptionType::choice,
                     kList = OptionType::list;

namespace option_detail {

template <typename T>
struct is_optional : std::false_type {};
template <typename T>
struct is_optional<std::optional<T>> : std::true_type {};

template <typename T>
T& walk(T& object) {
  return object;
}
template <typename T, typename Member, typename... Rest>
auto& walk(T& object, Member member, Rest... rest) {
  return walk(object.*member, rest...);
}

// A resolved value into a field of type F. The table has already checked the value against the
// option's type, bounds and choices, so a mismatch here is a mistake in the table.
template <typename F>
void assign(F& field, const OptionValue& value, const std::string& option) {
  if constexpr (is_optional<F>::value) {
    typename F::value_type inner{};
    assign(inner, value, option);
    field = std::move(inner);
  } else if constexpr (std::is_same_v<F, bool>) {
    field = std::get<bool>(value);
  } else if constexpr (std::is_integral_v<F>) {
    field = static_cast<F>(std::get<int64_t>(value));
  } else if constexpr (std::is_floating_point_v<F>) {
    if (const auto* i = std::get_if<int64_t>(&value))
      field = static_cast<F>(*i);
    else
      field = static_cast<F>(std::get<double>(value));
  } else if constexpr (NamedEnum<F>) {
    field = parse_enum<F>(std::get<std::string>(value), option);
  } else if constexpr (std::is_same_v<F, std::filesystem::path>) {
    field = std::get<std::string>(value);
  } else if constexpr (std::is_same_v<F, std::string>) {
    field = std::get<std::string>(value);
  } else {
    static_assert(std::is_same_v<F, std::vector<std::string>>, "no conversion from an option value to this field");
    field = std::get<std::vector<std::string>>(value);
  }
}

template <typename F>
OptionValue read(const F& field) {
  if constexpr (is_optional<F>::value) {
    return field ? read(*field) : OptionValue{};
  } else if constexpr (std::is_same_v<F, bool>) {
    return field;
  } else if constexpr (std::is_integral_v<F>) {
    return static_cast<int64_t>(field);
  } else if constexpr (std::is_floating_point_v<F>) {
    return static_cast<double>(field);
  } else if constexpr (NamedEnum<F>) {
    return std::string(name_of(field));
  } else if constexpr (std::is_same_v<F, std::filesystem::path>) {
    return field.string();
  } else {
    return field;
  }
}

}  // namespace option_detail

template <typename Settings>
class Opt {
 public:
  Opt(std::string name, OptionType type, std::string group, std::string default_text, std::string help) {
    s_.name = std::move(name);
    s_.type = type;
    s_.group = std::move(group);
    s_.default_text = std::move(default_text);
    s_.help = std::move(help);
    s_.settings_type = typeid(Settings);
  }

  Opt& flag(std::string flag) { return s_.flag = std::move(flag), *this; }
  Opt& no_flag() { return s_.has_flag = false, *this; }
  Opt& env(std::string var) { return s_.env = std::move(var), s_.has_env = true, *this; }
  Opt& no_env() { return s_.has_env = false, s_.env.clear(), *this; }
  Opt& alias(std::string var) { return s_.env_aliases.push_back(std::move(var)), *this; }
  Opt& choices(std::vector<std::string> c) { return s_.choices = std::move(c), *this; }
  template <NamedEnum E>
  Opt& choices_of() {
    return s_.choices = enum_name_list<E>(), *this;
  }
  Opt& choice_alias(std::string from, std::string to) {
    return s_.choice_aliases.emplace_back(std::move(from), std::move(to)), *this;
  }
  Opt& min(double v, bool exclusive = false) { return s_.min = v, s_.min_exclusive = exclusive, *this; }
  Opt& max(double v, bool exclusive = false) { return s_.max = v, s_.max_exclusive = exclusive, *this; }
  Opt& path(PathCheck c) { return s_.path_check = c, *this; }
  Opt& check(std::function<std::string(const OptionValue&)> f) { return s_.check = std::move(f), *this; }
  Opt& allowed(std::string text) { return s_.allowed = std::move(text), *this; }
  Opt& join_arrays(std::string sep) { return s_.toml_array_join = std::move(sep), *this; }
  Opt& not_in_file() { return s_.from_file = false, *this; }
  Opt& config_file() { return s_.config_file = true, s_.from_file = false, *this; }
  Opt& positional() { return s_.positional = true, *this; }
  Opt& repeatable() { return s_.repeatable = true, *this; }
  Opt& required() { return s_.required = true, *this; }
  // Environment only, never printed: a token or a key.
  Opt& secret() { return s_.secret = true, s_.has_flag = false, s_.from_file = false, *this; }
  // A URL that may carry credentials or a signature: shown and recorded redacted (OptionSpec::url_secrets).
  Opt& url_secrets() { return s_.url_secrets = true, *this; }
  Opt& resume(ResumeRule rule) { return s_.resume = rule, *this; }
  Opt& safe_on_resume() { return resume(ResumeRule::safe); }
  Opt& per_rank() { return s_.per_rank = true, *this; }
  Opt& memory_only() { return resume(ResumeRule::memory_only); }
  // The default is the seed's (its train-flux.sh, `where`), not kohya's (`kohya`, "" = none).
  Opt& seed_default(std::string where, std::string kohya) {
    return s_.seed_source = std::move(where), s_.kohya_default = std::move(kohya), *this;
  }
  // A default that depends on other options (OptionSpec::default_rule); `text` says the rule in words.
  Opt& default_rule(std::string text, DefaultRule rule) {
    return s_.default_rule_text = std::move(text), s_.default_rule = std::move(rule), *this;
  }
  Opt& metadata(std::string key) { return s_.metadata_keys.push_back(std::move(key)), *this; }

  template <typename... Members>
  Opt& to(Members... members) {
    const std::string name = s_.name;
    s_.apply = [members..., name](void* settings, const ResolvedOption& option, const std::string&) {
      option_detail::assign(option_detail::walk(*static_cast<Settings*>(settings), members...), option.value, name);
    };
    s_.read = [members...](const void* settings) {
      return option_detail::read(option_detail::walk(*static_cast<const Settings*>(settings), members...));
    };
    return *this;
  }

  // fn(Settings&, const T&), fn(Settings&, const T&, const std::string& described) or
  // fn(Settings&, const T&, const ResolvedOption&) (where and how the value was given).
  template <typename Fn>
  Opt& set(Fn fn) {
    s_.apply = [fn](void* settings, const ResolvedOption& option, const std::string& described) {
      Settings& target = *static_cast<Settings*>(settings);
      std::visit(
          [&](const auto& v) {
            using V = std::decay_t<decltype(v)>;
            if constexpr (!std::is_same_v<V, std::monostate>) {
              if constexpr (std::is_invocable_v<Fn, Settings&, const V&, const std::string&>)
                fn(target, v, described);
              else if constexpr (std::is_invocable_v<Fn, Settings&, const V&, const ResolvedOption&>)
                fn(target, v, option);
              else if constexpr (std::is_invocable_v<Fn, Settings&, const V&>)
                fn(target, v);
              else
                fail("internal: an option setter does not take the option's value type");
            }
          },
          option.value);
    };
    s_.read = nullptr;
    return *this;
  }

  const OptionSpec& spec() const { return s_; }
  operator OptionSpec() const { return s_; }

 private:
  OptionSpec s_;
};

// `spec`, written for a part of the settings (Part), as an option of Outer whose `member` is that part.
template <typename Outer, typename Part>
OptionSpec lift(Part Outer::*member, OptionSpec spec) {
  if (spec.settings_type != typeid(Part))
    fail("internal: option ", spec.name, " does not set the part it is lifted from");
  spec.settings_type = typeid(Outer);
  if (spec.apply) {
    spec.apply = [inner = spec.apply, member](void* settings, const ResolvedOption& option,
                                              const std::string& described) {
      inner(&(static_cast<Outer*>(settings)->*member), option, described);
    };
  }
  if (spec.read) {
    spec.read = [inner = spec.read, member](const void* settings) {
      return inner(&(static_cast<const Outer*>(settings)->*member));
    };
  }
  return spec;
}

}  // namespace fluxtrain::app
