// The option table: sources and precedence, strict parsing with named errors, TOML files, the TOML
// round trip, the train table's seed names, combination checks and MODEL_DIR discovery.
#include <gtest/gtest.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <random>
#include <set>

#include "app/options.h"
#include "app/train_options.h"
#include "core/error.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fluxtrain::app {
namespace {

using fluxtrain::testing::write_file;

namespace fs = std::filesystem;

// Resolves and returns the Error text ("" when it resolved).
std::string resolve_error(const OptionTable& table, const ResolveInputs& inputs) {
  try {
    resolve(table, inputs);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

OptionTable small_table() {
  std::vector<OptionSpec> specs;
  auto add = [&](std::string name, OptionType type, std::string def, std::string group) {
    OptionSpec s;
    s.name = std::move(name);
    s.type = type;
    s.default_text = std::move(def);
    s.group = std::move(group);
    s.help = "help of " + s.name;
    specs.push_back(s);
    return &specs.back();
  };
  add("rank", OptionType::integer, "4", "net")->min = 1;
  add("rate", OptionType::real, "0.5", "opt")->min = 0;
  specs.back().min_exclusive = true;
  add("flag", OptionType::boolean, "false", "net");
  OptionSpec* kind = add("kind", OptionType::choice, "alpha", "opt");
  kind->choices = {"alpha", "Beta"};
  kind->choice_aliases = {{"a", "alpha"}};
  add("name", OptionType::string, "", "opt");
  specs.back().env = "SPECIAL_NAME";
  add("sizes", OptionType::list, "", "net");
  add("args", OptionType::string, "", "opt");
  specs.back().toml_array_join = " ";
  add("config", OptionType::path, "", "opt");
  specs.back().config_file = true;
  specs.back().from_file = false;
  specs.back().path_check = PathCheck::file;
  return OptionTable("demo", {{"net", "Network"}, {"opt", "Optimizer"}}, std::move(specs));
}

TEST(Options, DefaultsAndDerivedNames) {
  OptionTable table = small_table();
  EXPECT_EQ(table.at("rank").flag_name(), "--rank");
  EXPECT_EQ(table.at("rank").env_name(), "PARAMS_RANK");
  EXPECT_EQ(table.at("name").env_name(), "SPECIAL_NAME");
  ResolvedConfig c = resolve(table, {});
  EXPECT_EQ(c.get_int("rank"), 4);
  EXPECT_EQ(c.get_real("rate"), 0.5);
  EXPECT_FALSE(c.get_bool("flag"));
  EXPECT_EQ(c.get_string("kind"), "alpha");
  EXPECT_FALSE(c.is_set("name"));
  EXPECT_EQ(c.find_string("name"), std::nullopt);
  EXPECT_EQ(c.source("rank"), Source::default_value);
  EXPECT_EQ(c.where("rank"), "default");
  EXPECT_THROW(c.get_string("name"), Error);  // unset: a programming error
  EXPECT_THROW(c.get_int("rate"), Error);     // wrong type
}

TEST(Options, PrecedenceCliOverEnvOverFileOverDefault) {
  OptionTable table = small_table();
  fs::path dir = testing::fresh_dir("options_precedence");
  write_file(dir / "c.toml", "rank = 8\nrate = 0.25\n[opt]\nkind = \"beta\"\nname = \"from-file\"\n");
  ResolveInputs in;
  in.env = {{"PARAMS_CONFIG", (dir / "c.toml").string()},
            {"PARAMS_RATE", "0.125"},
            {"PARAMS_KIND", "A"},
            {"SPECIAL_NAME", "from-env"}};
  in.cli = {{"kind", "BETA"}};
  ResolvedConfig c = resolve(table, in);
  EXPECT_EQ(c.get_int("rank"), 8);  // file over default
  EXPECT_EQ(c.source("rank"), Source::file);
  EXPECT_EQ(c.where("rank"), "file " + (dir / "c.toml").string());
  EXPECT_EQ(c.get_real("rate"), 0.125);  // env over file
  EXPECT_EQ(c.where("rate"), "env PARAMS_RATE");
  EXPECT_EQ(c.get_string("name"), "from-env");  // the special variable name
  EXPECT_EQ(c.where("name"), "env SPECIAL_NAME");
  EXPECT_EQ(c.get_string("kind"), "Beta");  // cli over env and file; canonical spelling
  EXPECT_EQ(c.where("kind"), "cli --kind");
  EXPECT_EQ(c.describe("kind"), "--kind \"BETA\"");
  EXPECT_EQ(c.describe("rate"), "PARAMS_RATE=\"0.125\"");
  EXPECT_EQ(c.describe("flag"), "flag (default false)");
  EXPECT_FALSE(c.get_bool("flag"));
  EXPECT_EQ(c.config_file(), (dir / "c.toml").string());
  // The CLI also names the file, and wins over the environment's.
  write_file(dir / "d.toml", "rank = 9\n");
  in.cli["config"] = (dir / "d.toml").string();
  EXPECT_EQ(resolve(table, in).get_int("rank"), 9);
}

TEST(Options, BooleansAndStrictNumbers) {
  OptionTable table = small_table();
  for (const char* t : {"true", "TRUE", "1", "yes", "Yes", "on", " true "}) {
    EXPECT_TRUE(resolve(table, {{}, {{"PARAMS_FLAG", t}}}).get_bool("flag")) << t;
  }
  for (const char* f : {"false", "False", "0", "no", "NO", "off"}) {
    EXPECT_FALSE(resolve(table, {{}, {{"PARAMS_FLAG", f}}}).get_bool("flag")) << f;
  }
  EXPECT_TRUE(resolve(table, {{{"flag", ""}}, {}}).get_bool("flag"));  // a bare flag
  EXPECT_EQ(resolve(table, {{}, {{"PARAMS_RANK", "+12"}}}).get_int("rank"), 12);
  EXPECT_EQ(resolve(table, {{}, {{"PARAMS_RATE", "1e-4"}}}).get_real("rate"), 1e-4);
  EXPECT_EQ(resolve(table, {{}, {{"PARAMS_RATE", ".5"}}}).get_real("rate"), 0.5);

  EXPECT_EQ(resolve_error(table, {{}, {{"PARAMS_FLAG", "maybe"}}}),
            "PARAMS_FLAG=\"maybe\": not a boolean; allowed: true or false (also 1/0, yes/no, on/off)");
  EXPECT_EQ(resolve_error(table, {{}, {{"PARAMS_RANK", "12abc"}}}),
            "PARAMS_RANK=\"12abc\": not an integer; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, {{}, {{"PARAMS_RANK", "1.5"}}}),
            "PARAMS_RANK=\"1.5\": not an integer; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, {{}, {{"PARAMS_RANK", "99999999999999999999"}}}),
            "PARAMS_RANK=\"99999999999999999999\": too large for an integer; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, {{{"rate", "1e-4x"}}, {}}), "--rate \"1e-4x\": not a number; allowed: a number > 0");
  EXPECT_EQ(resolve_error(table, {{{"rate", "nan"}}, {}}),
            "--rate \"nan\": not a finite number; allowed: a number > 0");
  EXPECT_EQ(resolve_error(table, {{{"rate", "0"}}, {}}), "--rate \"0\": out of range; allowed: a number > 0");
  EXPECT_EQ(resolve_error(table, {{{"rank", "0"}}, {}}), "--rank \"0\": out of range; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, {{{"name", ""}}, {}}), "--name \"\": empty; allowed: text");
}

TEST(Options, ChoicesListsAndEmptyVariables) {
  OptionTable table = small_table();
  EXPECT_EQ(resolve(table, {{}, {{"PARAMS_KIND", "a"}}}).get_string("kind"), "alpha");
  std::string e = resolve_error(table, {{}, {{"PARAMS_KIND", "betta"}}});
  EXPECT_EQ(e,
            "PARAMS_KIND=\"betta\": not a supported value (did you mean Beta?); allowed: one of alpha, Beta (also a = "
            "alpha); any case");
  auto sizes = resolve(table, {{}, {{"PARAMS_SIZES", "1280, 768"}}}).get_list("sizes");
  EXPECT_EQ(sizes, (std::vector<std::string>{"1280", "768"}));
  EXPECT_NE(resolve_error(table, {{}, {{"PARAMS_SIZES", "1280,,768"}}}).find("an empty item"), std::string::npos);
  // Container templates list every variable, most of them empty: empty means unset.
  ResolvedConfig c = resolve(table, {{}, {{"PARAMS_RANK", ""}, {"SPECIAL_NAME", "  "}}});
  EXPECT_EQ(c.get_int("rank"), 4);
  EXPECT_EQ(c.source("rank"), Source::default_value);
  EXPECT_FALSE(c.is_set("name"));
}

TEST(Options, EveryBadValueIsReportedAtOnce) {
  OptionTable table = small_table();
  std::string e = resolve_error(table, {{{"rate", "-1"}}, {{"PARAMS_RANK", "x"}, {"PARAMS_FLAG", "2"}}});
  EXPECT_EQ(e.rfind("3 configuration errors:", 0), 0u) << e;
  EXPECT_NE(e.find("--rate \"-1\""), std::string::npos);
  EXPECT_NE(e.find("PARAMS_RANK=\"x\""), std::string::npos);
  EXPECT_NE(e.find("PARAMS_FLAG=\"2\""), std::string::npos);
}

TEST(Options, UnknownParamsVariableWarnsWithClosestMatch) {
  OptionTable table = small_table();
  ResolvedConfig c = resolve(table, {{}, {{"PARAMS_RANKK", "3"}, {"PARAMS_XYZZY_FOO", "1"}, {"HOME", "/root"}}});
  ASSERT_EQ(c.warnings().size(), 2u);
  EXPECT_EQ(c.warnings()[0], "unknown environment variable PARAMS_RANKK is ignored; did you mean PARAMS_RANK?");
  EXPECT_NE(
      c.warnings()[1].find("PARAMS_XYZZY_FOO is ignored (the variables are listed by `fluxtrain demo --help-env`)"),
      std::string::npos);
  EXPECT_EQ(c.get_int("rank"), 4);
}

TEST(Options, TomlFiles) {
  OptionTable table = small_table();
  fs::path dir = testing::fresh_dir("options_toml");
  auto with_file = [&](const std::string& text) {
    write_file(dir / "c.toml", text);
    return ResolveInputs{{{"config", (dir / "c.toml").string()}}, {}};
  };
  const std::string file = (dir / "c.toml").string();
  EXPECT_EQ(resolve_error(table, with_file("rnak = 3\n")),
            "config file " + file +
                ": unknown key rnak; did you mean rank? (the keys are the option names listed by "
                "`fluxtrain demo --help-env`)");
  EXPECT_EQ(
      resolve_error(table, with_file("[opts]\nrate = 1.0\n")),
      "config file " + file + ": unknown table [opts]; did you mean [opt]? (tables are the option groups: net, opt)");
  EXPECT_EQ(resolve_error(table, with_file("[opt]\nrank = 3\n")),
            "config file " + file + ": key rank in [opt] belongs in [net] or at the top level");
  EXPECT_EQ(resolve_error(table, with_file("rank = 3\n[net]\nrank = 4\n")),
            "config file " + file + ": rank is set twice (at the top level and in [net])");
  EXPECT_EQ(resolve_error(table, with_file("rank = \"16\"\n")),
            "rank = \"16\" in " + file + ": is a string; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, with_file("rank = 0\n")),
            "rank = 0 in " + file + ": out of range; allowed: an integer >= 1");
  EXPECT_EQ(resolve_error(table, with_file("flag = 1\n")),
            "flag = 1 in " + file + ": is an integer; allowed: true or false (also 1/0, yes/no, on/off)");
  EXPECT_NE(resolve_error(table, with_file("config = \"x.toml\"\n")).find("key config cannot be set in a config file"),
            std::string::npos);
  std::string syntax = resolve_error(table, with_file("rank = = 3\n"));
  EXPECT_NE(syntax.find("line 1"), std::string::npos) << syntax;
  EXPECT_NE(syntax.find("not valid TOML"), std::string::npos) << syntax;
  EXPECT_EQ(resolve_error(table, {{{"config", (dir / "missing.toml").string()}}, {}}),
            "--config \"" + (dir / "missing.toml").string() + "\": no such file or folder; allowed: an existing file");

  // Typed values, sections or not, kohya's list form of the optimizer arguments, a real given as an integer.
  ResolvedConfig c = resolve(table, with_file("rate = 2\nflag = true\nsizes = [1024, 768]\n[opt]\n"
                                              "args = [\"decouple=True\", \"d_coef=2\"]\nkind = \"BETA\"\n"));
  EXPECT_EQ(c.get_real("rate"), 2.0);
  EXPECT_TRUE(c.get_bool("flag"));
  EXPECT_EQ(c.get_list("sizes"), (std::vector<std::string>{"1024", "768"}));
  EXPECT_EQ(c.get_string("args"), "decouple=True d_coef=2");
  EXPECT_EQ(c.get_string("kind"), "Beta");
  EXPECT_EQ(resolve(table, with_file("sizes = 512\n")).get_list("sizes"), (std::vector<std::string>{"512"}));
}

TEST(Options, PrintShowsEveryValueAndSource) {
  OptionTable table = small_table();
  ResolvedConfig c = resolve(table, {{{"rank", "7"}}, {{"SPECIAL_NAME", "a \"quoted\" name"}}});
  std::string text = c.print();
  EXPECT_NE(text.find("rank = 7  (source: cli --rank)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("rate = 0.5  (source: default)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("name = \"a \\\"quoted\\\" name\"  (source: env SPECIAL_NAME)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sizes = (unset)  (source: default)\n"), std::string::npos) << text;
  size_t lines = std::count(text.begin(), text.end(), '\n');
  EXPECT_EQ(lines, table.specs().size());
}

TEST(Options, PathsAreAbsolute) {
  OptionTable table = small_table();
  fs::path dir = testing::fresh_dir("options_paths");
  write_file(dir / "c.toml", "");
  fs::create_directories(dir / "sub");
  fs::path old = fs::current_path();
  fs::current_path(dir);
  ResolvedConfig c = resolve(table, {{{"config", "./sub/../c.toml"}}, {}});
  fs::current_path(old);
  EXPECT_EQ(c.config_file(), (dir / "c.toml").string());
}

TEST(Options, CliBindingParsesFlags) {
  OptionTable table = small_table();
  CLI::App app{"test"};
  CLI::App* sub = app.add_subcommand("demo");
  CliBinding binding(*sub, table);
  std::vector<std::string> args = {"demo", "--flag", "--rank", "5", "--rate=0.25", "--rank", "6", "--kind", "beta"};
  std::vector<const char*> argv = {"fluxtrain"};
  for (const auto& a : args) argv.push_back(a.c_str());
  app.parse(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
  CliValues values = binding.values();
  EXPECT_EQ(values, (CliValues{{"flag", ""}, {"rank", "6"}, {"rate", "0.25"}, {"kind", "beta"}}));
  ResolvedConfig c = resolve(table, {values, {}});
  EXPECT_TRUE(c.get_bool("flag"));
  EXPECT_EQ(c.get_int("rank"), 6);

  CLI::App app2{"test"};
  CLI::App* sub2 = app2.add_subcommand("demo");
  CliBinding binding2(*sub2, table);
  std::vector<const char*> argv2 = {"fluxtrain", "demo", "--flag", "no", "--name", "x"};
  app2.parse(static_cast<int>(argv2.size()), const_cast<char**>(argv2.data()));
  EXPECT_FALSE(resolve(table, {binding2.values(), {}}).get_bool("flag"));
}

// ---- the train table ----------------------------------------------------------------------------

// A model folder holding the four files under `names` (empty files: only their presence is checked here).
fs::path model_dir(const std::string& test, const std::vector<std::string>& names) {
  fs::path dir = testing::fresh_dir(test);
  for (const auto& n : names) write_file(dir / n, "");
  return dir;
}

EnvMap seed_env(const fs::path& models) {
  return {{"BASE_MODEL", "flux"}, {"MODEL_DIR", models.string()}, {"DATASET_NAME", "user/photos"}};
}

TEST(TrainOptions, SeedNamesAreHonoured) {
  const OptionTable& t = train_options();
  const std::map<std::string, std::string> seed = {
      {"BASE_MODEL", "base_model"},
      {"DATASET_NAME", "dataset_name"},
      {"DATASET_CONFIG", "dataset_config"},
      {"SAMPLE_PROMPTS", "sample_prompts"},
      {"OUTPUT_PATH", "output_path"},
      {"MODEL_DIR", "model_dir"},
      {"PARAMS_D_COEF", "d_coef"},
      {"PARAMS_LEARNING_RATE", "learning_rate"},
      {"PARAMS_LEARNING_SCHEDULER", "lr_scheduler"},
      {"PARAMS_MAX_EPOCHS", "max_train_epochs"},
      {"PARAMS_NETWORK_ALPHA", "network_alpha"},
      {"PARAMS_NETWORK_DIM", "network_dim"},
      {"PARAMS_NOISE_OFFSET", "noise_offset"},
      {"PARAMS_NUM_CYCLES", "lr_scheduler_num_cycles"},
      {"PARAMS_OPTIMIZER_ARGS", "optimizer_args"},
      {"PARAMS_OPTIMIZER_TYPE", "optimizer_type"},
      {"PARAMS_RESUME_FROM", "resume_from"},
      {"PARAMS_SAVE_EVERY_N_STEPS", "save_every_n_steps"},
      {"PARAMS_SAMPLE_EVERY_N_STEPS", "sample_every_n_steps"},
      {"PARAMS_SPLIT_QKV", "split_qkv"},
      {"PARAMS_WEIGHT_DECAY", "weight_decay"},
  };
  for (const auto& [var, name] : seed) {
    const OptionSpec* spec = t.find_env(var);
    ASSERT_NE(spec, nullptr) << var;
    EXPECT_EQ(spec->name, name) << var;
  }
  // Every other option has a PARAMS_* name (but the environment knobs, which keep the names other tools
  // give them: HF_TOKEN, SOURCE_DATE_EPOCH, FLUXTRAIN_*, torchrun's RANK, WORLD_SIZE, MASTER_PORT, ..., the
  // live page's MONITOR_* and RunPod's RUNPOD_POD_ID, and the publishing variables issue 22 names,
  // HF_UPLOAD_REPO and NOTIFY_WEBHOOK_URL); every command that runs a model takes --device and --precision.
  const std::set<std::string> named = {"HF_UPLOAD_REPO", "NOTIFY_WEBHOOK_URL"};
  for (const auto& spec : t.specs()) {
    const bool torchrun_variable = spec.group == "distributed" && !spec.has_flag;
    const bool knob = spec.env_name().rfind("FLUXTRAIN_", 0) == 0 || named.count(spec.env_name()) > 0;
    if (seed.count(spec.env_name()) == 0 && spec.group != "downloads" && spec.group != "engine" &&
        spec.group != "monitor" && !torchrun_variable && !knob) {
      EXPECT_EQ(spec.env_name().rfind("PARAMS_", 0), 0u) << spec.name;
    }
  }
  EXPECT_EQ(t.at("device").flag_name(), "--device");
  EXPECT_EQ(t.at("precision").flag_name(), "--precision");
  for (const char* flag : {"--model", "--ae", "--clip-l", "--t5xxl", "--config"}) {
    bool found = false;
    for (const auto& spec : t.specs()) found = found || spec.flag_name() == flag;
    EXPECT_TRUE(found) << flag;
  }
}

TEST(TrainOptions, SeedDefaults) {
  ResolvedConfig c = resolve(train_options(), {});
  EXPECT_EQ(c.get_string("optimizer_type"), "Prodigy");
  EXPECT_EQ(c.get_real("learning_rate"), 1.0);
  EXPECT_EQ(c.get_string("lr_scheduler"), "cosine");
  EXPECT_EQ(c.get_string("base_model"), "flux-dev");
  EXPECT_EQ(c.get_string("device"), "auto");
}

// The seed's train-flux.sh defaults, and the ones that depend on other options (OptionSpec::default_rule).
TEST(TrainOptions, SeedDefaultsFollowTheOtherOptions) {
  ResolvedConfig c = resolve(train_options(), {});
  EXPECT_EQ(c.get_int("max_train_epochs"), 5);
  EXPECT_FALSE(c.is_set("max_train_steps"));
  EXPECT_EQ(c.get_int("lr_scheduler_num_cycles"), 1);  // 5 / 3
  EXPECT_EQ(c.get_string("optimizer_args"), "decouple=True betas=0.9,0.999 use_bias_correction=False safeguard_warmup=False");
  EXPECT_EQ(c.get_real("d_coef"), 2.0);
  EXPECT_EQ(c.get_real("weight_decay"), 0.1);
  EXPECT_EQ(c.get_real("noise_offset"), 0.1);
  EXPECT_TRUE(c.get_bool("fp8_base"));
  EXPECT_EQ(c.get_int("network_dim"), 32);
  EXPECT_EQ(c.where("max_train_epochs"), "the seed's default, train-flux.sh: PARAMS_MAX_EPOCHS=5 (--max_train_epochs)");
  EXPECT_EQ(c.where("learning_rate"), "default");
  // Epochs: num_cycles follows them, and is not "changed" (no has-no-effect warning with cosine).
  c = resolve(train_options(), {{}, {{"PARAMS_MAX_EPOCHS", "10"}}});
  EXPECT_EQ(c.get_int("lr_scheduler_num_cycles"), 3);
  EXPECT_FALSE(c.changed("lr_scheduler_num_cycles"));
  EXPECT_EQ(resolve(train_options(), {{}, {{"PARAMS_MAX_EPOCHS", "2"}}}).get_int("lr_scheduler_num_cycles"), 1);
  // A given max_train_steps is the run's length: the epochs default steps aside.
  c = resolve(train_options(), {{}, {{"PARAMS_MAX_TRAIN_STEPS", "300"}}});
  EXPECT_FALSE(c.is_set("max_train_epochs"));
  EXPECT_EQ(c.where("max_train_epochs"), "default, max_train_steps is given");
  EXPECT_EQ(c.get_int("lr_scheduler_num_cycles"), 1);
  TrainSettings s = c.bind<TrainSettings>();
  EXPECT_FALSE(s.training.max_epochs.has_value());
  EXPECT_EQ(s.training.max_steps, 300);
  // The seed's optimizer settings are Prodigy's: another optimizer keeps its own.
  c = resolve(train_options(), {{}, {{"PARAMS_OPTIMIZER_TYPE", "AdamW"}, {"DATASET_NAME", "/tmp"}}});
  for (const char* key : {"optimizer_args", "d_coef", "weight_decay"}) {
    EXPECT_FALSE(c.is_set(key)) << key;
    EXPECT_EQ(c.where(key), "default, the seed's value is Prodigy's, not AdamW's") << key;
  }
  EXPECT_EQ(validate_train_config(c, false), std::vector<std::string>{});
  // A key given in optimizer_args is left to it (no "set twice" error).
  c = resolve(train_options(), {{}, {{"PARAMS_OPTIMIZER_ARGS", "decouple=True d_coef=3"}}});
  EXPECT_FALSE(c.is_set("d_coef"));
  EXPECT_EQ(c.get_real("weight_decay"), 0.1);
  c = resolve(train_options(), {{}, {{"PARAMS_OPTIMIZER_ARGS", "decouple=True d_coef=3"}, {"DATASET_NAME", "/tmp"}}});
  EXPECT_EQ(validate_train_config(c, false), std::vector<std::string>{});
  EXPECT_EQ(optim::describe(c.bind<TrainSettings>().training.optimizer), "Prodigy(decouple=True d_coef=3 weight_decay=0.1)");
}

TEST(TrainOptions, SeedValuesFromTheEnvironment) {
  fs::path models = model_dir("train_env_models", {"flux_dev.safetensors", "ae.safetensors", "clip_l.safetensors",
                                                   "t5xxl_fp8_e4m3fn.safetensors"});
  EnvMap env = seed_env(models);
  env.insert({{"PARAMS_OPTIMIZER_TYPE", "adamw8BIT"},
              {"PARAMS_LEARNING_SCHEDULER", "COSINE_WITH_RESTARTS"},
              {"PARAMS_NUM_CYCLES", "3"},
              {"PARAMS_MAX_EPOCHS", "12"},
              {"PARAMS_SPLIT_QKV", "True"},
              {"PARAMS_NOISE_OFFSET", "0.05"},
              {"PARAMS_WEIGHT_DECAY", "0.01"},
              {"PARAMS_OPTIMIZER_ARGS", "betas=0.9,0.99 eps=1e-8"},
              {"OUTPUT_PATH", "/tmp/run1"}});
  ResolvedConfig c = resolve(train_options(), {{}, env});
  EXPECT_TRUE(c.warnings().empty());
  EXPECT_TRUE(validate_train_config(c).empty());
  EXPECT_EQ(c.get_string("optimizer_type"), "AdamW8bit");
  EXPECT_EQ(c.get_string("lr_scheduler"), "cosine_with_restarts");
  EXPECT_EQ(c.where("lr_scheduler"), "env PARAMS_LEARNING_SCHEDULER");
  EXPECT_EQ(c.get_int("lr_scheduler_num_cycles"), 3);
  EXPECT_EQ(c.get_int("max_train_epochs"), 12);
  EXPECT_TRUE(c.get_bool("split_qkv"));
  EXPECT_EQ(c.get_string("base_model"), "flux-dev");
  EXPECT_EQ(c.get_string("output_path"), "/tmp/run1");
  // The seed's PARAMS_WEIGHT_DECAY reaches the optimizer typed, and kohya's ss_optimizer lists it with the args.
  const TrainSettings settings = c.bind<TrainSettings>();
  EXPECT_EQ(settings.training.optimizer.args, "betas=0.9,0.99 eps=1e-8");
  EXPECT_EQ(settings.training.optimizer.weight_decay, 0.01);
  EXPECT_EQ(optim::describe(settings.training.optimizer), "AdamW8bit(betas=0.9,0.99 eps=1e-8 weight_decay=0.01)");
  ModelFiles files = find_model_files(settings.models);
  EXPECT_EQ(files.model, (models / "flux_dev.safetensors").string());
  EXPECT_EQ(files.t5xxl, (models / "t5xxl_fp8_e4m3fn.safetensors").string());

  // kohya's spelling of a renamed variable is accepted too, but not both at once.
  env["PARAMS_LR_SCHEDULER"] = "linear";
  std::string e = resolve_error(train_options(), {{}, env});
  EXPECT_NE(e.find("PARAMS_LEARNING_SCHEDULER and PARAMS_LR_SCHEDULER are both set"), std::string::npos) << e;
}

TEST(TrainOptions, BadSeedValuesNameTheVariable) {
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"BASE_MODEL", "sdxl"}}}),
            "BASE_MODEL=\"sdxl\": not a supported value; allowed: one of flux-dev, flux-schnell (also flux = "
            "flux-dev); any case");
  EXPECT_EQ(
      resolve_error(train_options(), {{}, {{"PARAMS_OPTIMIZER_TYPE", "adamx"}}}),
      "PARAMS_OPTIMIZER_TYPE=\"adamx\": not a supported value (did you mean AdamW?); allowed: one of Prodigy, AdamW, "
      "AdamW8bit, Adafactor, Lion, SGD (also prodigyopt.Prodigy = Prodigy, bitsandbytes.optim.AdamW8bit = AdamW8bit, "
      "adamw_8bit = AdamW8bit); any case");
  std::string e = resolve_error(train_options(), {{}, {{"PARAMS_LEARNING_SCHEDULER", "cosin"}}});
  EXPECT_NE(e.find("PARAMS_LEARNING_SCHEDULER=\"cosin\": not a supported value (did you mean cosine?); allowed: one of "
                   "constant,"),
            std::string::npos)
      << e;
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"PARAMS_NETWORK_DIM", "sixteen"}}}),
            "PARAMS_NETWORK_DIM=\"sixteen\": not an integer; allowed: an integer in [1, 4096]");
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"PARAMS_NETWORK_ALPHA", "0"}}}),
            "PARAMS_NETWORK_ALPHA=\"0\": out of range; allowed: a number > 0");
  EXPECT_EQ(
      resolve_error(train_options(), {{{"lr_warmup_steps", "2.5"}}, {}}),
      "--lr-warmup-steps \"2.5\": neither a whole number of steps nor a fraction below 1; allowed: a whole number of "
      "steps >= 0, or a fraction in [0, 1)");
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"PARAMS_RESUME_FROM", "/nonexistent/state"}}}),
            "PARAMS_RESUME_FROM=\"/nonexistent/state\": no such file or folder; allowed: an existing file or folder");
  e = resolve_error(train_options(), {{}, {{"PARAMS_OPTIMIZER_ARGS", "decouple=True (betas=0.9"}}});
  EXPECT_NE(e.find("PARAMS_OPTIMIZER_ARGS=\"decouple=True (betas=0.9\": optimizer_args"), std::string::npos) << e;
  EXPECT_NE(e.find("unbalanced"), std::string::npos) << e;
  EXPECT_EQ(resolve_error(train_options(), {{{"device", "gpu"}}, {}}),
            "--device \"gpu\": not a device; allowed: auto, cpu, cuda or cuda:N");
  EXPECT_EQ(resolve(train_options(), {{{"device", "cuda:1"}}, {}}).get_string("device"), "cuda:1");
  EXPECT_EQ(resolve_error(train_options(), {{{"precision", "int8"}}, {}})
                .rfind("--precision \"int8\": not a supported value", 0),
            0u);
  EXPECT_EQ(
      resolve_error(train_options(), {{}, {{"PARAMS_TRAIN_DOUBLE_BLOCK_INDICES", "0,5-2"}}}),
      "PARAMS_TRAIN_DOUBLE_BLOCK_INDICES=\"0,5-2\": the range '5-2' is backwards; allowed: all, none, or indices and "
      "ranges (\"0,2,5-9\")");
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"PARAMS_RESOLUTION", "1024,768,9000"}}}),
            "PARAMS_RESOLUTION=\"1024,768,9000\": 9000 is out of range (64 to 8192 pixels per side); allowed: sides in "
            "[64, 8192]: \"1024\", \"1280,768\" (width,height), \"512,768,1024\" or \"512x512,1280x768\" (several "
            "sizes)");
  EXPECT_EQ(resolve_error(train_options(), {{}, {{"PARAMS_OUTPUT_NAME", "a/b"}}}),
            "PARAMS_OUTPUT_NAME=\"a/b\": not a plain file name; allowed: a file name without folders");
}

