// A typed option table: one list of options drives the CLI flags, the environment variables and the
// TOML keys of a command, so the three never drift (docs/configuration.md).
//
// Every option has a canonical snake_case name (`learning_rate`), which is also its TOML key; a flag
// (`--learning-rate`) and an environment variable (`PARAMS_LEARNING_RATE`, or a special name such as
// `BASE_MODEL`) derived from it unless given. Resolution reads the values given on the command line, in
// the environment and in a TOML file and keeps, per option, the value of the highest-ranked source:
// command line > environment > file > default. Every value is parsed strictly and checked against the
// option's type, range, allowed values and checker; all problems are collected and reported together in
// one Error, each naming the flag / variable / key the value came from, the value, and what is allowed.
//
// TOML files hold the canonical names, either at the top level or inside a table named after the
// option's group (`[optimizer] learning_rate = 1.0`); to_toml() writes the grouped form.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace fluxtrain::app {

enum class OptionType { boolean, integer, real, string, path, choice, list };

// What a path option must name.
enum class PathCheck { none, file, directory, exists };

// An unset option holds monostate (options without a default); otherwise bool for boolean, int64_t for
// integer, double for real, std::string for string/path/choice, std::vector<std::string> for list.
using OptionValue = std::variant<std::monostate, bool, int64_t, double, std::string, std::vector<std::string>>;

struct OptionSpec {
  std::string name;  // canonical snake_case name; also the TOML key
  OptionType type = OptionType::string;
  std::string default_text;  // parsed like a value from the environment; "" = unset by default
  std::string help;
  std::string group;                     // an id from the table's group list
  std::string flag;                      // "" = "--" + name with '_' -> '-'
  std::string env;                       // "" = "PARAMS_" + upper-case name
  std::vector<std::string> env_aliases;  // further accepted variable names (kohya spellings)
  // choice: the allowed values in their canonical spelling (matched case-insensitively), and extra
  // spellings mapped to one of them ({"flux", "flux-dev"}).
  std::vector<std::string> choices;
  std::vector<std::pair<std::string, std::string>> choice_aliases;
  // integer / real: inclusive or exclusive bounds.
  std::optional<double> min, max;
  bool min_exclusive = false, max_exclusive = false;
  PathCheck path_check = PathCheck::none;
  // More checks on a parsed, set value: returns "" when it is fine, else what is wrong with it.
  std::function<std::string(const OptionValue&)> check;
  // What is allowed, for messages and the reference; derived from type / bounds / choices when "".
  std::string allowed;
  // A string option given as a TOML array of strings is joined with this separator (kohya writes
  // optimizer_args as a list: ["decouple=True", "d_coef=2"]); empty = arrays are rejected.
  std::string toml_array_join;
  bool from_file = true;     // may be set in the TOML file
  bool config_file = false;  // this option names the TOML file itself (read from the CLI or env only)

  std::string flag_name() const;
  std::string env_name() const;
  std::string allowed_text() const;
};

enum class Source { default_value, file, env, cli };
const char* to_string(Source source);

class OptionTable {
 public:
  struct Group {
    std::string id;     // also the TOML table name
    std::string title;  // for help and the reference
  };
  // Checks the table itself (unique names, flags and variables; known groups; parseable defaults) and
  // throws Error on a mistake in it.
  OptionTable(std::string command, std::vector<Group> groups, std::vector<OptionSpec> specs);

  const std::string& command() const { return command_; }
  const std::vector<Group>& groups() const { return groups_; }
  const std::vector<OptionSpec>& specs() const { return specs_; }
  const OptionSpec* find(const std::string& name) const;
  const OptionSpec& at(const std::string& name) const;  // throws Error for an unknown name
  // The option read from environment variable `var` (its name or an alias), or nullptr.
  const OptionSpec* find_env(const std::string& var) const;
  std::vector<std::string> names() const;
  std::vector<std::string> env_names() const;  // every variable name, aliases included

 private:
  std::string command_;
  std::vector<Group> groups_;
  std::vector<OptionSpec> specs_;
};

struct ResolvedOption {
  OptionValue value;
  Source source = Source::default_value;
  std::string origin;  // flag, variable name or "<file>" as the value came from; "" for defaults
  std::string raw;     // the text as given ("" for defaults)
};

