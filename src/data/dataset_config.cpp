#include "data/dataset_config.h"

#include <toml++/toml.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <climits>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/strings.h"
#include "data/image_folders.h"
#include "data/label_files.h"
#include "data/resolutions.h"

namespace fluxtrain::data {

using nlohmann::json;

namespace {

enum class Type { integer, number, boolean, string, resolution };
// The sides a config resolution may have.
constexpr int kMinSide = 64, kMaxSide = 16384;
enum Level : unsigned { kGeneral = 1, kDataset = 2, kSubset = 4 };
constexpr unsigned kDatasetKey = kGeneral | kDataset;
constexpr unsigned kSubsetKey = kGeneral | kDataset | kSubset;

struct KeySpec {
  const char* name;
  Type type;
  unsigned levels;
};

// kohya's ConfigSanitizer: DATASET_ASCENDABLE (general, dataset), SUBSET_ASCENDABLE + DB_SUBSET_ASCENDABLE +
// DO_SUBSET_ASCENDABLE (every level), DB_SUBSET_DISTINCT (subset only).
constexpr KeySpec kKeys[] = {
    {"batch_size", Type::integer, kDatasetKey},
    {"resolution", Type::resolution, kDatasetKey},
    {"enable_bucket", Type::boolean, kDatasetKey},
    {"min_bucket_reso", Type::integer, kDatasetKey},
    {"max_bucket_reso", Type::integer, kDatasetKey},
    {"bucket_reso_steps", Type::integer, kDatasetKey},
    {"bucket_no_upscale", Type::boolean, kDatasetKey},
    {"num_repeats", Type::integer, kSubsetKey},
    {"caption_extension", Type::string, kSubsetKey},
    {"class_tokens", Type::string, kSubsetKey},
    {"default_caption", Type::string, kSubsetKey},  // fluxtrain's (ai-toolkit's name), not kohya's
    {"recursive", Type::boolean, kSubsetKey},       // fluxtrain's, not kohya's
    {"shuffle_caption", Type::boolean, kSubsetKey},
    {"caption_separator", Type::string, kSubsetKey},
    {"keep_tokens", Type::integer, kSubsetKey},
    {"keep_tokens_separator", Type::string, kSubsetKey},
    {"secondary_separator", Type::string, kSubsetKey},
    {"caption_prefix", Type::string, kSubsetKey},
    {"caption_suffix", Type::string, kSubsetKey},
    {"caption_dropout_rate", Type::number, kSubsetKey},
    {"caption_dropout_every_n_epochs", Type::integer, kSubsetKey},
    {"caption_tag_dropout_rate", Type::number, kSubsetKey},
    {"flip_aug", Type::boolean, kSubsetKey},
    {"random_crop", Type::boolean, kSubsetKey},
    {"validation_split", Type::number, kSubsetKey},
    {"validation_seed", Type::integer, kSubsetKey},
    {"image_dir", Type::string, kSubset},
    {"is_reg", Type::boolean, kSubset},
    {"alpha_mask", Type::boolean, kSubset},
    {"conditioning_data_dir", Type::string, kSubset},
};

// kohya keys fluxtrain does not implement. `noop` is the JSON of the one value that changes nothing (it is
// accepted), "*" when any value is harmless (ignored with a note), nullptr when the key is never accepted.
struct UnsupportedKey {
  const char* name;
  unsigned levels;
  const char* noop;
  const char* why;
};
constexpr UnsupportedKey kUnsupported[] = {
    {"color_aug", kSubsetKey, "false", "colour augmentation is not implemented"},
    {"face_crop_aug_range", kSubsetKey, nullptr, "face-centred crops are not implemented"},
    {"enable_wildcard", kSubsetKey, "false", "{a|b} caption wildcards are not implemented"},
    {"token_warmup_min", kSubsetKey, "1", "token warm-up is not implemented"},
    {"token_warmup_step", kSubsetKey, "0", "token warm-up is not implemented"},
    {"custom_attributes", kSubsetKey, "{}", "custom attributes are not used by any fluxtrain loss"},
    {"cache_info", kSubsetKey, "*", "fluxtrain probes image sizes from the headers quickly enough"},
    {"resize_interpolation", kSubsetKey, nullptr,
     "fluxtrain always resizes with an area filter when shrinking and Lanczos when growing (kohya's default)"},
    {"network_multiplier", kDatasetKey, "1", "per-dataset network multipliers are not implemented"},
    {"metadata_file", kSubset, nullptr,
     "fine-tuning datasets (metadata JSON) are not supported: use image_dir with caption files"},
};

const KeySpec* find_key(const std::string& name) {
  for (const KeySpec& k : kKeys) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

const UnsupportedKey* find_unsupported(const std::string& name) {
  for (const UnsupportedKey& k : kUnsupported) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

const char* level_name(Level level) {
  switch (level) {
    case kGeneral: return "[general]";
    case kDataset: return "[[datasets]]";
    case kSubset: return "[[datasets.subsets]]";
  }
  return "?";
}

std::string where_allowed(unsigned levels) {
  if (levels == kSubset) return "only in [[datasets.subsets]] tables";
  if (levels == kDatasetKey) return "in [general] or [[datasets]] (not in subsets)";
  return "in [general], [[datasets]] or [[datasets.subsets]]";
}

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a floating-point number";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "a table";
    default: return "null";
  }
}

const char* expected_name(Type t) {
  switch (t) {
    case Type::integer: return "an integer (e.g. 4)";
    case Type::number: return "a number (e.g. 0.1)";
    case Type::boolean: return "true or false (without quotes)";
    case Type::string: return "a string (in quotes)";
    case Type::resolution:
      return "an integer, [width, height], or a list of sizes (e.g. 1024, [1280, 768] or [512, 768, 1024])";
  }
  return "?";
}

bool is_int32(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(INT_MAX);
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    return x >= INT_MIN && x <= INT_MAX;
  }
  return false;
}

json toml_to_json(const toml::node& node) {
  if (const auto* table = node.as_table()) {
    json out = json::object();
    for (const auto& [key, value] : *table) out[std::string(key.str())] = toml_to_json(value);
    return out;
  }
  if (const auto* array = node.as_array()) {
    json out = json::array();
    for (const auto& value : *array) out.push_back(toml_to_json(value));
    return out;
  }
  if (const auto* v = node.as_string()) return v->get();
  if (const auto* v = node.as_integer()) return v->get();
  if (const auto* v = node.as_floating_point()) return v->get();
  if (const auto* v = node.as_boolean()) return v->get();
  // Dates and times: no key takes them; keep their text so that the type error can show it.
  std::ostringstream text;
  if (const auto* v = node.as_date())
    text << *v;
  else if (const auto* v = node.as_time())
    text << *v;
  else if (const auto* v = node.as_date_time())
    text << *v;
  return text.str();
}

// A kohya `N_name` folder's repeat count wins over the num_repeats fallback (PARAMS_NUM_REPEATS): say so
// when they differ.
void warn_repeats_fallback_unused(const ConfigFallbacks& fallbacks, const std::filesystem::path& folder, int repeats) {
  if (!fallbacks.num_repeats || *fallbacks.num_repeats == repeats) return;
  const std::string name = folder.filename().string();
  const size_t underscore = name.find('_');
  log::warn(fallbacks.num_repeats_origin, " (", *fallbacks.num_repeats, ") is not used for ", folder.string(),
            ": its folder name sets num_repeats = ", repeats, " (kohya's N_name convention); rename the folder to \"",
            *fallbacks.num_repeats, underscore == std::string::npos ? std::string() : name.substr(underscore),
            "\" to change it");
}

// The config being resolved: the source name for messages and the options.
class Resolver {
 public:
  Resolver(std::string source, const ConfigOptions& options, const json* folder_defaults)
      : source_(std::move(source)), options_(options), folder_defaults_(folder_defaults) {
    if (options.fallbacks.batch_size) {
      fallbacks_["batch_size"] = *options.fallbacks.batch_size == kAutoBatchSize
                                     ? json("auto")
                                     : json(*options.fallbacks.batch_size);
    }
    if (!options.fallbacks.resolutions.empty()) fallbacks_["resolution"] = resolutions_json(options.fallbacks.resolutions);
    // masked_loss without alpha_mask given: the images' alpha is the mask where nothing else is (PARAMS_MASKED_LOSS
    // on a folder of RGBA pictures masks by their alpha).
    if (options.fallbacks.alpha_mask || options.fallbacks.masked_loss)
      fallbacks_["alpha_mask"] = options.fallbacks.alpha_mask.value_or(true);
    if (options.fallbacks.default_caption) fallbacks_["default_caption"] = *options.fallbacks.default_caption;
    if (options.fallbacks.caption_extension) fallbacks_["caption_extension"] = *options.fallbacks.caption_extension;
    if (options.fallbacks.num_repeats) fallbacks_["num_repeats"] = *options.fallbacks.num_repeats;
    if (options.fallbacks.validation_split) fallbacks_["validation_split"] = *options.fallbacks.validation_split;
  }