TEST(TrainOptions, UnknownParamsVariableWarns) {
  ResolvedConfig c = resolve(train_options(), {{}, {{"PARAMS_LEARNIN_RATE", "1"}, {"PARAMS_NETWORK_DIMS", "4"}}});
  ASSERT_EQ(c.warnings().size(), 2u);
  EXPECT_EQ(c.warnings()[0],
            "unknown environment variable PARAMS_LEARNIN_RATE is ignored; did you mean PARAMS_LEARNING_RATE?");
  EXPECT_EQ(c.warnings()[1],
            "unknown environment variable PARAMS_NETWORK_DIMS is ignored; did you mean PARAMS_NETWORK_DIM?");
}

std::string validate_error(const EnvMap& env, const CliValues& cli = {}) {
  try {
    validate_train_config(resolve(train_options(), {cli, env}));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TrainOptions, BadCombinations) {
  fs::path models = model_dir("train_combo_models", {"flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors",
                                                     "t5xxl_fp16.safetensors"});
  EnvMap env = seed_env(models);
  EXPECT_EQ(validate_error(env), "");
  auto with = [&](std::map<std::string, std::string> extra) {
    EnvMap e = env;
    for (const auto& [k, v] : extra) e[k] = v;
    return validate_error(e);
  };
  EXPECT_EQ(with({{"PARAMS_D_COEF", "2"}, {"PARAMS_OPTIMIZER_TYPE", "AdamW"}}),
            "PARAMS_D_COEF=\"2\" applies to the Prodigy optimizer only, but PARAMS_OPTIMIZER_TYPE=\"AdamW\"");
  EXPECT_EQ(with({{"PARAMS_D_COEF", "2"}, {"PARAMS_OPTIMIZER_ARGS", "d_coef=3 decouple=True"}}),
            "PARAMS_D_COEF=\"2\" and d_coef= in PARAMS_OPTIMIZER_ARGS=\"d_coef=3 decouple=True\" set the same thing; "
            "keep one");
  EXPECT_EQ(with({{"PARAMS_OFFLOAD_CHECKPOINTS", "1"}, {"PARAMS_GRADIENT_CHECKPOINTING", "0"}}),
            "PARAMS_OFFLOAD_CHECKPOINTS=\"1\" needs gradient checkpointing, but PARAMS_GRADIENT_CHECKPOINTING=\"0\"");
  EXPECT_EQ(with({{"PARAMS_SAMPLE_EVERY_N_STEPS", "100"}}),
            "PARAMS_SAMPLE_EVERY_N_STEPS=\"100\" asks for samples, but there are no prompts: set SAMPLE_PROMPTS "
            "(--sample-prompts) to a prompt file, or set sample_every_n_steps to 0");
  EXPECT_EQ(
      with({{"PARAMS_MAX_EPOCHS", "3"}, {"PARAMS_MAX_TRAIN_STEPS", "100"}}),
      "PARAMS_MAX_EPOCHS=\"3\" and PARAMS_MAX_TRAIN_STEPS=\"100\" are both set: the run length is one or the other; "
      "remove one");
  EXPECT_EQ(with({{"PARAMS_LR_WARMUP_STEPS", "2000"}, {"PARAMS_MAX_TRAIN_STEPS", "1600"}}),
            "PARAMS_LR_WARMUP_STEPS=\"2000\" is not shorter than the run, PARAMS_MAX_TRAIN_STEPS=\"1600\"");
  EXPECT_NE(with({{"PARAMS_LEARNING_SCHEDULER", "piecewise_constant"}}).find("needs lr_step_rules"), std::string::npos);
  EXPECT_NE(with({{"PARAMS_LEARNING_SCHEDULER", "piecewise_constant"}, {"PARAMS_LR_STEP_RULES", "1:x,0.1"}})
                .find("PARAMS_LR_STEP_RULES=\"1:x,0.1\": "),
            std::string::npos);
  EXPECT_EQ(with({{"PARAMS_LEARNING_SCHEDULER", "piecewise_constant"}, {"PARAMS_LR_STEP_RULES", "1:500,0.1"}}), "");

  EnvMap no_data = env;
  no_data.erase("DATASET_NAME");
  EXPECT_EQ(validate_error(no_data).rfind("no dataset: set DATASET_NAME", 0), 0u);
  // Every problem at once, each named.
  std::string e =
      with({{"PARAMS_D_COEF", "2"}, {"PARAMS_OPTIMIZER_TYPE", "Lion"}, {"PARAMS_SAMPLE_EVERY_N_STEPS", "5"}});
  EXPECT_EQ(e.rfind("2 configuration errors:", 0), 0u) << e;

  // Settings without effect are warnings.
  ResolvedConfig c = resolve(train_options(), {{}, [&] {
                                                 EnvMap e2 = env;
                                                 e2["PARAMS_NUM_CYCLES"] = "4";
                                                 e2["PARAMS_DISCRETE_FLOW_SHIFT"] = "2.5";
                                                 return e2;
                                               }()});
  std::vector<std::string> warnings = validate_train_config(c);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0].rfind("PARAMS_NUM_CYCLES=\"4\" has no effect with lr_scheduler (default \"cosine\")", 0), 0u)
      << warnings[0];
  EXPECT_EQ(warnings[1].rfind("PARAMS_DISCRETE_FLOW_SHIFT=\"2.5\" has no effect with timestep_sampling", 0), 0u)
      << warnings[1];
}

