// kohya's network_args (app/train_option_parts.h apply_network_args): "key=value" items set the network options
// they name, as defaults an option given itself overrides (and both given is an error); bad items are named.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "app/options.h"
#include "app/train_options.h"
#include "core/error.h"
#include "temp_dir.h"

namespace fluxtrain::app {
namespace {

ResolvedConfig with_env(EnvMap env) {
  env["DATASET_NAME"] = "/tmp";
  return resolve(train_options(), {{}, env});
}

std::string resolve_error(const EnvMap& env) {
  try {
    validate_train_config(with_env(env), false);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NetworkArgs, ItemsSetTheOptionsTheyName) {
  const ResolvedConfig c = with_env({{"PARAMS_NETWORK_ARGS",
                                      "\"train_t5xxl=True\" algo=lokr factor=8 decompose_both=true "
                                      "train_double_block_indices=0,2-3 img_attn_dim=16 rank_dropout=0.1"}});
  EXPECT_EQ(c.get_string("network_type"), "lokr");
  EXPECT_EQ(c.get_int("factor"), 8);
  EXPECT_TRUE(c.get_bool("decompose_both"));
  EXPECT_TRUE(c.get_bool("train_t5xxl"));
  EXPECT_EQ(c.get_string("train_double_block_indices"), "0,2-3");
  EXPECT_EQ(c.get_int("img_attn_dim"), 16);
  EXPECT_EQ(c.get_real("rank_dropout"), 0.1);
  // What follows from them follows: train_t5xxl trains the text encoders.
  EXPECT_FALSE(c.get_bool("network_train_unet_only"));
  EXPECT_EQ(c.where("network_type"), "default, network_args algo=lokr");
  const TrainSettings s = c.bind<TrainSettings>();
  EXPECT_EQ(s.training.lora.type, lora::NetworkType::lokr);
  EXPECT_EQ(s.training.lora.factor, 8);
  EXPECT_TRUE(s.training.train_t5);
  EXPECT_EQ(s.training.lora.type_dims.at("img_attn"), 16);
  // LyCORIS's locon is a LoRA (Flux has no convolutions); the seed's LoRA stays the default without it.
  EXPECT_EQ(with_env({{"PARAMS_NETWORK_ARGS", "algo=LoCon dora_wd=True"}}).get_string("network_type"), "lora");
  EXPECT_TRUE(with_env({{"PARAMS_NETWORK_ARGS", "algo=LoCon dora_wd=True"}}).get_bool("dora_wd"));
  EXPECT_EQ(with_env({}).get_string("network_type"), "lora");
}

TEST(NetworkArgs, ATomlArrayIsTheSameAsTheText) {
  const std::string file = (testing::fresh_dir("network_args_toml") / "run.toml").string();
  std::ofstream(file) << "network_args = [\"train_t5xxl=True\", \"algo=loha\"]\n";
  const ResolvedConfig c = with_env({{"PARAMS_CONFIG", file}});
  EXPECT_EQ(c.get_string("network_args"), "train_t5xxl=True algo=loha");
  EXPECT_EQ(c.get_string("network_type"), "loha");
  EXPECT_TRUE(c.get_bool("train_t5xxl"));
}

TEST(NetworkArgs, BadItemsAndDoubleSettingsAreNamed) {
  std::string e = resolve_error({{"PARAMS_NETWORK_ARGS", "conv_dim=8"}});
  EXPECT_NE(e.find("network_args: conv_dim=8 is not an argument fluxtrain takes"), std::string::npos) << e;
  EXPECT_NE(e.find("PARAMS_NETWORK_ARGS"), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "train_t5xx=True"}});
  EXPECT_NE(e.find("(did you mean train_t5xxl?)"), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "algo=ia3"}});
  EXPECT_NE(e.find("algo=ia3 is not a LyCORIS algorithm fluxtrain trains"), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "factor=big"}});
  EXPECT_NE(e.find("network_args: factor=big for factor: "), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "rank_dropout=2"}});
  EXPECT_NE(e.find("rank_dropout=2 for rank_dropout: out of range"), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "train_t5xxl"}});
  EXPECT_NE(e.find("\"train_t5xxl\" is not key=value"), std::string::npos) << e;
  e = resolve_error({{"PARAMS_NETWORK_ARGS", "algo=lokr"}, {"PARAMS_NETWORK_TYPE", "loha"}});
  EXPECT_NE(e.find("PARAMS_NETWORK_TYPE=\"loha\" and algo= in PARAMS_NETWORK_ARGS=\"algo=lokr\" set the same thing; "
                   "keep one"),
            std::string::npos)
      << e;
  EXPECT_EQ(resolve_error({{"PARAMS_NETWORK_ARGS", "algo=lokr factor=4"}}), "");
}

}  // namespace
}  // namespace fluxtrain::app