  DatasetGroupConfig resolve(const json& doc);

 private:
  template <typename... Args>
  [[noreturn]] void error(Args&&... args) const {
    fail("dataset config ", source_, ": ", std::forward<Args>(args)...);
  }

  void check_table(const json& table, Level level, const std::string& where) const;
  void check_value(const KeySpec& key, const json& value, const std::string& where) const;

  struct Layer {
    const json* table;
    std::string origin;
  };
  // The first layer that sets `key` (JSON null counts as unset, as kohya's search_value skips None).
  const json* lookup(const std::vector<Layer>& layers, const char* key, std::string& origin) const;
  template <typename T>
  void take(const std::vector<Layer>& layers, const char* key, T& out, std::map<std::string, std::string>& origin,
            const std::string& where) const;

  // `size`: the one size of a multi-resolution dataset this copy trains at (`sizes` of them).
  DatasetConfig resolve_dataset(const json& general, const json& dataset, int index, const Resolution* size = nullptr,
                                size_t sizes = 1);
  void add_subsets(DatasetConfig& out, const std::vector<Layer>& layers, const std::string& where, bool from_folder);

  std::string source_;
  const ConfigOptions& options_;
  const json* folder_defaults_;
  json fallbacks_ = json::object();
};

void Resolver::check_value(const KeySpec& key, const json& v, const std::string& where) const {
  if (v.is_null()) return;
  auto bad_type = [&] {
    error(where, ": '", key.name, "' = ", json_excerpt(v), " is ", type_name(v), "; expected ",
          expected_name(key.type));
  };
  auto out_of_range = [&](const std::string& expected) {
    error(where, ": '", key.name, "' = ", json_excerpt(v), " is out of range; expected ", expected);
  };
  const std::string name = key.name;
  if (name == "batch_size" && v.is_string() && lower(v.get<std::string>()) == "auto") return;
  switch (key.type) {
    case Type::integer:
      if (!v.is_number_integer()) bad_type();
      if (!is_int32(v)) out_of_range("a value that fits in 32 bits");
      break;
    case Type::number:
      if (!v.is_number()) bad_type();
      break;
    case Type::boolean:
      if (!v.is_boolean()) bad_type();
      break;
    case Type::string:
      if (!v.is_string()) bad_type();
      break;
    case Type::resolution: {
      std::string problem;
      if (parse_resolutions(v, kMinSide, kMaxSide, problem).empty()) {
        if (problem.find("out of range") == std::string::npos) bad_type();
        out_of_range(cat(kMinSide, " to ", kMaxSide, " pixels per side"));
      }
      break;
    }
  }
  auto at_least = [&](int64_t min) {
    if (v.get<int64_t>() < min) out_of_range(cat(min, " or more"));
  };
  if (name == "batch_size" || name == "min_bucket_reso" || name == "max_bucket_reso" || name == "bucket_reso_steps") {
    at_least(1);
  } else if (name == "num_repeats" || name == "keep_tokens" || name == "caption_dropout_every_n_epochs") {
    at_least(0);
  } else if (name == "caption_dropout_rate" || name == "caption_tag_dropout_rate" || name == "validation_split") {
    const double x = v.get<double>();
    if (!(x >= 0.0 && x <= 1.0)) out_of_range(name == "validation_split" ? "a fraction from 0 to 1" : "a rate from 0 to 1");
  } else if (name == "validation_seed") {
    at_least(0);
  } else if (name == "caption_separator" || name == "caption_extension" || name == "image_dir" ||
             name == "conditioning_data_dir") {
    if (v.get<std::string>().empty()) {
      error(where, ": '", key.name, "' is empty; expected ",
            name == "caption_separator"   ? "a separator such as \",\""
            : name == "caption_extension" ? "an extension such as \".txt\""
            : name == "image_dir"         ? "the folder that holds the images"
                                          : "the folder that holds the mask pictures");
    }
  }
}

void Resolver::check_table(const json& table, Level level, const std::string& where) const {
  std::vector<std::string> valid;
  for (const KeySpec& k : kKeys) {
    if (k.levels & level) valid.emplace_back(k.name);
  }
  if (level == kDataset) valid.emplace_back("subsets");
  for (const auto& [name, value] : table.items()) {
    if (level == kDataset && name == "subsets") continue;
    const KeySpec* key = find_key(name);
    if (key != nullptr && (key->levels & level)) {
      check_value(*key, value, where);
      continue;
    }
    if (key != nullptr) {
      error(where, ": '", name, "' cannot be set in ", level_name(level), "; it belongs ", where_allowed(key->levels));
    }
    if (const UnsupportedKey* u = find_unsupported(name)) {
      if (!(u->levels & level)) {
        error(where, ": '", name, "' cannot be set in ", level_name(level), "; kohya allows it ",
              where_allowed(u->levels), " (and fluxtrain does not implement it: ", u->why, ")");
      }
      if (u->noop != nullptr && std::string(u->noop) == "*") {
        log::info("dataset config ", source_, ": ", where, ": '", name, "' has no effect in fluxtrain (", u->why, ")");
        continue;
      }
      if (u->noop != nullptr && value == json::parse(u->noop)) continue;
      error(where, ": '", name, "' = ", json_excerpt(value), " is a kohya option that fluxtrain does not implement (",
            u->why, "); remove it", u->noop != nullptr ? cat(" or set it to ", u->noop) : std::string());
    }
    const std::string hint = closest_match(name, valid);
    error("unknown key '", name, "' in ", where, hint.empty() ? std::string() : cat(" (did you mean '", hint, "'?)"),
          "; valid keys here: ", join(valid));
  }
}

const json* Resolver::lookup(const std::vector<Layer>& layers, const char* key, std::string& origin) const {
  for (const Layer& layer : layers) {
    if (layer.table == nullptr || !layer.table->is_object()) continue;
    auto it = layer.table->find(key);
    if (it != layer.table->end() && !it->is_null()) {
      origin = layer.origin;
      return &*it;
    }
  }
  origin = "default";
  return nullptr;
}

// A checked value of one size (a list of one size included).
Resolution as_resolution(const json& v) {
  std::string problem;
  const std::vector<Resolution> sizes = parse_resolutions(v, kMinSide, kMaxSide, problem);
  return sizes.empty() ? Resolution{} : sizes.front();
}

template <typename T>
void Resolver::take(const std::vector<Layer>& layers, const char* key, T& out,
                    std::map<std::string, std::string>& origin, const std::string& where) const {
  std::string from;
  const json* v = lookup(layers, key, from);
  const std::string name(key);
  const bool is_resolution = name == "resolution";
  const ConfigFallbacks& f = options_.fallbacks;
  const std::string& fallback_name = name == "batch_size"          ? f.batch_size_origin
                                     : is_resolution               ? f.resolution_origin
                                     : name == "caption_extension" ? f.caption_extension_origin
                                     : name == "num_repeats"       ? f.num_repeats_origin
                                     : name == "validation_split"  ? f.validation_split_origin
                                     : name == "alpha_mask"        ? (f.alpha_mask ? f.alpha_mask_origin : f.masked_loss_origin)
                                                                   : f.default_caption_origin;
  origin[key] = from == "fallback" ? fallback_name : from;
  if (v == nullptr) return;
  if constexpr (std::is_same_v<T, Resolution>) {
    out = as_resolution(*v);
  } else if constexpr (std::is_same_v<T, int>) {
    out = v->is_string() ? kAutoBatchSize : v->get<int>();  // only batch_size may say "auto"
  } else {
    out = v->get<T>();
  }
  // kohya's rule: the config wins over the command line; say so when a command-line value goes unused.
  auto fb = fallbacks_.find(key);
  // A bare folder's subset values are its N_name folders' (folder_dataset_config says so itself).
  if (fb == fallbacks_.end() || from == "fallback" || from == "folder default" ||
      (folder_defaults_ != nullptr && from == "subset"))
    return;
  std::string ignored;
  const bool differs = is_resolution ? parse_resolutions(*fb, kMinSide, kMaxSide, ignored) !=
                                           parse_resolutions(*v, kMinSide, kMaxSide, ignored)
                                     : *fb != *v;
  if (differs) {
    log::warn("dataset config ", source_, ": ", where, ": ", fallback_name, " (", fb->dump(),
              ") is not used: the config sets ", key, " = ", v->dump(), " at its ", from, " level",
              " (the dataset config wins, as in kohya)");
  }
}

std::string level_where(int dataset, int subset) {
  if (subset < 0) return cat("[[datasets]] #", dataset + 1);
  return cat("[[datasets.subsets]] #", subset + 1, " of dataset #", dataset + 1);
}

}  // namespace

