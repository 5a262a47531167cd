// The text forms of option values, shared by the option table (options.cpp) and its resolution
// (option_resolve.cpp), and network_args (train_network_options.cpp); internal to src/app/*option*.
#pragma once

#include <string>

#include "app/options.h"

namespace fluxtrain::app::detail {

// Type-level parse of the text form (no bounds / path / checker); the reason in `error` when bad.
OptionValue parse_text(const OptionSpec& spec, const std::string& raw, std::string& error);
// Bounds, paths and the option's own checker on a parsed value; "" when fine.
std::string check_value(const OptionSpec& spec, const OptionValue& value, bool check_paths);
// Paths made absolute and normal, so that a saved config means the same from any folder.
OptionValue normalise(const OptionSpec& spec, OptionValue value);
// `PARAMS_X="v"`, `--x "v"`, `x = v in FILE`, `x (default "v")`.
std::string given_text(Source source, const std::string& origin, const std::string& raw, const std::string& name,
                       const std::string& file);
// Shortest text that reads back as the same double, always with a '.' or an exponent (TOML float).
std::string format_real(double value);
// A TOML basic string: "text" with escapes.
std::string toml_string(const std::string& s);

}  // namespace fluxtrain::app::detail