TEST(TrainOptions, ModelDirDiscovery) {
  // The usual names; fp16 T5 is preferred over fp8 when both are there.
  fs::path both =
      model_dir("models_both", {"flux1-dev.safetensors", "flux_dev.safetensors", "ae.safetensors", "clip_l.safetensors",
                                "t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors"});
  ModelFiles f = find_model_files({}, both.string(), BaseModel::dev);
  EXPECT_EQ(f.model, (both / "flux1-dev.safetensors").string());
  EXPECT_EQ(f.ae, (both / "ae.safetensors").string());
  EXPECT_EQ(f.clip_l, (both / "clip_l.safetensors").string());
  EXPECT_EQ(f.t5xxl, (both / "t5xxl_fp16.safetensors").string());

  // The fp8 transformer that `fetch-models` downloads (MODEL_BASE_VARIANT=fp8) counts too.
  fs::path fp8 = model_dir("models_fp8", {"flux1-dev-fp8.safetensors", "ae.safetensors", "clip_l.safetensors",
                                          "t5xxl_fp8_e4m3fn.safetensors"});
  EXPECT_EQ(find_model_files({}, fp8.string(), BaseModel::dev).model, (fp8 / "flux1-dev-fp8.safetensors").string());

  // An explicit file wins over the folder.
  ModelFiles given;
  given.ae = "/elsewhere/my_ae.safetensors";
  EXPECT_EQ(find_model_files(given, both.string(), BaseModel::dev).ae, "/elsewhere/my_ae.safetensors");

  // schnell looks for its own transformer, and says so when only dev is there.
  try {
    find_model_files({}, both.string(), BaseModel::schnell);
    FAIL() << "no schnell transformer, yet found";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "model file missing (BASE_MODEL flux-schnell): the Flux transformer: none of flux1-schnell.safetensors, "
              "flux_schnell.safetensors or flux1-schnell-fp8.safetensors in MODEL_DIR=" +
                  both.string() +
                  " (it holds flux1-dev.safetensors: is BASE_MODEL=flux-dev meant?) (it holds flux_dev.safetensors: is "
                  "BASE_MODEL=flux-dev meant?); or name the file with --model / PARAMS_MODEL");
  }
  // Everything missing is listed, with the names looked for.
  fs::path partial = model_dir("models_partial", {"ae.safetensors"});
  try {
    find_model_files({}, partial.string(), BaseModel::dev);
    FAIL() << "found missing files";
  } catch (const Error& e) {
    std::string text = e.what();
    EXPECT_EQ(text.rfind("3 model files missing (BASE_MODEL flux-dev):", 0), 0u) << text;
    EXPECT_NE(text.find("flux1-dev.safetensors, flux_dev.safetensors or flux1-dev-fp8.safetensors in MODEL_DIR=" +
                        partial.string()),
              std::string::npos);
    EXPECT_NE(text.find("clip_l.safetensors in MODEL_DIR"), std::string::npos);
    EXPECT_NE(text.find("t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors in MODEL_DIR"), std::string::npos);
    EXPECT_NE(text.find("--t5xxl / PARAMS_T5XXL"), std::string::npos);
  }
  // No folder and no files.
  try {
    find_model_files({}, "", BaseModel::dev);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the autoencoder: not given (set --ae / PARAMS_AE, or MODEL_DIR to a folder "
                                         "holding ae.safetensors or flux_ae.safetensors)"),
              std::string::npos)
        << e.what();
  }
  // Through the config: the schnell files by BASE_MODEL, one of them named on the command line.
  fs::path schnell = model_dir("models_schnell", {"flux1-schnell.safetensors", "ae.safetensors", "clip_l.safetensors",
                                                  "t5xxl_fp16.safetensors"});
  write_file(schnell / "other_clip.safetensors", "");
  ResolvedConfig c = resolve(train_options(), {{{"clip_l", (schnell / "other_clip.safetensors").string()}},
                                               {{"BASE_MODEL", "FLUX-SCHNELL"}, {"MODEL_DIR", schnell.string()}}});
  ModelFiles r = find_model_files(c.bind<TrainSettings>().models);
  EXPECT_EQ(r.model, (schnell / "flux1-schnell.safetensors").string());
  EXPECT_EQ(r.clip_l, (schnell / "other_clip.safetensors").string());
}