void Resolver::add_subsets(DatasetConfig& out, const std::vector<Layer>& layers, const std::string& where,
                           bool from_folder) {
  SubsetConfig s;
  auto& o = s.origin;
  std::string image_dir;
  take(layers, "image_dir", image_dir, o, where);
  if (image_dir.empty() && !options_.default_image_dir.empty()) {
    image_dir = options_.default_image_dir.string();  // the fetched DATASET_NAME
    o["image_dir"] = "DATASET_NAME";
  }
  if (image_dir.empty()) {
    error(where,
          " has no image_dir: set image_dir = \"path/to/images\" (the folder that holds the images), or set "
          "DATASET_NAME to fetch the images");
  }
  take(layers, "num_repeats", s.num_repeats, o, where);
  take(layers, "caption_extension", s.caption_extension, o, where);
  take(layers, "class_tokens", s.class_tokens, o, where);
  take(layers, "default_caption", s.default_caption, o, where);
  take(layers, "recursive", s.recursive, o, where);
  take(layers, "shuffle_caption", s.captions.shuffle_caption, o, where);
  take(layers, "caption_separator", s.captions.caption_separator, o, where);
  take(layers, "keep_tokens", s.captions.keep_tokens, o, where);
  take(layers, "keep_tokens_separator", s.captions.keep_tokens_separator, o, where);
  take(layers, "secondary_separator", s.captions.secondary_separator, o, where);
  take(layers, "caption_prefix", s.captions.caption_prefix, o, where);
  take(layers, "caption_suffix", s.captions.caption_suffix, o, where);
  take(layers, "caption_dropout_rate", s.captions.caption_dropout_rate, o, where);
  take(layers, "caption_dropout_every_n_epochs", s.captions.caption_dropout_every_n_epochs, o, where);
  take(layers, "caption_tag_dropout_rate", s.captions.caption_tag_dropout_rate, o, where);
  take(layers, "flip_aug", s.flip_aug, o, where);
  take(layers, "random_crop", s.random_crop, o, where);
  take(layers, "is_reg", s.is_reg, o, where);
  take(layers, "alpha_mask", s.alpha_mask, o, where);
  take(layers, "validation_split", s.validation_split, o, where);
  take(layers, "validation_seed", s.validation_seed, o, where);
  // kohya adds the dot: caption_extension = "txt" means ".txt".
  if (s.caption_extension[0] != '.') s.caption_extension = "." + s.caption_extension;

  std::filesystem::path dir(image_dir);
  if (dir.is_relative() && !options_.base_dir.empty()) dir = options_.base_dir / dir;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    std::string hint;
    const std::filesystem::path config_dir = std::filesystem::path(source_).parent_path();
    if (std::filesystem::path(image_dir).is_relative() && !from_folder &&
        std::filesystem::is_directory(config_dir / image_dir, ec)) {
      hint = cat(" (it exists relative to the config file: ", (config_dir / image_dir).string(),
                 "; relative paths are taken from the current folder, as in kohya)");
    }
    error(where, ": image_dir \"", image_dir, "\" is not a folder", hint.empty() ? ": check the path" : hint);
  }
  s.image_dir = dir;
  std::string masks;
  take(layers, "conditioning_data_dir", masks, o, where);
  if (!masks.empty()) {
    if (!options_.fallbacks.masked_loss) {
      error(where, ": conditioning_data_dir gives the mask pictures of masked_loss, which is off (",
            options_.fallbacks.masked_loss_origin,
            "): set masked_loss=true (PARAMS_MASKED_LOSS=true), or remove conditioning_data_dir (ControlNet "
            "training is not supported)");
    }
    std::filesystem::path m(masks);
    if (m.is_relative() && !options_.base_dir.empty()) m = options_.base_dir / m;
    if (!std::filesystem::is_directory(m, ec))
      error(where, ": conditioning_data_dir \"", masks, "\" is not a folder: it holds masked_loss's mask pictures, ",
            "one per image with the image's name");
    s.conditioning_data_dir = m;
  }

  if (s.num_repeats == 0) {
    log::warn("dataset config ", source_, ": ", where, ": num_repeats = 0, so ", dir.string(),
              " is not used (as in kohya)");
    return;
  }

  // A folder without images of its own but with kohya-style `N_name` subfolders: one subset per subfolder,
  // whose name sets num_repeats and class_tokens unless the subset table sets them itself.
  if (!holds_images(dir)) {
    std::vector<std::string> ignored;
    std::vector<RepeatFolder> folders = repeat_folders(dir, &ignored);
    if (!folders.empty()) {
      for (const std::string& name : ignored) {
        log::warn("folder ", (dir / name).string(), " is ignored: its name does not start with a repeat count ",
                  "(kohya's N_name convention, e.g. \"10_ohwx person\")");
      }
      for (const RepeatFolder& f : folders) {
        SubsetConfig sub = s;
        sub.image_dir = f.path;
        if (!s.conditioning_data_dir.empty()) sub.conditioning_data_dir = s.conditioning_data_dir / f.path.filename();
        if (o["num_repeats"] != "subset") {
          if (options_.fallbacks.num_repeats && o["num_repeats"] == options_.fallbacks.num_repeats_origin)
            warn_repeats_fallback_unused(options_.fallbacks, f.path, f.repeats);
          sub.num_repeats = f.repeats;
          sub.origin["num_repeats"] = "folder name";
        }
        if (o["class_tokens"] != "subset") {
          sub.class_tokens = f.class_tokens;
          sub.origin["class_tokens"] = "folder name";
        }
        out.subsets.push_back(std::move(sub));
      }
      return;
    }
  }
  // kohya reads image_dir alone and would find nothing here; a folder as people ship it (a Kaggle or
  // Roboflow export: images/train/*.jpg) is read with its sub-folders unless the config says otherwise.
  if (o["recursive"] == "default" && !holds_images(dir) && holds_images_below(dir)) {
    s.recursive = true;
    o["recursive"] = "no images at the top of image_dir";
    log::info("dataset config ", source_, ": ", where, ": ", dir.string(),
              " holds no images of its own, so its sub-folders are read (recursive = true; kohya would find no "
              "images here)");
  }
  for (const SubsetConfig& existing : out.subsets) {
    if (existing.image_dir == s.image_dir) {
      log::warn("dataset config ", source_, ": ", where, ": image_dir ", dir.string(),
                " is already a subset of this dataset; the later one is ignored (as in kohya)");
      return;
    }
  }
  out.subsets.push_back(std::move(s));
}

