// The option table's outward faces: the environment-variable reference (`--help-env`, text or
// markdown, docs/runpod.md and docs/configuration.md are generated from it) and the CLI11 flags.
#include <CLI/CLI.hpp>

#include <sstream>

#include "app/options.h"
#include "core/error.h"

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

std::string joined_choices(const std::vector<std::string>& choices) {
  std::string text;
  for (const auto& c : choices) text += (text.empty() ? "" : ",") + c;
  return text;
}

}  // namespace

// ---- reference and CLI ------------------------------------------------------------------------

std::string help_env(const OptionTable& table, const std::string& format) {
  auto variables = [](const OptionSpec& spec, bool markdown) {
    std::string q = markdown ? "`" : "";
    std::string text = q + spec.env_name() + q;
    for (const auto& alias : spec.env_aliases) text += " or " + q + alias + q;
    return text;
  };
  // Defaults as they are written in a variable.
  auto default_of = [](const OptionSpec& spec, bool markdown) {
    if (spec.default_text.empty()) return std::string("(unset)");
    return markdown ? "`" + spec.default_text + "`" : spec.default_text;
  };
  std::string out;
  if (format == "markdown") {
    for (const auto& group : table.groups()) {
      std::string rows;
      for (const auto& spec : table.specs()) {
        if (spec.group != group.id) continue;
        rows +=
            cat("| ", variables(spec, true), " | `", spec.flag_name(), "` | ", markdown_cell(default_of(spec, true)),
                " | ", markdown_cell(spec.allowed_text()), " | ", markdown_cell(spec.help), " |\n");
      }
      if (rows.empty()) continue;
      out += cat(out.empty() ? "" : "\n", "### ", group.title,
                 "\n\n| Variable | Flag | Default | Allowed | Description |\n", "|---|---|---|---|---|\n", rows);
    }
    return out;
  }
  if (format == "text") {
    for (const auto& group : table.groups()) {
      std::string rows;
      for (const auto& spec : table.specs()) {
        if (spec.group != group.id) continue;
        rows += cat("  ", variables(spec, false), "  (", spec.flag_name(), "; default ", default_of(spec, false),
                    ")\n      ", spec.help, "\n      allowed: ", spec.allowed_text(), "\n");
      }
      if (!rows.empty()) out += cat(out.empty() ? "" : "\n", group.title, ":\n", rows);
    }
    return out;
  }
  fail("--format \"", format, "\" is not a reference format; allowed: markdown, text");
}

CliBinding::CliBinding(CLI::App& app, const OptionTable& table) {
  for (const auto& spec : table.specs()) {
    std::string& target = storage_[spec.name];
    std::string description = cat(spec.help, " [", spec.env_name(), "; default ",
                                  spec.default_text.empty() ? "unset" : spec.default_text, "]");
    CLI::Option* option = app.add_option(spec.flag_name(), target, description);
    option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    std::string group = spec.group;
    for (const auto& g : table.groups()) {
      if (g.id == spec.group) group = g.title;
    }
    option->group(group);
    switch (spec.type) {
      case OptionType::boolean: option->expected(0, 1)->type_name("[BOOL]"); break;
      case OptionType::integer: option->type_name("INT"); break;
      case OptionType::real: option->type_name("NUMBER"); break;
      case OptionType::path: option->type_name("PATH"); break;
      case OptionType::list: option->type_name("LIST"); break;
      case OptionType::choice: option->type_name("{" + joined_choices(spec.choices) + "}"); break;
      case OptionType::string: option->type_name("TEXT"); break;
    }
    options_.emplace_back(spec.name, option);
  }
}

CliValues CliBinding::values() const {
  CliValues out;
  for (const auto& [name, option] : options_) {
    if (option->count() > 0) out[name] = storage_.at(name);
  }
  return out;
}

}  // namespace fluxtrain::app
