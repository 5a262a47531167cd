// The parts of the train option table kept in files of their own (train_options.cpp puts the table together,
// in this order: ..., output, network and EMA, optimizer, ..., distributed, ...).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "app/option_builder.h"
#include "app/train_options.h"

namespace fluxtrain::app {

// --- network (LoRA, LyCORIS, text encoders) and EMA: train_network_options.cpp
std::vector<OptionSpec> network_specs();
// --- distributed (torchrun's variables, --nproc, the process group): train_distributed_options.cpp
std::vector<OptionSpec> distributed_specs();

// A whole number >= min, or "auto": "" when fine, else `what` ("a block count") in the complaint.
std::function<std::string(const OptionValue&)> count_or_auto(int64_t min, std::string what);

}  // namespace fluxtrain::app