DatasetConfig Resolver::resolve_dataset(const json& general, const json& dataset, int index, const Resolution* size,
                                        size_t sizes) {
  const std::string where = level_where(index, -1);
  const std::string general_origin = folder_defaults_ != nullptr ? "folder" : "general";
  std::vector<Layer> layers = {{&dataset, "dataset"},
                               {&general, general_origin},
                               {&fallbacks_, "fallback"},
                               {folder_defaults_, "folder default"}};
  DatasetConfig d;
  auto& o = d.origin;
  BucketSettings& b = d.buckets;
  take(layers, "batch_size", d.batch_size, o, where);
  if (size == nullptr) {
    take(layers, "resolution", b.resolution, o, where);
  } else {
    std::string from;
    lookup(layers, "resolution", from);
    b.resolution = *size;
    o["resolution"] = cat(from == "fallback" ? options_.fallbacks.resolution_origin : from, ", size ",
                          to_string(*size), " of ", sizes);
  }
  take(layers, "enable_bucket", b.enable_bucket, o, where);
  take(layers, "min_bucket_reso", b.min_bucket_reso, o, where);
  take(layers, "max_bucket_reso", b.max_bucket_reso, o, where);
  take(layers, "bucket_reso_steps", b.bucket_reso_steps, o, where);
  take(layers, "bucket_no_upscale", b.bucket_no_upscale, o, where);

  auto said = [&](const char* key) { return cat(key, " (from ", o[key], ")"); };
  if (b.enable_bucket) {
    const int step = b.bucket_reso_steps;
    if (step % options_.bucket_step_multiple != 0) {
      error(where, ": bucket_reso_steps = ", step, " (from ", o["bucket_reso_steps"], ") is not a multiple of ",
            options_.bucket_step_multiple, ": Flux images need sides divisible by ", options_.bucket_step_multiple,
            " (the checks of kohya's flux_train_network.py); use 32, 64 or 128");
    }
    // kohya's adjust_min_max_bucket_reso_by_steps.
    if (b.min_bucket_reso % step != 0) {
      const int adjusted = b.min_bucket_reso - b.min_bucket_reso % step;
      log::warn(where, ": min_bucket_reso ", b.min_bucket_reso, " is rounded down to ", adjusted,
                ", a multiple of bucket_reso_steps ", step);
      b.min_bucket_reso = adjusted;
    }
    if (b.max_bucket_reso % step != 0) {
      const int adjusted = b.max_bucket_reso + step - b.max_bucket_reso % step;
      log::warn(where, ": max_bucket_reso ", b.max_bucket_reso, " is rounded up to ", adjusted,
                ", a multiple of bucket_reso_steps ", step);
      b.max_bucket_reso = adjusted;
    }
    if (b.min_bucket_reso <= 0) {
      error(where, ": ", said("min_bucket_reso"), " is smaller than bucket_reso_steps ", step,
            ": set min_bucket_reso to ", step, " or more");
    }
    const int small = std::min(b.resolution.width, b.resolution.height);
    const int large = std::max(b.resolution.width, b.resolution.height);
    if (small < b.min_bucket_reso) {
      error(where, ": ", said("min_bucket_reso"), " = ", b.min_bucket_reso, " is larger than the ", said("resolution"),
            "'s shorter side ", small, ": lower min_bucket_reso or raise the resolution");
    }
    if (large > b.max_bucket_reso) {
      error(where, ": ", said("max_bucket_reso"), " = ", b.max_bucket_reso, " is smaller than the ", said("resolution"),
            "'s longer side ", large, ": raise max_bucket_reso (e.g. to ", 2 * large, ") or lower the resolution");
    }
    if (b.bucket_no_upscale && (o["min_bucket_reso"] != "default" || o["max_bucket_reso"] != "default")) {
      log::info(where, ": min_bucket_reso and max_bucket_reso do not apply with bucket_no_upscale (buckets follow the ",
                "image sizes, as in kohya)");
    }
  } else if (b.resolution.width % 16 != 0 || b.resolution.height % 16 != 0) {
    error(where, ": ", said("resolution"), " = ", to_string(b.resolution),
          " is not a multiple of 16 in both sides, which Flux needs without buckets (8x autoencoder, 2x2 patches): "
          "use e.g. ",
          b.resolution.width / 16 * 16, "x", b.resolution.height / 16 * 16, " or enable_bucket = true");
  }

  const json empty = json::object();
  const json& subsets = dataset.contains("subsets") ? dataset["subsets"] : empty;
  if (!subsets.is_array() || subsets.empty()) {
    error(where, " has no subsets: add a [[datasets.subsets]] table with image_dir = \"path/to/images\"");
  }
  for (size_t j = 0; j < subsets.size(); ++j) {
    std::vector<Layer> subset_layers = {{&subsets[j], "subset"}};
    subset_layers.insert(subset_layers.end(), layers.begin(), layers.end());
    add_subsets(d, subset_layers, level_where(index, static_cast<int>(j)), folder_defaults_ != nullptr);
  }
  return d;
}

