// The option tables bind: every option of every command says where its value goes; a struct's member
// initialisers equal the table's defaults; values reach their fields typed (enums parsed once, the seed's
// typed optimizer settings stay typed); resume rules and metadata keys are declared on the options.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "app/commands.h"
#include "app/fetch_models_options.h"
#include "app/tool_options.h"
#include "app/train_options.h"
#include "core/error.h"

namespace fluxtrain::app {
namespace {

namespace fs = std::filesystem;

// Values equal as the option means them: numbers by value (an integer option may fill a double field),
// paths after the table's normalisation to absolute paths.
bool same(const OptionSpec& spec, const OptionValue& a, const OptionValue& b) {
  auto number = [](const OptionValue& v) -> std::optional<double> {
    if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
    if (const auto* d = std::get_if<double>(&v)) return *d;
    return std::nullopt;
  };
  if (number(a) && number(b)) return *number(a) == *number(b);
  if (spec.type == OptionType::path && std::holds_alternative<std::string>(a) && std::holds_alternative<std::string>(b))
    return fs::absolute(std::get<std::string>(a)).lexically_normal() ==
           fs::absolute(std::get<std::string>(b)).lexically_normal();
  return a == b;
}

// For every option with a reader and a fixed default, the default-constructed settings struct holds the default
// (`required` gives the options without which the table does not resolve).
template <typename Settings>
void expect_struct_defaults_match(const OptionTable& table, const CliValues& required = {}) {
  SCOPED_TRACE(table.command());
  EXPECT_TRUE(table.settings_type() == typeid(Settings));
  const Settings fresh{};
  const ResolvedConfig defaults = resolve(table, {required, {}});
  int compared = 0;
  for (const auto& spec : table.specs()) {
    // A default that depends on other options (default_rule) has no one struct value.
    if (!spec.read || spec.default_text.empty() || spec.default_rule) continue;
    EXPECT_TRUE(same(spec, spec.read(&fresh), defaults.option(spec.name).value))
        << spec.name << ": the struct says " << format_plain_value(spec.read(&fresh)) << ", the table "
        << spec.default_text;
    ++compared;
  }
  const bool any_default = std::any_of(table.specs().begin(), table.specs().end(),
                                       [](const OptionSpec& spec) { return !spec.default_text.empty(); });
  if (any_default) {
    EXPECT_GT(compared, 0);
  }
}

TEST(OptionBinding, StructInitialisersAreTheTableDefaults) {
  expect_struct_defaults_match<TrainSettings>(train_options());
  expect_struct_defaults_match<SampleSettings>(sample_options(), {{"out", "/tmp/o"}});
  expect_struct_defaults_match<MergeSettings>(merge_options(), {{"out", "/tmp/o"}, {"lora", "a"}});
  expect_struct_defaults_match<DemoSettings>(demo_options());
  expect_struct_defaults_match<TinySettings>(make_tiny_options(), {{"out", "/tmp/o"}});
  const fs::path file = fs::temp_directory_path() / "fluxtrain_option_binding.safetensors";
  std::ofstream(file) << "x";
  expect_struct_defaults_match<InspectSettings>(inspect_options(), {{"file", file.string()}});
  expect_struct_defaults_match<DatasetCommandSettings>(dataset_command_options());
  expect_struct_defaults_match<FetchCommandSettings>(fetch_command_options(), {{"dataset", "a/b"}});
  expect_struct_defaults_match<FetchModelsSettings>(fetch_models_options());
}

TEST(OptionBinding, EveryCommandHasABoundTable) {
  for (const CommandInfo& info : command_infos()) {
    const OptionTable& table = info.options();
    EXPECT_FALSE(table.settings_type() == typeid(void)) << info.name;
    for (const auto& spec : table.specs()) {
      if (!spec.config_file) {
        EXPECT_TRUE(static_cast<bool>(spec.apply)) << info.name << " " << spec.name;
      }
    }
  }
}

TEST(OptionBinding, AnUnboundOptionInABoundTableIsAMistakeInTheTable) {
  OptionSpec bound;
  bound.name = "rank";
  bound.type = OptionType::integer;
  bound.group = "g";
  bound.settings_type = typeid(InspectSettings);
  bound.apply = [](void*, const ResolvedOption&, const std::string&) {};
  OptionSpec loose = bound;
  loose.name = "rate";
  loose.apply = nullptr;
  try {
    OptionTable("t", {{"g", "G"}}, {bound, loose});
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rate has no setter"), std::string::npos) << e.what();
  }
  OptionSpec other = bound;
  other.name = "other";
  other.settings_type = typeid(MergeSettings);
  EXPECT_THROW(OptionTable("t", {{"g", "G"}}, {bound, other}), Error);
}

TEST(OptionBinding, ValuesReachTheirFieldsTyped) {
  ResolvedConfig c = resolve(train_options(), {{{"network_dim", "32"}, {"checkpoint_keep_products", "all"}},
                                               {{"PARAMS_NETWORK_ALPHA", "4"},
                                                {"PARAMS_TIMESTEP_SAMPLING", "Flux_Shift"},
                                                {"PARAMS_LOSS_TYPE", "huber"},
                                                {"PARAMS_TRAIN_BLOCKS", "single"},
                                                {"PARAMS_D_COEF", "2"},
                                                {"PARAMS_SAVE_PRECISION", "float16"},
                                                {"PARAMS_MAX_EPOCHS", "5"},
                                                {"PARAMS_IMG_ATTN_DIM", "8"},
                                                {"PARAMS_RESOLUTION", "1280,768"},
                                                {"BASE_MODEL", "flux-schnell"},
                                                {"PARAMS_PRECISION", "bfloat16"}}});
  const TrainSettings s = c.bind<TrainSettings>();
  EXPECT_EQ(s.training.lora.rank, 32);
  EXPECT_EQ(s.training.lora.alpha, 4.0);
  EXPECT_EQ(s.training.lora.train_blocks, lora::TrainBlocks::single);
  EXPECT_EQ(s.training.lora.type_dims.at("img_attn"), 8);
  EXPECT_EQ(s.training.step.objective.sampling, train::TimestepSampling::flux_shift);
  EXPECT_EQ(s.training.step.objective.loss, train::LossType::huber);
  EXPECT_EQ(s.training.step.checkpointing.keep_products, models::KeepProducts::all);
  EXPECT_EQ(s.training.optimizer.d_coef, 2.0);
  EXPECT_EQ(s.training.optimizer.weight_decay, 0.1);  // the seed's, for Prodigy
  EXPECT_EQ(s.training.save_precision, lora::SavePrecision::fp16);
  EXPECT_EQ(s.training.max_epochs, 5);
  EXPECT_EQ(s.models.base_model, BaseModel::schnell);
  EXPECT_EQ(s.compute.precision, Precision::bf16);
  ASSERT_EQ(s.dataset_fallbacks.resolutions.size(), 1u);
  EXPECT_EQ(s.dataset_fallbacks.resolutions[0], (data::Resolution{1280, 768}));
  EXPECT_EQ(s.dataset_fallbacks.resolution_origin, "PARAMS_RESOLUTION=\"1280,768\"");
  // An unset option leaves its field as the struct has it.
  EXPECT_EQ(s.t5_max_length, 0);
  EXPECT_FALSE(s.dataset_fallbacks.caption_extension.has_value());
  EXPECT_FALSE(s.dataset_fallbacks.num_repeats.has_value());
}

TEST(OptionBinding, RepeatableFlagsKeepEveryItem) {
  ResolveInputs in;
  in.cli = {{"out", "/tmp/merged.safetensors"}};
  in.cli_items = {{"lora", {"a.safetensors:0.5", "b,with,commas.safetensors"}}};
  const MergeSettings m = resolve(merge_options(), in).bind<MergeSettings>();
  EXPECT_EQ(m.loras, (std::vector<std::string>{"a.safetensors:0.5", "b,with,commas.safetensors"}));
  // Without the required option, resolution names it and how to give it.
  try {
    resolve(merge_options(), {{{"lora", "a"}}, {}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out is required: give --out or FLUXTRAIN_MERGE_OUT"), std::string::npos)
        << e.what();
  }
}

TEST(OptionBinding, ResumeRulesAndMetadataLiveOnTheOptions) {
  const OptionTable& t = train_options();
  EXPECT_EQ(t.at("network_dim").resume, ResumeRule::breaking);
  EXPECT_EQ(t.at("save_every_n_steps").resume, ResumeRule::safe);
  EXPECT_EQ(t.at("gradient_checkpointing").resume, ResumeRule::memory_only);
  EXPECT_EQ(t.at("prefetch_batches").resume, ResumeRule::memory_only);
  EXPECT_EQ(t.at("device").resume, ResumeRule::safe);
  const auto metadata = resolve(t, {{{"learning_rate", "0.0001"}, {"fp8_base", ""}}, {}}).metadata();
  EXPECT_EQ(metadata.at("ss_learning_rate"), "0.0001");
  EXPECT_EQ(metadata.at("ss_unet_lr"), "0.0001");
  EXPECT_EQ(metadata.at("ss_fp8_base"), "True");
  EXPECT_EQ(metadata.at("ss_timestep_sampling"), "sigmoid");
  EXPECT_EQ(metadata.count("ss_network_dim"), 0u);  // the LoRA file writes the network's own keys
}

TEST(OptionBinding, SharedOptionsAreTheSameEverywhere) {
  // --device and the model files read the same variables in every command that has them.
  for (const char* name : {"train", "sample", "demo"}) {
    const OptionTable& t = command_info(name).options();
    EXPECT_EQ(t.at("device").env_name(), "PARAMS_DEVICE") << name;
    EXPECT_EQ(t.at("precision").help, train_options().at("precision").help) << name;
  }
  for (const char* name : {"train", "sample", "fetch-models"}) {
    const OptionTable& t = command_info(name).options();
    EXPECT_EQ(t.at("model_dir").env_name(), "MODEL_DIR") << name;
    EXPECT_EQ(t.at("t5xxl").env_name(), "PARAMS_T5XXL") << name;
  }
}

}  // namespace
}  // namespace fluxtrain::app
