#include "app/options.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "app/option_values.h"
#include "core/error.h"
#include "core/strings.h"

extern char** environ;

namespace fluxtrain::app {

namespace fs = std::filesystem;

namespace detail {

// Shortest text that reads back as the same double, always with a '.' or an exponent (TOML float);
// plain decimals for ordinary magnitudes (0.0001 rather than 1e-04).
std::string format_real(double value) {
  char buffer[400];
  const double magnitude = std::fabs(value);
  const bool fixed = magnitude == 0 || (magnitude >= 1e-5 && magnitude < 1e16);
  auto [end, ec] = fixed ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
                         : std::to_chars(buffer, buffer + sizeof buffer, value);
  std::string text(buffer, end);
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

// A bound as a person writes it: 1 rather than 1.0.
std::string format_bound(double value) {
  if (std::floor(value) == value && std::fabs(value) < 1e15) return std::to_string(static_cast<int64_t>(value));
  return format_real(value);
}

std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          char buffer[8];
          std::snprintf(buffer, sizeof buffer, "\\u%04x", u);
          out += buffer;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string quoted(const std::string& s) {
  return "\"" + s + "\"";
}

std::string bounds_text(const OptionSpec& spec) {
  if (spec.min && spec.max) {
    return cat("in ", spec.min_exclusive ? "(" : "[", format_bound(*spec.min), ", ", format_bound(*spec.max),
               spec.max_exclusive ? ")" : "]");
  }
  if (spec.min) return cat(spec.min_exclusive ? "> " : ">= ", format_bound(*spec.min));
  if (spec.max) return cat(spec.max_exclusive ? "< " : "<= ", format_bound(*spec.max));
  return "";
}

bool in_bounds(const OptionSpec& spec, double x) {
  if (spec.min && (spec.min_exclusive ? !(x > *spec.min) : !(x >= *spec.min))) return false;
  if (spec.max && (spec.max_exclusive ? !(x < *spec.max) : !(x <= *spec.max))) return false;
  return true;
}

std::optional<bool> parse_bool(const std::string& text) {
  std::string t = lower(text);
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  return std::nullopt;
}

// Type-level parse of the text form (no bounds / path / checker).
OptionValue parse_text(const OptionSpec& spec, const std::string& raw, std::string& error) {
  const std::string text = trim(raw);
  switch (spec.type) {
    case OptionType::boolean: {
      if (auto b = parse_bool(text)) return *b;
      error = "not a boolean";
      return {};
    }
    case OptionType::integer: {
      std::string digits = !text.empty() && text[0] == '+' ? text.substr(1) : text;
      int64_t value = 0;
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
      if (ec == std::errc::result_out_of_range) {
        error = "too large for an integer";
        return {};
      }
      if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
        error = "not an integer";
        return {};
      }
      return value;
    }
    case OptionType::real: {
      std::string digits = !text.empty() && text[0] == '+' ? text.substr(1) : text;
      double value = 0;
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
      if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
        error = "not a number";
        return {};
      }
      if (!std::isfinite(value)) {
        error = "not a finite number";
        return {};
      }
      return value;
    }
    case OptionType::choice: {
      const std::string key = lower(text);
      for (const auto& choice : spec.choices) {
        if (lower(choice) == key) return choice;
      }
      for (const auto& [alias, target] : spec.choice_aliases) {
        if (lower(alias) == key) return target;
      }
      std::vector<std::string> candidates = spec.choices;
      for (const auto& alias : spec.choice_aliases) candidates.push_back(alias.first);
      std::string hint = closest_match(text, candidates);
      error = hint.empty() ? "not a supported value" : cat("not a supported value (did you mean ", hint, "?)");
      return {};
    }
    case OptionType::string:
    case OptionType::path:
      if (text.empty()) {
        error = "empty";
        return {};
      }
      return text;
    case OptionType::list: {
      std::vector<std::string> items;
      size_t start = 0;
      while (true) {
        size_t comma = text.find(',', start);
        std::string item = trim(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (item.empty()) {
          error = "an empty item in the list";
          return {};
        }
        items.push_back(item);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      return items;
    }
  }
  error = "unsupported option type";
  return {};
}

// Bounds, paths and the option's own checker on a parsed value; "" when fine.
std::string check_value(const OptionSpec& spec, const OptionValue& value, bool check_paths) {
  if (std::holds_alternative<std::monostate>(value)) return "";
  if (const auto* i = std::get_if<int64_t>(&value); i && !in_bounds(spec, static_cast<double>(*i)))
    return "out of range";
  if (const auto* d = std::get_if<double>(&value); d && !in_bounds(spec, *d)) return "out of range";
  if (spec.type == OptionType::path && check_paths && spec.path_check != PathCheck::none) {
    const std::string& path = std::get<std::string>(value);
    std::error_code ec;
    fs::file_status status = fs::status(path, ec);
    if (!fs::exists(status)) return "no such file or folder";
    if (spec.path_check == PathCheck::file && !fs::is_regular_file(status)) return "not a file";
    if (spec.path_check == PathCheck::directory && !fs::is_directory(status)) return "not a folder";
  }
  if (spec.check) return spec.check(value);
  return "";
}

// Paths are kept absolute and normalised, so that a saved config means the same from any folder.
OptionValue normalise(const OptionSpec& spec, OptionValue value) {
  if (spec.type != OptionType::path || !std::holds_alternative<std::string>(value)) return value;
  std::error_code ec;
  fs::path absolute = fs::absolute(std::get<std::string>(value), ec);
  if (ec) return value;
  std::string text = absolute.lexically_normal().string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

// `PARAMS_X="v"`, `--x "v"`, `x = v in FILE`.
std::string given_text(Source source, const std::string& origin, const std::string& raw, const std::string& name,
                       const std::string& file) {
  switch (source) {
    case Source::env: return cat(origin, "=", quoted(raw));
    case Source::cli: return cat(origin, " ", quoted(raw));
    case Source::file: return cat(name, " = ", raw, " in ", file);
    case Source::default_value: return cat(name, " (default ", quoted(raw), ")");
  }
  return origin;
}

}  // namespace detail

using namespace detail;

// ---- OptionSpec -------------------------------------------------------------------------------

std::string OptionSpec::flag_name() const {
  if (!has_flag) return "";
  if (!flag.empty()) return flag;
  if (positional) return name;
  std::string out = "--" + name;
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

std::string OptionSpec::env_name() const {
  return has_env ? env : "";
}

OptionValue OptionSpec::shown(const OptionValue& value) const {
  const auto* text = std::get_if<std::string>(&value);
  return url_secrets && text != nullptr ? OptionValue(redact_url(*text)) : value;
}

std::string OptionSpec::shown(const std::string& raw) const {
  return url_secrets ? redact_url(raw) : raw;
}

std::string OptionSpec::allowed_text() const {
  if (!allowed.empty()) return allowed;
  std::string bounds = bounds_text(*this);
  switch (type) {
    case OptionType::boolean: return "true or false (also 1/0, yes/no, on/off)";
    case OptionType::integer: return bounds.empty() ? "an integer" : "an integer " + bounds;
    case OptionType::real: return bounds.empty() ? "a number" : "a number " + bounds;
    case OptionType::choice: {
      std::string text = "one of " + join(choices, ", ");
      if (!choice_aliases.empty()) {
        std::vector<std::string> aliases;
        for (const auto& [alias, target] : choice_aliases) aliases.push_back(alias + " = " + target);
        text += " (also " + join(aliases, ", ") + ")";
      }
      return text + "; any case";
    }
    case OptionType::path:
      switch (path_check) {
        case PathCheck::file: return "an existing file";
        case PathCheck::directory: return "an existing folder";
        case PathCheck::exists: return "an existing file or folder";
        case PathCheck::none: return "a path";
      }
      return "a path";
    case OptionType::string: return "text";
    case OptionType::list: return "a comma-separated list (a TOML array in a file)";
  }
  return "";
}

const char* to_string(Source source) {
  switch (source) {
    case Source::default_value: return "default";
    case Source::file: return "file";
    case Source::env: return "env";
    case Source::cli: return "cli";
  }
  return "?";
}

// ---- OptionTable ------------------------------------------------------------------------------

OptionTable::OptionTable(std::string command, std::string env_prefix, std::vector<Group> groups,
                         std::vector<OptionSpec> specs)
    : command_(std::move(command)),
      env_prefix_(std::move(env_prefix)),
      groups_(std::move(groups)),
      specs_(std::move(specs)) {
  std::set<std::string> names, flags, envs, group_ids;
  for (const auto& g : groups_) group_ids.insert(g.id);
  bool bound = false;
  for (auto& spec : specs_) {
    if (spec.has_env && spec.env.empty()) {
      if (env_prefix_.empty())
        spec.has_env = false;
      else
        spec.env = env_prefix_ + upper(spec.name);
    }
    if (spec.apply) bound = true;
  }
  for (const auto& spec : specs_) {
    auto problem = [&](auto&&... what) { fail("option table ", command_, ": option ", spec.name, " ", what...); };
    if (!names.insert(spec.name).second) problem("is listed twice");
    if (group_ids.count(spec.group) == 0) problem("has an unknown group \"", spec.group, "\"");
    if (group_ids.count(spec.name) != 0) problem("has the name of a group (ambiguous in TOML)");
    if (spec.has_flag && !flags.insert(spec.flag_name()).second) problem("uses the flag ", spec.flag_name(), " twice");
    std::vector<std::string> vars = spec.env_aliases;
    if (spec.has_env) vars.push_back(spec.env_name());
    for (const auto& var : vars) {
      if (!envs.insert(var).second) problem("uses the variable ", var, ", which is used twice");
    }
    if (spec.type == OptionType::choice && spec.choices.empty()) problem("lists no choices");
    if (spec.repeatable && spec.type != OptionType::list) problem("is repeatable but not a list");
    if (spec.secret && (spec.has_flag || spec.from_file))
      problem("is secret, so it may come from the environment only (a flag shows in ps, a file gets copied)");
    if (spec.positional && !spec.has_flag) problem("is positional but has no command-line form");
    if (bound && !spec.config_file) {
      if (!spec.apply) problem("has no setter (every option of a bound table says where its value goes)");
      if (settings_type_ == typeid(void)) settings_type_ = spec.settings_type;
      if (spec.settings_type != settings_type_) problem("sets another struct than the table's other options");
    }
    if (!spec.default_text.empty()) {
      std::string error;
      OptionValue value = parse_text(spec, spec.default_text, error);
      if (error.empty()) error = check_value(spec, value, false);
      if (!error.empty()) problem("has a bad default \"", spec.default_text, "\": ", error);
    }
  }
}

const OptionSpec* OptionTable::find(const std::string& name) const {
  for (const auto& spec : specs_) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

const OptionSpec& OptionTable::at(const std::string& name) const {
  const OptionSpec* spec = find(name);
  if (spec == nullptr) fail("internal: the ", command_, " options have no option named ", name);
  return *spec;
}

const OptionSpec* OptionTable::find_env(const std::string& var) const {
  for (const auto& spec : specs_) {
    if (spec.has_env && spec.env_name() == var) return &spec;
    if (std::find(spec.env_aliases.begin(), spec.env_aliases.end(), var) != spec.env_aliases.end()) return &spec;
  }
  return nullptr;
}

std::vector<std::string> OptionTable::names() const {
  std::vector<std::string> out;
  for (const auto& spec : specs_) out.push_back(spec.name);
  return out;
}

std::vector<std::string> OptionTable::env_names() const {
  std::vector<std::string> out;
  for (const auto& spec : specs_) {
    if (spec.has_env) out.push_back(spec.env_name());
    out.insert(out.end(), spec.env_aliases.begin(), spec.env_aliases.end());
  }
  return out;
}

// ---- values -----------------------------------------------------------------------------------

OptionValue parse_option_text(const OptionSpec& spec, const std::string& text, std::string& error) {
  error.clear();
  OptionValue value = parse_text(spec, text, error);
  if (error.empty()) error = check_value(spec, value, true);
  if (!error.empty()) return {};
  return normalise(spec, std::move(value));
}

std::string format_toml_value(const OptionValue& value) {
  if (std::holds_alternative<std::monostate>(value)) return "(unset)";
  if (const auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (const auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return format_real(*d);
  if (const auto* s = std::get_if<std::string>(&value)) return toml_string(*s);
  std::vector<std::string> items;
  for (const auto& item : std::get<std::vector<std::string>>(value)) items.push_back(toml_string(item));
  return "[" + join(items, ", ") + "]";
}

std::string format_plain_value(const OptionValue& value) {
  struct Visitor {
    std::string operator()(std::monostate) const { return "(unset)"; }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(int64_t v) const { return std::to_string(v); }
    // Shortest round-trip digits, fixed or scientific where Python's repr switches (kohya's metadata is str()).
    std::string operator()(double v) const {
      char buffer[400];
      const double magnitude = std::fabs(v);
      const bool fixed = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e16);
      auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, v,
                                     fixed ? std::chars_format::fixed : std::chars_format::scientific);
      return std::string(buffer, end);
    }
    std::string operator()(const std::string& v) const { return v; }
    std::string operator()(const std::vector<std::string>& v) const { return join(v, ","); }
  };
  return std::visit(Visitor{}, value);
}

EnvMap environment() {
  EnvMap out;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string text = *entry;
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    out.emplace(text.substr(0, eq), text.substr(eq + 1));
  }
  return out;
}

// ---- ResolvedConfig ---------------------------------------------------------------------------

ResolvedConfig::ResolvedConfig(const OptionTable* table, std::map<std::string, ResolvedOption> values, std::string file,
                               std::vector<std::string> warnings)
    : table_(table), values_(std::move(values)), file_(std::move(file)), warnings_(std::move(warnings)) {}

const ResolvedOption& ResolvedConfig::option(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) fail("internal: the ", table_->command(), " options have no option named ", name);
  return it->second;
}

bool ResolvedConfig::changed(const std::string& name) const {
  const ResolvedOption& o = option(name);
  return !(o.value == o.fallback);
}

bool ResolvedConfig::is_set(const std::string& name) const {
  return !std::holds_alternative<std::monostate>(option(name).value);
}

namespace {
template <typename T>
const T& typed(const ResolvedConfig& config, const std::string& name, const char* type) {
  const OptionValue& value = config.option(name).value;
  if (const T* v = std::get_if<T>(&value)) return *v;
  if (std::holds_alternative<std::monostate>(value)) fail("internal: option ", name, " is unset (read it with find_*)");
  fail("internal: option ", name, " is not ", type);
}
}  // namespace

bool ResolvedConfig::get_bool(const std::string& name) const {
  return typed<bool>(*this, name, "a boolean");
}
int64_t ResolvedConfig::get_int(const std::string& name) const {
  return typed<int64_t>(*this, name, "an integer");
}
double ResolvedConfig::get_real(const std::string& name) const {
  return typed<double>(*this, name, "a number");
}
const std::string& ResolvedConfig::get_string(const std::string& name) const {
  return typed<std::string>(*this, name, "a string");
}
const std::vector<std::string>& ResolvedConfig::get_list(const std::string& name) const {
  return typed<std::vector<std::string>>(*this, name, "a list");
}
std::optional<int64_t> ResolvedConfig::find_int(const std::string& name) const {
  return is_set(name) ? std::optional<int64_t>(get_int(name)) : std::nullopt;
}
std::optional<double> ResolvedConfig::find_real(const std::string& name) const {
  return is_set(name) ? std::optional<double>(get_real(name)) : std::nullopt;
}
std::optional<std::string> ResolvedConfig::find_string(const std::string& name) const {
  return is_set(name) ? std::optional<std::string>(get_string(name)) : std::nullopt;
}

std::string ResolvedConfig::where(const std::string& name) const {
  const ResolvedOption& o = option(name);
  switch (o.source) {
    case Source::default_value: {
      const OptionSpec& spec = table_->at(name);
      if (!spec.seed_source.empty() && !std::holds_alternative<std::monostate>(o.value))
        return "the seed's default, " + spec.seed_source;
      return o.origin.empty() ? "default" : "default, " + o.origin;
    }
    case Source::file: return "file " + file_;
    case Source::env: return "env " + o.origin;
    case Source::cli: return "cli " + o.origin;
  }
  return "";
}

std::string ResolvedConfig::describe(const std::string& name) const {
  const ResolvedOption& o = option(name);
  if (table_->at(name).secret) return o.source == Source::default_value ? name : cat(o.origin, " (hidden)");
  const OptionSpec& spec = table_->at(name);
  if (o.source == Source::default_value) return cat(name, " (default ", format_toml_value(spec.shown(o.value)), ")");
  return given_text(o.source, o.origin, spec.shown(o.raw), name, file_);
}

void ResolvedConfig::bind_into(void* settings, std::type_index type) const {
  if (type != table_->settings_type())
    fail("internal: the ", table_->command(), " options set ", table_->settings_type().name(), ", not ", type.name());
  for (const auto& spec : table_->specs()) {
    const ResolvedOption& o = option(spec.name);
    if (!spec.apply || std::holds_alternative<std::monostate>(o.value)) continue;
    spec.apply(settings, o, describe(spec.name));
  }
}

std::map<std::string, std::string> ResolvedConfig::value_texts() const {
  std::map<std::string, std::string> out;
  for (const auto& spec : table_->specs()) {
    const OptionValue& value = option(spec.name).value;
    out[spec.name] = spec.secret && !std::holds_alternative<std::monostate>(value)
                         ? "(hidden)"
                         : format_plain_value(spec.shown(value));
  }
  return out;
}

std::map<std::string, std::string> ResolvedConfig::metadata() const {
  std::map<std::string, std::string> out;
  for (const auto& spec : table_->specs()) {
    const OptionValue& value = option(spec.name).value;
    if (spec.secret || std::holds_alternative<std::monostate>(value)) continue;
    const bool* flag = std::get_if<bool>(&value);
    for (const auto& key : spec.metadata_keys)
      out[key] = flag ? (*flag ? "True" : "False") : format_plain_value(spec.shown(value));
  }
  return out;
}

std::string ResolvedConfig::print() const {
  std::string out;
  for (const auto& spec : table_->specs()) {
    if (spec.secret) continue;  // never printed (--help-env lists it)
    out += cat(spec.name, " = ", format_toml_value(spec.shown(option(spec.name).value)),
               "  (source: ", where(spec.name), ")\n");
  }
  return out;
}

std::string ResolvedConfig::to_toml() const {
  std::string out = cat("# fluxtrain ", table_->command(),
                        " configuration, resolved (command line > environment > file > defaults).\n",
                        "# Read it back with: fluxtrain ", table_->command(), " --config FILE\n");
  for (const auto& group : table_->groups()) {
    std::string body;
    for (const auto& spec : table_->specs()) {
      if (spec.group != group.id || !spec.from_file) continue;
      const ResolvedOption& o = option(spec.name);
      if (std::holds_alternative<std::monostate>(o.value)) {
        body += cat("# ", spec.name, " =  (unset)\n");
        continue;
      }
      body += cat(spec.name, " = ", format_toml_value(spec.shown(o.value)));
      if (o.source != Source::default_value) body += "  # " + where(spec.name);
      body += "\n";
    }
    if (!body.empty()) out += cat("\n[", group.id, "]  # ", group.title, "\n", body);
  }
  return out;
}

}  // namespace fluxtrain::app
