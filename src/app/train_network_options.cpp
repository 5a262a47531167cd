// The train option table's network group (LoRA, LyCORIS, the text encoders) and its EMA group.
#include <algorithm>
#include <charconv>
#include <map>
#include <memory>
#include <optional>

#include "app/option_values.h"
#include "app/train_option_parts.h"
#include "core/error.h"
#include "core/strings.h"
#include "optim/args.h"

namespace fluxtrain::app {
namespace {

using L = lora::LoraOptions;

// "all", "none", or comma-separated indices and ranges "0,2,5-9" (the model's block count is checked
// when the network is built).
std::string check_block_selection(const OptionValue& v) {
  const std::string& s = std::get<std::string>(v);
  if (s == "all" || s == "none") return "";
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    size_t dash = item.find('-');
    std::string lo_text = item.substr(0, dash), hi_text = dash == std::string::npos ? lo_text : item.substr(dash + 1);
    int64_t lo = 0, hi = 0;
    auto parse = [](const std::string& t, int64_t& out) {
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
      return !t.empty() && ec == std::errc() && end == t.data() + t.size() && out >= 0;
    };
    if (!parse(lo_text, lo) || !parse(hi_text, hi)) return cat("'", item, "' is not a block index or range");
    if (hi < lo) return cat("the range '", item, "' is backwards");
    if (comma == std::string::npos) return "";
    start = comma + 1;
  }
}

// A per-layer-type rank (kohya's img_attn_dim ... single_mod_dim): LoraOptions::type_dims[type].
Opt<S> type_dim(const std::string& type, const std::string& what) {
  return Opt<S>(type + "_dim", kInt, "network", "", cat("Rank of ", what, " adapters; unset: network_dim; 0: none."))
      .min(0)
      .set([type](S& s, const int64_t& v) { s.training.lora.type_dims[type] = v; });
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& network_arg_options() {
  // kohya's networks/lora_flux.py arguments, LyCORIS's algo / factor / decompose_both / full_matrix / dora_wd.
  static const std::vector<std::pair<std::string, std::string>> keys = [] {
    std::vector<std::pair<std::string, std::string>> k = {{"algo", "network_type"}};
    for (const char* same : {"factor", "decompose_both", "full_matrix", "dora_wd", "train_blocks",
                             "train_double_block_indices", "train_single_block_indices", "split_qkv", "rank_dropout",
                             "module_dropout", "train_t5xxl", "loraplus_lr_ratio", "img_attn_dim", "img_mlp_dim",
                             "img_mod_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim", "single_dim",
                             "single_mod_dim"})
      k.emplace_back(same, same);
    return k;
  }();
  return keys;
}

std::vector<NetworkArg> network_arg_items(const std::string& args) {
  std::vector<NetworkArg> items;
  for (const auto& pair : optim::split_key_values(args, "network_args")) {
    const std::string& key = pair.first;  // not a structured binding: the lambda below captures it (clang)
    std::string value = pair.second;
    const auto& options = network_arg_options();
    const auto found = std::find_if(options.begin(), options.end(), [&](const auto& o) { return o.first == key; });
    if (found == options.end()) {
      std::vector<std::string> known;
      for (const auto& [k, option] : options) known.push_back(k);
      const std::string hint = closest_match(key, known);
      fail("network_args: ", key, "=", value, " is not an argument fluxtrain takes",
           hint.empty() ? std::string() : cat(" (did you mean ", hint, "?)"), "; it takes ", join(known, ", "),
           " (a LoRA on Flux has no convolutions: conv_dim and conv_alpha do not apply)");
    }
    if (key == "algo") {
      // LyCORIS's LoCon is a LoRA on the linear layers (and convolutions, which Flux has none of).
      std::string algo = lower(value);
      if (algo == "locon") algo = "lora";
      if (algo != "lora" && algo != "lokr" && algo != "loha")
        fail("network_args: algo=", value, " is not a LyCORIS algorithm fluxtrain trains; it trains lora (locon), "
             "lokr and loha");
      value = algo;
    }
    items.push_back({key, found->second, value});
  }
  return items;
}

void apply_network_args(std::vector<OptionSpec>& specs) {
  // The named options as they are before the rules below, to parse and check the items' values by.
  auto targets = std::make_shared<std::map<std::string, OptionSpec>>();
  for (const auto& spec : specs) {
    for (const auto& [key, option] : network_arg_options())
      if (option == spec.name) targets->emplace(key, spec);
  }
  if (targets->size() != network_arg_options().size()) fail("internal: network_args names an option the table lacks");
  auto item_value = [targets](const std::string& key, const std::string& raw, std::string& error) {
    const OptionSpec& spec = targets->at(key);
    const std::string& option = spec.name;
    OptionValue value = detail::parse_text(spec, raw, error);
    if (error.empty()) error = detail::check_value(spec, value, false);
    if (!error.empty()) error = cat("network_args: ", key, "=", raw, " for ", option, ": ", error, "; allowed: ",
                                    spec.allowed_text());
    return value;
  };
  for (auto& spec : specs) {
    if (spec.name == "network_args") {
      spec.check = [item_value](const OptionValue& v) -> std::string {
        try {
          for (const NetworkArg& arg : network_arg_items(std::get<std::string>(v))) {
            std::string error;
            item_value(arg.key, arg.value, error);
            if (!error.empty()) return error;
          }
        } catch (const Error& e) {
          return e.what();
        }
        return "";
      };
      continue;
    }
    for (const auto& [key, option] : network_arg_options()) {
      if (option != spec.name) continue;
      spec.default_rule = [before = spec.default_rule, arg = key, item_value](const ResolvedValues& v) -> RuleResult {
        const OptionValue& args = v.at("network_args").value;
        if (std::holds_alternative<std::string>(args)) {
          for (const NetworkArg& item : network_arg_items(std::get<std::string>(args))) {
            std::string error;
            if (item.key == arg)
              return std::pair{item_value(item.key, item.value, error), cat("network_args ", item.key, "=", item.value)};
          }
        }
        return before ? before(v) : std::nullopt;
      };
      spec.default_rule_text = cat(spec.default_rule_text.empty() ? "" : spec.default_rule_text + "; ",
                                   "network_args' ", key, "= when given");
    }
  }
}

std::vector<OptionSpec> network_specs() {
  const std::string p0 = "0", p1 = "1";
  std::vector<Opt<S>> specs = {
      // --- network
      Opt<S>("network_type", kChoice, "network", "lora",
             "What trains: a LoRA, LyCORIS's LoKr (Kronecker product) or LoHa (Hadamard product), or `none` for "
             "full fine-tuning of every transformer weight (fp32 master weights; the result is a base "
             "checkpoint).")
          .choices({"lora", "lokr", "loha", "none"})
          .set([](S& s, const std::string& v) {
            s.training.full_finetune = v == "none";
            s.training.lora.type = v == "lokr"   ? lora::NetworkType::lokr
                                   : v == "loha" ? lora::NetworkType::loha
                                                 : lora::NetworkType::lora;
          }),
      Opt<S>("network_args", kString, "network", "",
             "kohya's network arguments, \"key=value key=value\" (e.g. \"train_t5xxl=True algo=lokr factor=8\"; a "
             "TOML array in a file): each sets the option of that name (algo: network_type, locon = lora); an "
             "option given itself as well is an error.")
          .join_arrays(" ")
          .allowed("key=value pairs separated by spaces")
          // Its items reach the settings through the options they name (apply_network_args).
          .set([](S&, const std::string&) {}),
      Opt<S>("factor", kInt, "network", "-1",
             "LoKr: the Kronecker factorization factor (LyCORIS's factor): each dimension splits into a factor "
             "pair with this one (when it divides); -1 picks the pair nearest the square root.")
          .min(-1)
          .to(&S::training, &T::lora, &L::factor),
      Opt<S>("decompose_both", kBool, "network", "false",
             "LoKr: also make the smaller Kronecker factor (lokr_w1) low-rank (lokr_w1_a @ lokr_w1_b) when the rank "
             "is below half its size.")
          .to(&S::training, &T::lora, &L::decompose_both),
      Opt<S>("full_matrix", kBool, "network", "false",
             "LoKr: keep the larger Kronecker factor full (lokr_w2) whatever the rank; without it lokr_w2 is "
             "low-rank (lokr_w2_a @ lokr_w2_b) unless the rank is at least half its size.")
          .to(&S::training, &T::lora, &L::full_matrix),
      Opt<S>("dora_wd", kBool, "network", "false",
             "DoRA (weight-decomposed LoRA) on network_type lora: a trained magnitude per output row; saved as "
             "LyCORIS's dora_scale.")
          .to(&S::training, &T::lora, &L::dora_wd),
      Opt<S>("network_dim", kInt, "network", "32", "LoRA rank.")
          .seed_default("train-flux.sh: PARAMS_NETWORK_DIM=32 (--network_dim)", "4")
          .min(1)
          .max(4096)
          .to(&S::training, &T::lora, &L::rank),
      Opt<S>("network_alpha", kReal, "network", "4", "LoRA alpha: the update is scaled by alpha / rank.")
          .seed_default("train-flux.sh: PARAMS_NETWORK_ALPHA=4 (--network_alpha)", "1")
          .min(0, true)
          .to(&S::training, &T::lora, &L::alpha),
      Opt<S>("train_blocks", kChoice, "network", "all", "Which transformer blocks get adapters.")
          .choices_of<lora::TrainBlocks>()
          .to(&S::training, &T::lora, &L::train_blocks),
      Opt<S>("train_double_block_indices", kString, "network", "all",
             "Double blocks with adapters: all, none or \"0,2,5-9\".")
          .check(check_block_selection)
          .allowed("all, none, or indices and ranges (\"0,2,5-9\")")
          .set([](S& s, const std::string& v, const std::string& described) {
            s.training.lora.train_double_block_indices = v;
            s.training.lora.double_blocks_origin = described;
          }),
      Opt<S>("train_single_block_indices", kString, "network", "all",
             "Single blocks with adapters: all, none or \"0,2,5-9\".")
          .check(check_block_selection)
          .allowed("all, none, or indices and ranges (\"0,2,5-9\")")
          .set([](S& s, const std::string& v, const std::string& described) {
            s.training.lora.train_single_block_indices = v;
            s.training.lora.single_blocks_origin = described;
          }),
      Opt<S>("split_qkv", kBool, "network", "false",
             "Separate adapters for q, k and v (and the single blocks' MLP input); saved fused at the trained "
             "strength.")
          .to(&S::training, &T::lora, &L::split_qkv),
      Opt<S>("network_dropout", kReal, "network", p0, "Dropout of the LoRA's hidden units (kohya network_dropout).")
          .min(0)
          .max(1, true)
          .to(&S::training, &T::lora, &L::dropout, &lora::DropoutOptions::neuron),
      Opt<S>("rank_dropout", kReal, "network", p0, "Dropout of whole ranks per sample (kohya rank_dropout).")
          .min(0)
          .max(1, true)
          .to(&S::training, &T::lora, &L::dropout, &lora::DropoutOptions::rank),
      Opt<S>("module_dropout", kReal, "network", p0,
             "Probability of skipping a whole LoRA module per step (kohya module_dropout).")
          .min(0)
          .max(1, true)
          .to(&S::training, &T::lora, &L::dropout, &lora::DropoutOptions::module),
      Opt<S>("network_train_unet_only", kBool, "network", "true",
             "Train the transformer's LoRA only; false: also a LoRA on CLIP-L (lora_te1_ modules in the same file, "
             "and T5-XXL with train_t5xxl), trained at text_encoder_lr, with the text cache off. fluxtrain's "
             "default is true (kohya's false).")
          .default_rule("false when text_encoder_lr is given or train_t5xxl is true",
                        [](const ResolvedValues& v) -> RuleResult {
                          if (std::holds_alternative<double>(v.at("text_encoder_lr").value))
                            return std::pair{OptionValue{false}, std::string("text_encoder_lr is given")};
                          if (std::get<bool>(v.at("train_t5xxl").value))
                            return std::pair{OptionValue{false}, std::string("train_t5xxl is true")};
                          return std::nullopt;
                        })
          .metadata("ss_network_train_unet_only")
          .set([](S& s, const bool& v) { s.training.train_clip = !v; }),
      Opt<S>("text_encoder_lr", kReal, "network", "",
             "Learning rate of the text encoders' LoRA (kohya's option; the schedule scales it like learning_rate); "
             "given: the text encoders train (network_train_unet_only defaults to false); unset: learning_rate.")
          .min(0, true)
          .metadata("ss_text_encoder_lr")
          .set([](S& s, const double& v) { s.training.text_encoder_lr = v; }),
      Opt<S>("train_t5xxl", kBool, "network", "false",
             "Also train a LoRA on T5-XXL (lora_te3_ modules: SelfAttention q/k/v/o and DenseReluDense "
             "wi_0/wi_1/wo of every block), as kohya's network argument train_t5xxl=True; needs the text "
             "encoders to train (network_train_unet_only false, its default then).")
          .set([](S& s, const bool& v) { s.training.train_t5 = v; }),
      type_dim("img_attn", "the double blocks' image attention"),
      type_dim("img_mlp", "the double blocks' image MLP"),
      type_dim("img_mod", "the double blocks' image modulation"),
      type_dim("txt_attn", "the double blocks' text attention"),
      type_dim("txt_mlp", "the double blocks' text MLP"),
      type_dim("txt_mod", "the double blocks' text modulation"),
      type_dim("single", "the single blocks' linear1/linear2"),
      type_dim("single_mod", "the single blocks' modulation"),

      // --- EMA (diffusers' EMAModel, as SimpleTuner and ai-toolkit use it)
      Opt<S>("ema_decay", kReal, "ema", p0,
             "Keep an exponential moving average (EMA) of the trained weights with this decay (e.g. 0.999; "
             "SimpleTuner's and ai-toolkit's ema_decay), saved as NAME-ema.safetensors beside every LoRA file; "
             "0 = no EMA. Each update's decay is min(ema_decay, (1 + s) / (10 + s)) (or the warm-up's), s the "
             "updates so far.")
          .min(0)
          .max(1, true)
          .to(&S::training, &T::ema, &train::EmaOptions::decay),
      Opt<S>("ema_min_decay", kReal, "ema", p0, "The lowest decay of an EMA update (diffusers' min_decay).")
          .min(0)
          .max(1, true)
          .to(&S::training, &T::ema, &train::EmaOptions::min_decay),
      Opt<S>("ema_update_after_step", kInt, "ema", p0,
             "The first N EMA updates copy the weights (diffusers' update_after_step): the average starts later.")
          .min(0)
          .to(&S::training, &T::ema, &train::EmaOptions::update_after_step),
      Opt<S>("use_ema_warmup", kBool, "ema", "false",
             "The EMA's decay rises as 1 - (1 + s / ema_inv_gamma)^-ema_power (diffusers' use_ema_warmup) instead "
             "of (1 + s) / (10 + s).")
          .to(&S::training, &T::ema, &train::EmaOptions::warmup),
      Opt<S>("ema_inv_gamma", kReal, "ema", "1.0", "The warm-up's inv_gamma (use_ema_warmup).")
          .min(0, true)
          .to(&S::training, &T::ema, &train::EmaOptions::inv_gamma),
      Opt<S>("ema_power", kReal, "ema", "0.6666666666666666",
             "The warm-up's power (use_ema_warmup; 2/3 suits short runs, 3/4 long ones).")
          .min(0, true)
          .to(&S::training, &T::ema, &train::EmaOptions::power),
      Opt<S>("ema_update_interval", kInt, "ema", p1,
             "Update the EMA after every N optimizer steps (SimpleTuner's ema_update_interval).")
          .min(1)
          .to(&S::training, &T::ema, &train::EmaOptions::update_interval),
      Opt<S>("ema_device", kChoice, "ema", "cpu",
             "Where the EMA (fp32) is kept: cpu (no device memory; a copy per update) or accelerator (the training "
             "device).")
          .choices_of<train::EmaDevice>()
          .memory_only()
          .to(&S::training, &T::ema, &train::EmaOptions::device),
      Opt<S>("ema_samples", kBool, "ema", "false",
             "Render the samples during training with the EMA weights instead of the live ones.")
          .safe_on_resume()
          .to(&S::training, &T::ema, &train::EmaOptions::samples),

  };
  return {specs.begin(), specs.end()};
}

}  // namespace fluxtrain::app