TEST(TrainOptions, TomlRoundTripResolvesToTheSameValues) {
  fs::path models = model_dir(
      "roundtrip_models", {"flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"});
  fs::path dir = testing::fresh_dir("options_roundtrip");
  write_file(dir / "prompts.txt", "a cat --w 512 --h 512\n");
  EnvMap env = seed_env(models);
  env.insert({{"PARAMS_OPTIMIZER_ARGS", "decouple=True betas=\"(0.9, 0.99)\" x=C:\\dir"},
              {"PARAMS_LEARNING_RATE", "0.0001"},
              {"PARAMS_NOISE_OFFSET", "0.1"},
              {"PARAMS_RESOLUTION", "1280,768"},
              {"SAMPLE_PROMPTS", (dir / "prompts.txt").string()},
              {"PARAMS_SAMPLE_EVERY_N_STEPS", "250"},
              {"PARAMS_MAX_EPOCHS", "7"},
              {"OUTPUT_PATH", (dir / "out").string()}});
  // Random values for a few numeric options, so the round trip is not tuned to fixed numbers.
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  CliValues cli = {{"network_alpha", std::to_string(unit(rng) * 100 + 0.001)},
                   {"sigmoid_scale", cat(unit(rng) * 3 + 1e-9)},
                   {"seed", std::to_string(rng() % 1000000)},
                   {"split_qkv", ""},
                   {"caption_extension", ".caption"},
                   {"guidance_scale", "3.5"}};
  const OptionTable& table = train_options();
  ResolvedConfig first = resolve(table, {cli, env});
  write_file(dir / "config.toml", first.to_toml());
  ResolvedConfig second = resolve(table, {{{"config", (dir / "config.toml").string()}}, {}});
  for (const auto& spec : table.specs()) {
    if (spec.config_file || !spec.from_file) continue;  // a file never holds them (torchrun's variables)
    EXPECT_EQ(format_toml_value(first.option(spec.name).value), format_toml_value(second.option(spec.name).value))
        << spec.name;
    EXPECT_TRUE(first.option(spec.name).value == second.option(spec.name).value) << spec.name;
    EXPECT_EQ(second.source(spec.name), second.is_set(spec.name) ? Source::file : Source::default_value) << spec.name;
  }
  // A saved config repeats every default: no "both set" error and no "has no effect" warning from that.
  EXPECT_TRUE(validate_train_config(second).empty());
  EXPECT_TRUE(second.given("max_train_epochs"));
  EXPECT_FALSE(second.given("max_train_steps"));
  EXPECT_TRUE(second.changed("max_train_epochs"));
  EXPECT_TRUE(second.given("d_coef"));  // the seed's Prodigy default, repeated
  EXPECT_FALSE(second.changed("d_coef"));
  // The file is grouped and says where each value came from.
  std::string text = first.to_toml();
  EXPECT_NE(text.find("[optimizer]  # Optimizer\n"), std::string::npos) << text;
  EXPECT_NE(text.find("learning_rate = 0.0001  # env PARAMS_LEARNING_RATE\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# resume_from =  (unset)\n"), std::string::npos) << text;
}

TEST(TrainOptions, HelpEnvListsEveryVariable) {
  const OptionTable& t = train_options();
  std::string md = help_env(t, "markdown");
  std::string text = help_env(t, "text");
  for (const auto& var : t.env_names()) {
    EXPECT_NE(md.find("`" + var + "`"), std::string::npos) << var;
    EXPECT_NE(text.find(var), std::string::npos) << var;
  }
  EXPECT_NE(md.find("| Variable | Flag | Default | Allowed | Description |"), std::string::npos);
  EXPECT_NE(md.find("| `PARAMS_LEARNING_RATE` | `--learning-rate` | `1.0` | a number > 0 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| `PARAMS_LEARNING_SCHEDULER` or `PARAMS_LR_SCHEDULER` | `--lr-scheduler` | `cosine` |"),
            std::string::npos)
      << md;
  EXPECT_THROW(help_env(t, "html"), Error);
}

}  // namespace
}  // namespace fluxtrain::app
