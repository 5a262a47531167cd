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

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <typeindex>
#include <variant>
#include <vector>

#include "core/enum_names.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace fluxtrain::app {

enum class OptionType { boolean, integer, real, string, path, choice, list };

// What a path option must name.
enum class PathCheck { none, file, directory, exists };

// What a change of the option's value means for a run that resumes from a saved state:
//   breaking     it shapes the training: the changed run starts fresh in OUTPUT_PATH/run-<hash>
//   safe         the resumed run takes the new value (cadences, lengths, files, logging)
//   memory_only  it trades memory for speed and leaves every number as it is (checkpointing, prefetch):
//                the resumed run takes it, and it is left out of the run's hash
enum class ResumeRule { breaking, safe, memory_only };
constexpr std::array<EnumName<ResumeRule>, 3> enum_names(ResumeRule) {
  return {{{"breaking", ResumeRule::breaking}, {"safe", ResumeRule::safe}, {"memory-only", ResumeRule::memory_only}}};
}

// An unset option holds monostate (options without a default); otherwise bool for boolean, int64_t for
// integer, double for real, std::string for string/path/choice, std::vector<std::string> for list.
using OptionValue = std::variant<std::monostate, bool, int64_t, double, std::string, std::vector<std::string>>;

struct ResolvedOption;
// Where a resolved value goes: writes it into the command's settings struct (`settings` points to one of
// the table's settings type). `described` is how the user gave it (ResolvedConfig::describe), for
// settings that carry their origin into later messages. Only called for set values.
using OptionApply = std::function<void(void* settings, const ResolvedOption& option, const std::string& described)>;
// Reads the field back from a settings struct (the default-agreement test and --print-config of a struct).
using OptionRead = std::function<OptionValue(const void* settings)>;
// A default rule (OptionSpec::default_rule) reads every option's resolved value by name and gives the
// default (monostate = unset) and why, or nullopt for default_text.
using ResolvedValues = std::map<std::string, ResolvedOption>;
using RuleResult = std::optional<std::pair<OptionValue, std::string>>;
using DefaultRule = std::function<RuleResult(const ResolvedValues&)>;

struct OptionSpec {
  std::string name;  // canonical snake_case name; also the TOML key
  OptionType type = OptionType::string;
  std::string default_text;  // parsed like a value from the environment; "" = unset by default
  std::string help;
  std::string group;                     // an id from the table's group list
  std::string flag;                      // "" = "--" + name with '_' -> '-'
  std::string env;                       // "" = the table's prefix + upper-case name (when has_env)
  bool has_flag = true;                  // false: environment only (secrets such as HF_TOKEN)
  bool has_env = true;                   // false: command line and file only
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
  bool positional = false;   // command line: a positional argument rather than a flag
  bool repeatable = false;   // list: every occurrence of the flag adds an item (--lora A --lora B)
  bool required = false;     // resolution fails when no source sets it
  bool secret = false;       // the value is never printed (--print-config, messages, saved configs)
  // The value may be a URL with a user:password or a signed query (DATASET_NAME): everything that
  // prints or records it (messages, --print-config, config.toml, training states, LoRA metadata) shows
  // it through redact_url (core/strings.h); only the setting itself gets the real text.
  bool url_secrets = false;
  ResumeRule resume = ResumeRule::breaking;
  // The value is per rank of a data-parallel run (a batch size): the run's identity (its hash, the resume
  // check, the values a state records) takes it times the number of ranks.
  bool per_rank = false;
  std::vector<std::string> metadata_keys;  // the LoRA file's ss_* keys that record the value
  // A default taken from the seed's train-flux.sh rather than kohya's: where the seed sets it, and kohya's
  // default, which the option would otherwise have (the reference's "Defaults that follow the seed").
  std::string seed_source;
  std::string kohya_default;
  // A default that depends on the resolved values of other options (the seed's Prodigy arguments apply
  // to Prodigy only; its epoch count yields to a given max_train_steps): returns the default to use
  // (monostate = unset) and why, or nullopt for default_text. Applied to options no source sets, after
  // every other value is known (rules may read each other's results). `default_rule_text` says it in
  // words, for the reference.
  DefaultRule default_rule;
  std::string default_rule_text;

  std::type_index settings_type = typeid(void);  // the struct `apply` writes into
  OptionApply apply;                             // where the value goes; empty only for the config-file option
  OptionRead read;                               // optional

  std::string flag_name() const;  // "" without a flag; the argument's name for a positional one
  std::string env_name() const;   // "" without a variable
  std::string allowed_text() const;
  // A value or raw text as it may be shown and recorded (redacted when url_secrets).
  OptionValue shown(const OptionValue& value) const;
  std::string shown(const std::string& raw) const;
};