DatasetGroupConfig Resolver::resolve(const json& doc) {
  if (!doc.is_object())
    error("the top level is ", type_name(doc), "; expected a table with [general] and [[datasets]]");
  for (const auto& [name, value] : doc.items()) {
    if (name == "general" || name == "datasets") continue;
    const KeySpec* key = find_key(name);
    if (key != nullptr) {
      error("'", name, "' is set at the top level; it belongs ", where_allowed(key->levels),
            (key->levels & kGeneral) ? cat(": put it under [general]") : std::string());
    }
    const std::string hint = closest_match(name, {"general", "datasets"});
    error("unknown key '", name, "' at the top level", hint.empty() ? "" : cat(" (did you mean '", hint, "'?)"),
          "; valid keys here: general, datasets");
  }
  const json empty = json::object();
  const json& general = doc.contains("general") ? doc["general"] : empty;
  if (!general.is_object()) error("[general] is ", type_name(general), "; expected a table");
  check_table(general, kGeneral, "[general]");
  if (!doc.contains("datasets") || !doc["datasets"].is_array() || doc["datasets"].empty()) {
    error("no [[datasets]]: add at least one [[datasets]] table with a [[datasets.subsets]] table (image_dir = ...)");
  }
  const json& datasets = doc["datasets"];
  for (size_t i = 0; i < datasets.size(); ++i) {
    const std::string where = level_where(static_cast<int>(i), -1);
    if (!datasets[i].is_object()) error(where, " is ", type_name(datasets[i]), "; expected a table");
    check_table(datasets[i], kDataset, where);
    if (datasets[i].contains("subsets")) {
      const json& subsets = datasets[i]["subsets"];
      if (!subsets.is_array()) error(where, ": 'subsets' is ", type_name(subsets), "; expected an array of tables");
      for (size_t j = 0; j < subsets.size(); ++j) {
        const std::string sub_where = level_where(static_cast<int>(i), static_cast<int>(j));
        if (!subsets[j].is_object()) error(sub_where, " is ", type_name(subsets[j]), "; expected a table");
        check_table(subsets[j], kSubset, sub_where);
      }
    }
  }
  DatasetGroupConfig out;
  out.source = source_;
  for (size_t i = 0; i < datasets.size(); ++i) {
    // Multi-resolution: one dataset per size, each with its own buckets (the images, captions and repeats the
    // same; the latent caches are keyed by the bucket).
    const std::vector<Layer> layers = {{&datasets[i], "dataset"},
                                       {&general, folder_defaults_ != nullptr ? "folder" : "general"},
                                       {&fallbacks_, "fallback"},
                                       {folder_defaults_, "folder default"}};
    std::string from, problem;
    const json* resolution = lookup(layers, "resolution", from);
    const std::vector<Resolution> sizes =
        resolution != nullptr ? parse_resolutions(*resolution, kMinSide, kMaxSide, problem) : std::vector<Resolution>{};
    if (sizes.size() <= 1) {
      out.datasets.push_back(resolve_dataset(general, datasets[i], static_cast<int>(i)));
      continue;
    }
    log::info("dataset config ", source_, ": ", level_where(static_cast<int>(i), -1), " trains at ", sizes.size(),
              " resolutions (", resolutions_text(sizes), "), each with its own buckets");
    for (const Resolution& size : sizes)
      out.datasets.push_back(resolve_dataset(general, datasets[i], static_cast<int>(i), &size, sizes.size()));
  }
  return out;
}

