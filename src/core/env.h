// Numbers from environment variables: unset or empty gives the fallback; anything else must parse
// completely and lie in [min, max], or an Error names the variable, its value and the range.
#pragma once

namespace fluxtrain::core {

int env_int(const char* name, int fallback, int min, int max);
double env_double(const char* name, double fallback, double min, double max);

}  // namespace fluxtrain::core