enum class Source { default_value, file, env, cli };
const char* to_string(Source source);

class OptionTable {
 public:
  struct Group {
    std::string id;     // also the TOML table name
    std::string title;  // for help and the reference
  };
  // Checks the table itself (unique names, flags and variables; known groups; parseable defaults; one
  // settings type; a setter on every option) and throws Error on a mistake in it. Options without an
  // explicit variable get `env_prefix` + upper-case name; variables that start with the prefix but name
  // no option are warned about (a typo); "" = no derived variables and no such warnings.
  OptionTable(std::string command, std::string env_prefix, std::vector<Group> groups, std::vector<OptionSpec> specs);
  // The same with the seed's prefix, PARAMS_.
  OptionTable(std::string command, std::vector<Group> groups, std::vector<OptionSpec> specs)
      : OptionTable(std::move(command), "PARAMS_", std::move(groups), std::move(specs)) {}

  const std::string& command() const { return command_; }
  const std::string& env_prefix() const { return env_prefix_; }
  std::type_index settings_type() const { return settings_type_; }
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
  std::string env_prefix_;
  std::vector<Group> groups_;
  std::vector<OptionSpec> specs_;
  std::type_index settings_type_ = typeid(void);
};

struct ResolvedOption {
  OptionValue value;
  Source source = Source::default_value;
  std::string origin;  // flag, variable name or "<file>" as the value came from; "" for defaults
  std::string raw;     // the text as given ("" for defaults)
  // The default of this option in this resolution: default_text, or what its default_rule gave.
  OptionValue fallback;
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
  // "has no effect" checks ask this rather than given()); a rule's default counts as the default.
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
  // `(unset)`; secrets are left out.
  std::string print() const;
  // The resolved values as a TOML file (one table per group; unset options as comments) which, read
  // back with --config, resolves to the same values.
  std::string to_toml() const;

  const std::string& config_file() const { return file_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

  // The command's settings: a default-constructed Settings with every set value applied through its
  // option's setter, in table order. Settings must be the table's settings type.
  template <typename Settings>
  Settings bind() const {
    Settings settings{};
    bind_into(&settings, typeid(Settings));
    return settings;
  }
  void bind_into(void* settings, std::type_index type) const;

  // The value of every option as text (lists comma-joined, numbers in shortest round-trip form, secrets
  // as "(hidden)"): what a training state records to compare a restarted run's options with.
  std::map<std::string, std::string> value_texts() const;
  // The LoRA file's ss_* metadata of the options that declare keys: booleans True/False (kohya writes
  // Python's), other values as value_texts() gives them.
  std::map<std::string, std::string> metadata() const;

 private:
  const OptionTable* table_;
  std::map<std::string, ResolvedOption> values_;
  std::string file_;
  std::vector<std::string> warnings_;
};

struct ResolveInputs {
  ResolveInputs() = default;
  ResolveInputs(CliValues cli_values, EnvMap environment, std::map<std::string, std::vector<std::string>> items = {})
      : cli(std::move(cli_values)), env(std::move(environment)), cli_items(std::move(items)) {}
  CliValues cli;
  EnvMap env;
  // Repeatable options given on the command line: one item per occurrence (CliBinding::items()).
  std::map<std::string, std::vector<std::string>> cli_items;
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
// A value as plain text: true, 16, 1, text, a,b (numbers in shortest round-trip form); "(unset)".
std::string format_plain_value(const OptionValue& value);

// The environment-variable reference of a table: "markdown" (one table per group: variable, flag,
// default, allowed, description) or "text".
std::string help_env(const OptionTable& table, const std::string& format);

// Registers every option of `table` that has a flag on a CLI11 (sub)command: one flag (or positional
// argument) each, with the help text, the variable name and the default, in a help section per group. A
// boolean flag may stand alone (= true) or take a value (`--split-qkv false`; `--json=false` in a command
// with positional arguments, whose next argument may be one); a repeated flag keeps its last value, a
// repeatable one every value. CLI11 writes into the binding while it parses, so the binding must outlive
// the parse; read values() / items() afterwards.
class CliBinding {
 public:
  CliBinding(CLI::App& app, const OptionTable& table);
  CliBinding(const CliBinding&) = delete;
  CliBinding& operator=(const CliBinding&) = delete;
  CliValues values() const;                                       // the flags given on the command line
  std::map<std::string, std::vector<std::string>> items() const;  // repeatable flags, one item per use
  ResolveInputs inputs(EnvMap env) const { return {values(), std::move(env), items()}; }

 private:
  std::vector<std::pair<std::string, CLI::Option*>> options_;
  std::map<std::string, std::string> storage_;  // std::map nodes never move
  std::map<std::string, std::vector<std::string>> item_storage_;
};

}  // namespace fluxtrain::app
