// Resolving an option table: command line > environment > TOML file > defaults, every given value
// checked and every problem reported at once (options.h).
#include <toml++/toml.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "app/option_values.h"
#include "app/options.h"
#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::app {
namespace {

using namespace detail;

std::string node_text(const toml::node& node) {
  if (node.is_string()) return toml_string(*node.value<std::string>());
  std::ostringstream out;
  node.visit([&](const auto& n) { out << n; });
  return out.str();
}

const char* node_kind(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

// Type-level conversion of a TOML value; strict: a string "16" is not an integer.
OptionValue from_toml(const OptionSpec& spec, const toml::node& node, std::string& error) {
  auto wrong = [&]() -> OptionValue {
    error = cat("is ", node_kind(node));
    return {};
  };
  switch (spec.type) {
    case OptionType::boolean:
      if (auto b = node.value<bool>(); b && node.is_boolean()) return *b;
      return wrong();
    case OptionType::integer:
      if (node.is_integer()) return *node.value<int64_t>();
      return wrong();
    case OptionType::real:
      if (node.is_integer()) return static_cast<double>(*node.value<int64_t>());
      if (node.is_floating_point()) {
        double d = *node.value<double>();
        if (!std::isfinite(d)) {
          error = "not a finite number";
          return {};
        }
        return d;
      }
      return wrong();
    case OptionType::choice:
    case OptionType::string:
    case OptionType::path:
      if (node.is_string()) return parse_text(spec, *node.value<std::string>(), error);
      if (node.is_array() && !spec.toml_array_join.empty() && spec.type == OptionType::string) {
        std::vector<std::string> parts;
        for (const toml::node& item : *node.as_array()) {
          if (!item.is_string()) {
            error = cat("holds ", node_kind(item), " (expected an array of strings)");
            return {};
          }
          parts.push_back(*item.value<std::string>());
        }
        return parse_text(spec, join(parts, spec.toml_array_join), error);
      }
      return wrong();
    case OptionType::list: {
      std::vector<std::string> items;
      auto add = [&](const toml::node& item) {
        if (item.is_string())
          items.push_back(trim(*item.value<std::string>()));
        else if (item.is_integer())
          items.push_back(std::to_string(*item.value<int64_t>()));
        else if (item.is_floating_point())
          items.push_back(format_real(*item.value<double>()));
        else
          return false;
        return !items.back().empty();
      };
      if (node.is_array()) {
        for (const toml::node& item : *node.as_array()) {
          if (!add(item)) {
            error = cat("holds ", node_kind(item), " or an empty item");
            return {};
          }
        }
        if (items.empty()) {
          error = "an empty array";
          return {};
        }
        return items;
      }
      if (add(node)) return items;
      return wrong();
    }
  }
  return wrong();
}

}  // namespace

void throw_errors(const std::vector<std::string>& errors) {
  if (errors.empty()) return;
  if (errors.size() == 1) throw Error(errors[0]);
  std::string text = cat(errors.size(), " configuration errors:");
  for (const auto& e : errors) {
    text += "\n  - ";
    for (char c : e) text += c == '\n' ? std::string("\n    ") : std::string(1, c);
  }
  throw Error(text);
}

// ---- resolution -------------------------------------------------------------------------------

ResolvedConfig resolve(const OptionTable& table, const ResolveInputs& inputs) {
  std::vector<std::string> errors, warnings;
  // Per option, the given values by source; the highest source wins, every given value is checked.
  std::map<std::string, std::map<Source, ResolvedOption>> given;

  auto accept = [&](const OptionSpec& spec, Source source, const std::string& origin, const std::string& raw,
                    OptionValue value, std::string error, const std::string& file) {
    if (error.empty()) error = check_value(spec, value, true);
    if (!error.empty()) {
      const std::string shown =
          spec.secret ? cat(origin, " (hidden)") : given_text(source, origin, spec.shown(raw), spec.name, file);
      errors.push_back(cat(shown, ": ", error, "; allowed: ", spec.allowed_text()));
      return;
    }
    given[spec.name][source] = ResolvedOption{normalise(spec, std::move(value)), source, origin, raw};
  };
  auto accept_text = [&](const OptionSpec& spec, Source source, const std::string& origin, const std::string& raw) {
    std::string error;
    OptionValue value = parse_text(spec, raw, error);
    accept(spec, source, origin, raw, std::move(value), error, "");
  };

  // Command line: names come from the CLI binding, so an unknown one is a programming error.
  for (const auto& [name, raw] : inputs.cli) {
    const OptionSpec& spec = table.at(name);
    // A bare boolean flag means true.
    std::string text = spec.type == OptionType::boolean && trim(raw).empty() ? "true" : raw;
    accept_text(spec, Source::cli, spec.flag_name(), text);
  }
  // Repeatable options: one item per occurrence on the command line (commas are not separators there).
  for (const auto& [name, items] : inputs.cli_items) {
    const OptionSpec& spec = table.at(name);
    if (items.empty()) continue;
    std::string raw = join(items, " ");
    std::string error;
    std::vector<std::string> checked;
    for (const auto& item : items) {
      if (trim(item).empty()) error = "an empty item";
      checked.push_back(item);
    }
    accept(spec, Source::cli, spec.flag_name(), raw, error.empty() ? OptionValue(checked) : OptionValue(), error, "");
  }

  // Environment. An empty variable counts as unset (container templates list every variable, most empty).
  const std::vector<std::string> known_vars = table.env_names();
  for (const auto& spec : table.specs()) {
    std::vector<std::string> vars = {spec.env_name()};
    vars.insert(vars.end(), spec.env_aliases.begin(), spec.env_aliases.end());
    std::vector<std::string> set;
    for (const auto& var : vars) {
      auto it = inputs.env.find(var);
      if (it != inputs.env.end() && !trim(it->second).empty()) set.push_back(var);
    }
    if (set.size() > 1) {
      errors.push_back(cat(join(set, " and "), " are both set (", spec.name, "); set only one of them"));
      continue;
    }
    if (set.size() == 1) accept_text(spec, Source::env, set[0], inputs.env.at(set[0]));
  }
  for (const auto& [var, value] : inputs.env) {
    if (table.env_prefix().empty() || var.rfind(table.env_prefix(), 0) != 0 || table.find_env(var) != nullptr) continue;
    std::string hint = closest_match(var, known_vars);
    warnings.push_back(cat("unknown environment variable ", var, " is ignored",
                           hint.empty()
                               ? cat(" (the variables are listed by `fluxtrain ", table.command(), " --help-env`)")
                               : cat("; did you mean ", hint, "?")));
  }

  // The config file, named on the command line or in the environment.
  std::string file;
  for (const auto& spec : table.specs()) {
    if (!spec.config_file) continue;
    auto it = given.find(spec.name);
    if (it == given.end()) continue;
    const ResolvedOption& chosen = it->second.rbegin()->second;
    file = std::get<std::string>(chosen.value);
    toml::table root;
    try {
      root = toml::parse_file(file);
    } catch (const toml::parse_error& e) {
      errors.push_back(cat("config file ", file, " (", chosen.origin, "), line ", e.source().begin.line, ", column ",
                           e.source().begin.column, ": ", e.description(), " (not valid TOML)"));
      continue;
    }
    std::vector<std::string> group_ids;
    for (const auto& g : table.groups()) group_ids.push_back(g.id);
    std::set<std::string> seen;
    auto read_key = [&](const std::string& key, const toml::node& node, const std::string& section) {
      const std::string where = section.empty() ? cat("key ", key) : cat("key ", key, " in [", section, "]");
      const OptionSpec* spec = table.find(key);
      if (spec == nullptr) {
        std::string hint = closest_match(key, table.names());
        errors.push_back(
            cat("config file ", file, ": unknown ", where, hint.empty() ? "" : cat("; did you mean ", hint, "?"),
                " (the keys are the option names listed by `fluxtrain ", table.command(), " --help-env`)"));
        return;
      }
      if (!spec->from_file) {
        errors.push_back(cat("config file ", file, ": ", where, " cannot be set in a config file (use ",
                             spec->flag_name(), " or ", spec->env_name(), ")"));
        return;
      }
      if (!section.empty() && section != spec->group) {
        errors.push_back(cat("config file ", file, ": ", where, " belongs in [", spec->group, "] or at the top level"));
        return;
      }
      if (!seen.insert(key).second) {
        errors.push_back(
            cat("config file ", file, ": ", key, " is set twice (at the top level and in [", spec->group, "])"));
        return;
      }
      std::string error;
      OptionValue value = from_toml(*spec, node, error);
      accept(*spec, Source::file, file, node_text(node), std::move(value), error, file);
    };
    for (const auto& [key_node, node] : root) {
      const std::string key(key_node.str());
      if (node.is_table() && table.find(key) == nullptr) {
        if (std::find(group_ids.begin(), group_ids.end(), key) == group_ids.end()) {
          std::string hint = closest_match(key, group_ids);
          errors.push_back(cat("config file ", file, ": unknown table [", key, "]",
                               hint.empty() ? "" : cat("; did you mean [", hint, "]?"),
                               " (tables are the option groups: ", join(group_ids, ", "), ")"));
          continue;
        }
        for (const auto& [inner_key, inner] : *node.as_table()) read_key(std::string(inner_key.str()), inner, key);
        continue;
      }
      read_key(key, node, "");
    }
  }

  for (const auto& spec : table.specs()) {
    if (!spec.required || given.count(spec.name) != 0) continue;
    std::vector<std::string> ways;
    if (spec.has_flag) ways.push_back(spec.positional ? cat("the argument ", upper(spec.name)) : spec.flag_name());
    if (spec.has_env) ways.push_back(spec.env_name());
    errors.push_back(cat(spec.name, " is required: give ", join(ways, " or ")));
  }

  throw_errors(errors);

  std::map<std::string, ResolvedOption> values;
  for (const auto& spec : table.specs()) {
    OptionValue fallback;
    if (!spec.default_text.empty()) {
      std::string error;
      fallback = normalise(spec, parse_text(spec, spec.default_text, error));
    }
    auto it = given.find(spec.name);
    ResolvedOption o;
    if (it != given.end()) o = it->second.rbegin()->second;  // Source order: default < file < env < cli
    else o.value = fallback;
    o.fallback = std::move(fallback);
    values[spec.name] = std::move(o);
  }
  // Defaults that depend on other options, until none moves (a rule may read another rule's result).
  for (size_t pass = 0;; ++pass) {
    bool moved = false;
    for (const auto& spec : table.specs()) {
      if (!spec.default_rule) continue;
      OptionValue fallback;
      std::string why;
      if (auto rule = spec.default_rule(values)) {
        fallback = normalise(spec, std::move(rule->first));
        why = std::move(rule->second);
      } else if (!spec.default_text.empty()) {
        std::string error;
        fallback = normalise(spec, parse_text(spec, spec.default_text, error));
      }
      ResolvedOption& o = values[spec.name];
      if (!(o.fallback == fallback)) moved = true;
      o.fallback = fallback;
      if (o.source == Source::default_value && (!(o.value == fallback) || o.origin != why)) {
        o.value = std::move(fallback);
        o.origin = std::move(why);
        moved = true;
      }
    }
    if (!moved) break;
    if (pass > table.specs().size()) fail("internal: the default rules of the ", table.command(), " options do not settle");
  }
  return ResolvedConfig(&table, std::move(values), file, std::move(warnings));
}

}  // namespace fluxtrain::app
