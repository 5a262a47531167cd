// The option table's outward faces: the environment-variable reference (`--help-env`, text or
// markdown, docs/runpod.md and docs/configuration.md are generated from it) and the CLI11 flags.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <sstream>

#include "app/options.h"
#include "core/error.h"
#include "core/strings.h"

namespace fluxtrain::app {

namespace {

std::string markdown_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n')
      out += ' ';
    else
      out += c;
  }
  return out;
}

std::string group_title(const OptionTable& table, const OptionSpec& spec) {
  for (const auto& g : table.groups()) {
    if (g.id == spec.group) return g.title;
  }
  return spec.group;
}

}  // namespace

// ---- reference and CLI ------------------------------------------------------------------------

std::string help_env(const OptionTable& table, const std::string& format) {
  auto variables = [](const OptionSpec& spec, bool markdown) {
    std::string q = markdown ? "`" : "";
    std::string text = spec.has_env ? q + spec.env_name() + q : "(none)";
    for (const auto& alias : spec.env_aliases) text += " or " + q + alias + q;
    return text;
  };
  auto flag_of = [](const OptionSpec& spec, bool markdown) {
    if (!spec.has_flag) return std::string(markdown ? "(none)" : "no flag");
    std::string flag = spec.positional ? cat(upper(spec.name), " (argument)") : spec.flag_name();
    if (spec.repeatable) flag += " (repeatable)";
    return markdown && !spec.positional ? "`" + flag + "`" : flag;
  };
  // Defaults as they are written in a variable.
  auto default_of = [](const OptionSpec& spec, bool markdown) {
    std::string text = spec.default_text.empty() ? std::string("(unset)")
                       : markdown                ? "`" + spec.default_text + "`"
                                                 : spec.default_text;
    if (!spec.default_rule_text.empty()) text += "; " + spec.default_rule_text;
    return spec.seed_source.empty() ? text : text + " (the seed's)";
  };
  std::string out;
  if (format == "markdown") {
    for (const auto& group : table.groups()) {
      std::string rows;
      for (const auto& spec : table.specs()) {
        if (spec.group != group.id) continue;
        rows += cat("| ", variables(spec, true), " | ", markdown_cell(flag_of(spec, true)), " | ",
                    markdown_cell(default_of(spec, true)), " | ", markdown_cell(spec.allowed_text()), " | ",
                    markdown_cell(spec.help), " |\n");
      }
      if (rows.empty()) continue;
      out += cat(out.empty() ? "" : "\n", "### ", group.title,
                 "\n\n| Variable | Flag | Default | Allowed | Description |\n", "|---|---|---|---|---|\n", rows);
    }
    std::string seed_rows;
    for (const auto& spec : table.specs()) {
      if (spec.seed_source.empty()) continue;
      seed_rows += cat("| ", variables(spec, true), " | ",
                       markdown_cell(spec.default_text.empty() ? std::string("(unset)") : "`" + spec.default_text + "`"),
                       spec.default_rule_text.empty() ? std::string() : "; " + markdown_cell(spec.default_rule_text),
                       " | ",
                       spec.kohya_default.empty()         ? std::string("(none)")
                       : spec.kohya_default.front() == '(' ? spec.kohya_default
                                                           : "`" + spec.kohya_default + "`",
                       " | ",
                       markdown_cell(spec.seed_source), " |\n");
    }
    if (!seed_rows.empty())
      out +=
          cat("\n### Defaults that follow the seed\n\n"
              "Where the seed's `train-flux.sh` sets a value, that value is the default, so a pod configured as "
              "the seed's walkthrough says (\"other options can be left at their defaults\") trains as the seed "
              "does; every other option keeps kohya's default.\n\n"
              "| Variable | Default | kohya's | Where the seed sets it |\n|---|---|---|---|\n",
              seed_rows);
    return out;
  }
  if (format == "text") {
    for (const auto& group : table.groups()) {
      std::string rows;
      for (const auto& spec : table.specs()) {
        if (spec.group != group.id) continue;
        rows += cat("  ", variables(spec, false), "  (", flag_of(spec, false), "; default ", default_of(spec, false),
                    ")\n      ", spec.help, "\n      allowed: ", spec.allowed_text(), "\n");
      }
      if (!rows.empty()) out += cat(out.empty() ? "" : "\n", group.title, ":\n", rows);
    }
    return out;
  }
  if (format == "json") {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& spec : table.specs()) {
      nlohmann::ordered_json o;
      o["name"] = spec.name;
      o["group"] = spec.group;
      o["flag"] = spec.flag_name();
      o["env"] = spec.env_name();
      o["env_aliases"] = spec.env_aliases;
      o["default"] = spec.default_text;
      if (!spec.default_rule_text.empty()) o["default_rule"] = spec.default_rule_text;
      if (!spec.seed_source.empty()) o["default_from_seed"] = spec.seed_source;
      o["allowed"] = spec.allowed_text();
      o["resume"] = std::string(name_of(spec.resume));
      o["metadata"] = spec.metadata_keys;
      o["positional"] = spec.positional;
      o["repeatable"] = spec.repeatable;
      o["required"] = spec.required;
      o["secret"] = spec.secret;
      o["in_file"] = spec.from_file;
      o["help"] = spec.help;
      list.push_back(o);
    }
    return list.dump(1) + "\n";
  }
  fail("--format \"", format, "\" is not a reference format; allowed: markdown, text, json");
}