// The values given on the command line: option name -> text as typed ("" for a bare boolean flag).
using CliValues = std::map<std::string, std::string>;
using EnvMap = std::map<std::string, std::string>;

// The process environment as a map.
EnvMap environment();

class ResolvedConfig {
 public:
  ResolvedConfig(const OptionTable* table, std::map<std::string, ResolvedOption> values, std::string file,
                 std::vector<std::string> warnings);

  const OptionTable& table() const { return *table_; }
  const ResolvedOption& option(const std::string& name) const;
  bool is_set(const std::string& name) const;
  Source source(const std::string& name) const { return option(name).source; }
  // True when the value came from the user (CLI, environment or file) rather than the default.
  bool given(const std::string& name) const { return source(name) != Source::default_value; }
  // True when the value differs from the option's default (a saved config repeats every default, so
  // "has no effect" checks ask this rather than given()).
  bool changed(const std::string& name) const;

  // Typed accessors; an unset option or a type mismatch is a programming error (Error naming it).
  bool get_bool(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  double get_real(const std::string& name) const;
  const std::string& get_string(const std::string& name) const;  // string, path or choice
  const std::vector<std::string>& get_list(const std::string& name) const;
  std::optional<int64_t> find_int(const std::string& name) const;
  std::optional<double> find_real(const std::string& name) const;
  std::optional<std::string> find_string(const std::string& name) const;

  // Where the value came from, for --print-config: "default", "cli --network-dim",
  // "env PARAMS_NETWORK_DIM", "file /run/config.toml".
  std::string where(const std::string& name) const;
  // The setting as the user wrote it, for messages about combinations: `PARAMS_SPLIT_QKV=true`,
  // `--split-qkv true`, `split_qkv = true in /run/config.toml`, `split_qkv (default false)`.
  std::string describe(const std::string& name) const;

  // One line per option: `name = value  (source: env PARAMS_X)`; values in TOML syntax, unset ones as
  // `(unset)`.
  std::string print() const;
  // The resolved values as a TOML file (one table per group; unset options as comments) which, read
  // back with --config, resolves to the same values.
  std::string to_toml() const;

  const std::string& config_file() const { return file_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  const OptionTable* table_;
  std::map<std::string, ResolvedOption> values_;
  std::string file_;
  std::vector<std::string> warnings_;
};

struct ResolveInputs {
  CliValues cli;
  EnvMap env;
};

// Resolves every option of `table` (command line > environment > TOML file > default). The TOML file is
// named by the table's config_file option (from the CLI or the environment). Unknown PARAMS_* variables
// become warnings naming the closest known variable; unknown TOML keys and every bad value are errors,
// all reported at once in one Error (one problem per line).
ResolvedConfig resolve(const OptionTable& table, const ResolveInputs& inputs);

// Throws one Error holding every problem: the problem itself when there is one, else "N configuration
// errors:" and one indented item per problem (continuation lines indented further). Nothing when empty.
void throw_errors(const std::vector<std::string>& errors);

// Parses one value of `spec` as text (the environment / command-line form): strict numbers, booleans
// true/false/1/0/yes/no/on/off (any case), choices case-insensitively; returns the reason it is bad in
// `error` (and monostate) instead of throwing. Exposed for tests and for commands that combine values.
OptionValue parse_option_text(const OptionSpec& spec, const std::string& text, std::string& error);

// A value in TOML syntax: true, 16, 1.0, "text", ["a", "b"].
std::string format_toml_value(const OptionValue& value);

// The environment-variable reference of a table: "markdown" (one table per group: variable, flag,
// default, allowed, description) or "text".
std::string help_env(const OptionTable& table, const std::string& format);

// Registers every option of `table` on a CLI11 (sub)command: one flag each, with the help text, the
// variable name and the default, in a help section per group. A boolean flag may stand alone (= true)
// or take a value (`--split-qkv false`); a repeated flag keeps its last value. CLI11 writes into the
// binding while it parses, so the binding must outlive the parse; read values() afterwards.
class CliBinding {
 public:
  CliBinding(CLI::App& app, const OptionTable& table);
  CliBinding(const CliBinding&) = delete;
  CliBinding& operator=(const CliBinding&) = delete;
  CliValues values() const;  // the flags given on the command line

 private:
  std::vector<std::pair<std::string, CLI::Option*>> options_;
  std::map<std::string, std::string> storage_;  // std::map nodes never move
};

}  // namespace fluxtrain::app