DatasetGroupConfig parse_dataset_config(std::string_view text, ConfigFormat format, const std::string& source,
                                        const ConfigOptions& options) {
  json doc;
  if (format == ConfigFormat::toml) {
    try {
      toml::table table = toml::parse(text, source);
      doc = toml_to_json(table);
    } catch (const toml::parse_error& e) {
      fail("dataset config ", source, ": TOML syntax error at line ", e.source().begin.line, ", column ",
           e.source().begin.column, ": ", e.description());
    }
  } else {
    check_json_depth(text, "dataset config " + source);
    try {
      doc = json::parse(text);
    } catch (const json::parse_error& e) {
      fail("dataset config ", source, ": JSON syntax error at byte ", e.byte, ": ", e.what());
    }
  }
  return Resolver(source, options, nullptr).resolve(doc);
}

DatasetGroupConfig load_dataset_config(const std::filesystem::path& file, const ConfigOptions& options) {
  const std::string ext = lower(file.extension().string());
  if (ext != ".toml" && ext != ".json") {
    fail("dataset config ", file.string(), ": unknown format '", ext, "'; expected a .toml or .json file");
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) fail("dataset config ", file.string(), " does not exist");
  std::ifstream in(file, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  if (!in && !in.eof()) fail("cannot read dataset config ", file.string());
  return parse_dataset_config(content.str(), ext == ".toml" ? ConfigFormat::toml : ConfigFormat::json, file.string(),
                              options);
}

DatasetGroupConfig folder_dataset_config(const std::filesystem::path& dir, const ConfigOptions& options,
                                         const std::filesystem::path& reg_dir) {
  std::error_code ec;
  for (const auto& d : {dir, reg_dir}) {
    if (!d.empty() && !std::filesystem::is_directory(d, ec)) fail("image folder ", d.string(), " does not exist");
  }
  // A smaller resolution given as a fallback (--resolution, PARAMS_RESOLUTION) lowers the bucket floor with
  // it, so a small training resolution works on a bare folder too.
  int min_bucket = 256;
  for (const Resolution& r : options.fallbacks.resolutions) min_bucket = std::min({min_bucket, r.width, r.height});
  const json defaults = {{"resolution", 1024},      {"enable_bucket", true},   {"min_bucket_reso", min_bucket},
                         {"max_bucket_reso", 2048}, {"bucket_reso_steps", 64}, {"caption_extension", ".txt"},
                         {"recursive", true}};
  json subsets = json::array();
  auto add_folder = [&](const std::filesystem::path& root, bool is_reg) {
    std::vector<std::string> ignored;
    std::vector<RepeatFolder> folders = repeat_folders(root, &ignored);
    if (folders.empty()) {
      subsets.push_back({{"image_dir", root.string()}, {"is_reg", is_reg}});
      return;
    }
    for (const std::string& name : ignored) {
      log::warn("folder ", (root / name).string(), " is ignored: its name does not start with a repeat count ",
                "(kohya's N_name convention, e.g. \"10_ohwx person\")");
    }
    if (holds_images(root)) {
      log::warn("the images directly in ", root.string(), " are not used: with N_name subfolders only those are read ",
                "(as kohya's train_data_dir); move them into a subfolder such as \"1_", root.filename().string(), "\"");
    }
    for (const RepeatFolder& f : folders) {
      subsets.push_back({{"image_dir", f.path.string()},
                         {"num_repeats", f.repeats},
                         {"class_tokens", f.class_tokens},
                         {"is_reg", is_reg}});
    }
  };
  add_folder(dir, false);
  if (!reg_dir.empty()) add_folder(reg_dir, true);
  const json doc = {{"datasets", json::array({json{{"subsets", subsets}}})}};
  DatasetGroupConfig out = Resolver(dir.string(), options, &defaults).resolve(doc);
  // The subset values written above come from the folder names, not from a file.
  for (DatasetConfig& d : out.datasets) {
    for (SubsetConfig& s : d.subsets) {
      if (options.fallbacks.num_repeats && s.origin["num_repeats"] == "subset")
        warn_repeats_fallback_unused(options.fallbacks, s.image_dir, s.num_repeats);
      for (auto& [key, origin] : s.origin) {
        if (origin == "subset") origin = (key == "num_repeats" || key == "class_tokens") ? "folder name" : "folder";
      }
    }
  }
  return out;
}

}  // namespace fluxtrain::data