CliBinding::CliBinding(CLI::App& app, const OptionTable& table) {
  // A boolean that takes its value from the next argument would swallow a positional one (`--json FILE`),
  // so with positional arguments a boolean's value needs `=`: `--json`, `--json=false`.
  const bool positionals = std::any_of(table.specs().begin(), table.specs().end(),
                                       [](const OptionSpec& spec) { return spec.positional && spec.has_flag; });
  for (const auto& spec : table.specs()) {
    if (!spec.has_flag) continue;
    std::string description = cat(spec.help, " [", spec.has_env ? spec.env_name() + "; " : std::string(), "default ",
                                  spec.default_text.empty() ? "unset" : spec.default_text, "]");
    CLI::Option* option = nullptr;
    if (positionals && spec.type == OptionType::boolean && !spec.positional) {
      option = app.add_flag(spec.flag_name() + "{true}", storage_[spec.name], description);
      option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)->group(group_title(table, spec));
      options_.emplace_back(spec.name, option);
      continue;
    } else if (spec.repeatable) {
      option = app.add_option(spec.flag_name(), item_storage_[spec.name], description);
      option->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    } else {
      option = app.add_option(spec.flag_name(), storage_[spec.name], description);
      option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
    option->group(group_title(table, spec));
    switch (spec.type) {
      case OptionType::boolean: option->expected(0, 1)->type_name("[BOOL]"); break;
      case OptionType::integer: option->type_name("INT"); break;
      case OptionType::real: option->type_name("NUMBER"); break;
      case OptionType::path: option->type_name("PATH"); break;
      case OptionType::list: option->type_name("LIST"); break;
      case OptionType::choice: option->type_name("{" + join(spec.choices, ",") + "}"); break;
      case OptionType::string: option->type_name("TEXT"); break;
    }
    options_.emplace_back(spec.name, option);
  }
}

CliValues CliBinding::values() const {
  CliValues out;
  for (const auto& [name, option] : options_) {
    if (option->count() > 0 && storage_.count(name) != 0) out[name] = storage_.at(name);
  }
  return out;
}

std::map<std::string, std::vector<std::string>> CliBinding::items() const {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& [name, option] : options_) {
    if (option->count() > 0 && item_storage_.count(name) != 0) out[name] = item_storage_.at(name);
  }
  return out;
}

}  // namespace fluxtrain::app
