// A prefix put before every log line (terminal and files): a rank's "[rank 1] " in data-parallel training.
// Set once, before other threads log.
#pragma once

#include <string>

namespace fluxtrain::log {

void set_prefix(const std::string& prefix);

}  // namespace fluxtrain::log
