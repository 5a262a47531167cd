// The parts of the train option table kept in files of their own (train_options.cpp puts the table together,
// in this order: ..., output, network and EMA, optimizer, ..., distributed, ...).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "app/option_builder.h"
#include "app/train_options.h"

namespace fluxtrain::app {

// The settings and options every part of the table fills.
using S = TrainSettings;
using T = train::TrainOptions;

// --- network (LoRA, LyCORIS, text encoders) and EMA: train_network_options.cpp
std::vector<OptionSpec> network_specs();
// kohya's network_args ("train_t5xxl=True algo=lokr factor=8"): each key's value becomes the default of
// the option it names (an option given itself wins; both given is an error of validate_train_config).
// Called on the whole table, once every option is in `specs`.
void apply_network_args(std::vector<OptionSpec>& specs);
// The keys network_args takes and the options they set (algo: network_type).
const std::vector<std::pair<std::string, std::string>>& network_arg_options();
// One item of network_args: its key, the option it sets, the value in that option's terms.
struct NetworkArg {
  std::string key, option, value;
};
// The items of a network_args value; throws Error naming a bad item.
std::vector<NetworkArg> network_arg_items(const std::string& args);
// --- distributed (torchrun's variables, --nproc, the process group): train_distributed_options.cpp
std::vector<OptionSpec> distributed_specs();

// A whole number >= min, or "auto": "" when fine, else `what` ("a block count") in the complaint.
std::function<std::string(const OptionValue&)> count_or_auto(int64_t min, std::string what);

}  // namespace fluxtrain::app
