#include "sample/prompts.h"

#include <toml++/toml.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/json_guard.h"
#include "core/log.h"
#include "core/strings.h"

namespace fluxtrain::sample {
namespace {

namespace fs = std::filesystem;

constexpr int kMinSize = 16;    // one Flux patch: 8x AE downsampling, then 2x2 patches
constexpr int kMaxSize = 8192;  // far past what Flux.1 can draw; catches typos before a huge allocation
constexpr int kSizeMultiple = 16;
constexpr int kMaxSteps = 1000;  // kohya clamps --s to 1..1000

// kohya letters that mean something for other models or samplers but nothing for Flux LoRA samples.
const char* const kIgnoredLetters[] = {"ss", "cn", "ctr", "rcfg", "fs", "i", "f", "ci", "fsa", "ofps", "skb"};
const char* const kIgnoredKeys[] = {
    "sample_sampler", "controlnet_image", "cfg_trunc_ratio", "renorm_cfg",         "flow_shift", "discrete_flow_shift",
    "image",          "image_path",       "frame_count",     "control_video_path", "enum"};
const std::vector<std::string> kKeys = {"prompt", "negative_prompt", "width",          "height",
                                        "seed",   "sample_steps",    "guidance_scale", "scale"};

struct Warner {
  std::vector<std::string>* sink;
  void operator()(const std::string& message) const {
    if (sink) {
      sink->push_back(message);
    } else {
      log::warn(message);
    }
  }
};

bool all_digits(const std::string& text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Digits only (kohya's `\d+`), as an unsigned 64-bit number; nullopt when malformed or too large.
std::optional<uint64_t> parse_unsigned(const std::string& text) {
  if (!all_digits(text)) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno == ERANGE || *end != '\0') return std::nullopt;
  return value;
}

std::optional<double> parse_number(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (*end != '\0' || !std::isfinite(value)) return std::nullopt;
  return value;
}

SamplePrompt start_prompt(const PromptDefaults& defaults, std::string origin) {
  SamplePrompt p;
  p.negative = defaults.negative;
  p.width = defaults.width;
  p.height = defaults.height;
  p.steps = defaults.steps;
  p.guidance = defaults.guidance;
  p.cfg = defaults.cfg;
  p.seed = defaults.seed;
  p.origin = std::move(origin);
  return p;
}

// How the settings are spelled in the source, for messages: "--w" in prompt lines, "width" in TOML/JSON.
struct Spelling {
  const char* width;
  const char* height;
  const char* steps;
  const char* guidance;
  const char* cfg;
  const char* negative;
};
const Spelling kLineSpelling{"--w", "--h", "--s", "--g", "--l", "--n"};
const Spelling kKeySpelling{"width", "height", "sample_steps", "guidance_scale", "scale", "negative_prompt"};

// The allowed ranges, checked where a value is read so that the message shows what was written.
void check_size(int64_t value, const std::string& where, const char* name) {
  if (value < kMinSize || value > kMaxSize) {
    fail(where, ": ", name, " is ", value, " pixels; expected ", kMinSize, " to ", kMaxSize,
         " (Flux draws in 16-pixel patches; about 1 megapixel, e.g. 1024 x 1024, is its native size)");
  }
}
void check_steps(int64_t value, const std::string& where, const char* name) {
  if (value < 1 || value > kMaxSteps) {
    fail(where, ": ", name, " is ", value, "; expected 1 to ", kMaxSteps,
         " sampling steps (Flux.1-dev: ~20-30, schnell: ~4)");
  }
}
void check_scale(double value, const std::string& where, const char* name, const char* hint) {
  if (!(value >= 0) || !std::isfinite(value))
    fail(where, ": ", name, " is ", value, "; expected 0 or more (", hint, ")");
}
const char* const kGuidanceHint = "Flux.1-dev: ~3.5";
const char* const kCfgHint = "1 = off, the negative prompt is then unused";

// Rounding and checks shared by every form, after the prompt's own settings are applied (the defaults
// are checked here too, since a prompt may not set them).
void finish_prompt(SamplePrompt& p, bool negative_given, const Spelling& names, const Warner& warn) {
  const std::string& where = p.origin;
  auto size = [&](int& value, const char* name) {
    check_size(value, where, name);
    if (value % kSizeMultiple != 0) {
      int rounded = value - value % kSizeMultiple;
      warn(cat(where, ": ", name, " ", value, " is not a multiple of ", kSizeMultiple, "; using ", rounded));
      value = rounded;
    }
  };
  size(p.width, names.width);
  size(p.height, names.height);
  check_steps(p.steps, where, names.steps);
  check_scale(p.guidance, where, names.guidance, kGuidanceHint);
  check_scale(p.cfg, where, names.cfg, kCfgHint);
  if (negative_given && !p.negative.empty() && p.cfg == 1.0) {
    warn(cat(where, ": the negative prompt (", names.negative, ") is unused because the CFG scale (", names.cfg,
             ") is 1; set ", names.cfg, " above 1 to use it (each step then runs the model twice)"));
  }
}

int parse_count(const std::string& value, const std::string& where, const char* name, const char* what,
                const char* example, bool is_size) {
  std::optional<uint64_t> parsed = parse_unsigned(value);
  if (!parsed) fail(where, ": ", name, " expects ", what, ", got '", value, "'; write e.g. `", example, "`");
  int64_t shown = static_cast<int64_t>(std::min<uint64_t>(*parsed, uint64_t{1} << 40));
  if (is_size) {
    check_size(shown, where, name);
  } else {
    check_steps(shown, where, name);
  }
  return static_cast<int>(shown);
}

// One prompt line, already trimmed and not a comment (kohya `line_to_prompt_dict`: the text is split at
// " --"; the first piece is the prompt, each other piece is a letter and its value).
SamplePrompt parse_line(const std::string& line, const std::string& where, const PromptDefaults& defaults,
                        const Warner& warn) {
  std::vector<std::string> pieces;
  size_t piece_start = 0;
  for (size_t i = 0; i + 2 < line.size(); ++i) {
    if (std::isspace(static_cast<unsigned char>(line[i])) && line[i + 1] == '-' && line[i + 2] == '-') {
      pieces.push_back(line.substr(piece_start, i - piece_start));
      piece_start = i + 3;
      i += 2;
    }
  }
  pieces.push_back(line.substr(piece_start));

  SamplePrompt p = start_prompt(defaults, where);
  p.prompt = trim(pieces[0]);
  if (p.prompt.empty() || p.prompt.rfind("--", 0) == 0) {
    fail(where, ": no prompt text before the options; a line is `a photo of sks dog --w 1024 --h 1024 --d 42`");
  }
  bool negative_given = false;
  for (size_t k = 1; k < pieces.size(); ++k) {
    std::string option = trim(pieces[k]);
    size_t space = 0;
    while (space < option.size() && !std::isspace(static_cast<unsigned char>(option[space]))) ++space;
    std::string name = lower(option.substr(0, space));
    std::string value = trim(std::string_view(option).substr(space));
    if (name == "w") {
      p.width = parse_count(value, where, "--w", "a width in pixels", "--w 1024", true);
    } else if (name == "h") {
      p.height = parse_count(value, where, "--h", "a height in pixels", "--h 1024", true);
    } else if (name == "s") {
      p.steps = parse_count(value, where, "--s", "a number of sampling steps", "--s 20", false);
    } else if (name == "d") {
      std::optional<uint64_t> seed = parse_unsigned(value);
      if (!seed) {
        fail(where, ": --d expects a seed (a whole number from 0 to 18446744073709551615), got '", value,
             "'; write e.g. `--d 42`");
      }
      p.seed = *seed;
    } else if (name == "g" || name == "l") {
      std::optional<double> number = parse_number(value);
      if (!number) {
        fail(where, ": --", name, " expects a number, got '", value, "'; write e.g. `--", name,
             name == "g" ? " 3.5`" : " 1.0`");
      }
      (name == "g" ? p.guidance : p.cfg) = *number;
      check_scale(*number, where, name == "g" ? "--g" : "--l", name == "g" ? kGuidanceHint : kCfgHint);
    } else if (name == "n") {
      p.negative = value;
      negative_given = true;
    } else if (std::find(std::begin(kIgnoredLetters), std::end(kIgnoredLetters), name) != std::end(kIgnoredLetters)) {
      warn(cat(where, ": --", name, " is ignored: kohya's option has no effect on Flux LoRA samples"));
    } else {
      size_t equals = name.find('=');
      if (equals != std::string::npos) {
        std::string letter = name.substr(0, equals);
        fail(where, ": '--", option, "': write the value after a space, e.g. `--", letter, " ",
             option.substr(equals + 1), "`");
      }
      warn(cat(where, ": unknown option '--", option.substr(0, space),
               "' is ignored; the options are --w --h --d --s --g --l --n"));
    }
  }
  finish_prompt(p, negative_given, kLineSpelling, warn);
  return p;
}

// One prompt given as an object with kohya's keys (TOML subset merged over [prompt], or a JSON item).
SamplePrompt prompt_from_object(const nlohmann::json& object, const std::string& where, const PromptDefaults& defaults,
                                const Warner& warn) {
  SamplePrompt p = start_prompt(defaults, where);
  bool has_prompt = false;
  bool negative_given = false;
  auto integer = [&](const std::string& key, const nlohmann::json& value) -> int64_t {
    if (!value.is_number_integer()) fail(where, ": '", key, "' expects a whole number, got ", json_excerpt(value));
    if (value.is_number_unsigned() && value.get<uint64_t>() > (uint64_t{1} << 40)) return int64_t{1} << 40;
    return value.get<int64_t>();
  };
  auto number = [&](const std::string& key, const nlohmann::json& value) -> double {
    if (!value.is_number()) fail(where, ": '", key, "' expects a number, got ", json_excerpt(value));
    return value.get<double>();
  };
  auto text = [&](const std::string& key, const nlohmann::json& value) -> std::string {
    if (!value.is_string()) fail(where, ": '", key, "' expects a string, got ", json_excerpt(value));
    return value.get<std::string>();
  };
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();
    if (key == "prompt") {
      p.prompt = trim(text(key, value));
      has_prompt = true;
    } else if (key == "negative_prompt") {
      p.negative = trim(text(key, value));
      negative_given = true;
    } else if (key == "width" || key == "height") {
      int64_t size = integer(key, value);
      check_size(size, where, key.c_str());
      (key == "width" ? p.width : p.height) = static_cast<int>(size);
    } else if (key == "sample_steps") {
      int64_t steps = integer(key, value);
      check_steps(steps, where, "sample_steps");
      p.steps = static_cast<int>(steps);
    } else if (key == "seed") {
      if (!value.is_number_integer() || (!value.is_number_unsigned() && value.get<int64_t>() < 0)) {
        fail(where, ": 'seed' expects a whole number from 0 to 18446744073709551615, got ", json_excerpt(value));
      }
      p.seed = value.get<uint64_t>();
    } else if (key == "guidance_scale") {
      p.guidance = number(key, value);
      check_scale(p.guidance, where, "guidance_scale", kGuidanceHint);
    } else if (key == "scale") {
      p.cfg = number(key, value);
      check_scale(p.cfg, where, "scale", kCfgHint);
    } else if (key == "subset") {
      // The TOML form's list of prompts, handled by the caller.
    } else if (std::find(std::begin(kIgnoredKeys), std::end(kIgnoredKeys), key) != std::end(kIgnoredKeys)) {
      warn(cat(where, ": '", key, "' is ignored: kohya's key has no effect on Flux LoRA samples"));
    } else {
      std::string guess = closest_match(key, kKeys);
      warn(cat(where, ": unknown key '", key, "' is ignored", guess.empty() ? "" : " (did you mean '" + guess + "'?)",
               "; the keys are prompt, negative_prompt, width, height, seed, sample_steps, guidance_scale, scale"));
    }
  }
  if (!has_prompt || p.prompt.empty()) {
    fail(where, has_prompt ? ": 'prompt' is empty" : ": no 'prompt' key",
         "; each entry needs one, e.g. prompt = \"a photo of sks dog\"");
  }
  finish_prompt(p, negative_given, kKeySpelling, warn);
  return p;
}

// kohya's TOML/JSON object form: {"prompt": {defaults..., "subset": [{...}, ...]}}; each subset's keys
// override the table's. `where_of(i)` names subset i in messages.
template <typename WhereOf>
std::vector<SamplePrompt> prompts_from_table(const nlohmann::json& table, const std::string& source_name,
                                             WhereOf where_of, const PromptDefaults& defaults, const Warner& warn) {
  const char* shape =
      "expected kohya's form: a [prompt] table of shared settings and [[prompt.subset]] entries, "
      "each with at least `prompt = \"...\"`";
  if (!table.contains("prompt") || !table["prompt"].is_object()) fail(source_name, ": no [prompt] table; ", shape);
  const nlohmann::json& shared = table["prompt"];
  for (const auto& item : table.items()) {
    if (item.key() != "prompt") warn(cat(source_name, ": top-level key '", item.key(), "' is ignored (", shape, ")"));
  }
  std::vector<SamplePrompt> prompts;
  if (!shared.contains("subset")) {
    prompts.push_back(prompt_from_object(shared, where_of(-1), defaults, warn));
    return prompts;
  }
  const nlohmann::json& subsets = shared["subset"];
  if (!subsets.is_array()) fail(source_name, ": prompt.subset must be a list of tables; ", shape);
  for (size_t i = 0; i < subsets.size(); ++i) {
    if (!subsets[i].is_object())
      fail(where_of(static_cast<int>(i)), ": a prompt.subset entry must be a table; ", shape);
    nlohmann::json merged = shared;
    merged.erase("subset");
    for (const auto& item : subsets[i].items()) merged[item.key()] = item.value();
    prompts.push_back(prompt_from_object(merged, where_of(static_cast<int>(i)), defaults, warn));
  }
  return prompts;
}

nlohmann::json toml_scalar(const toml::node& node, const std::string& where, const std::string& key) {
  if (auto v = node.as_string()) return v->get();
  if (auto v = node.as_integer()) return v->get();
  if (auto v = node.as_floating_point()) return v->get();
  if (auto v = node.as_boolean()) return v->get();
  fail(where, ": '", key, "' must be a string or a number");
}

nlohmann::json toml_table_json(const toml::table& table, const std::string& where) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [key, node] : table) {
    std::string name(key.str());
    if (name == "subset") continue;
    out[name] = toml_scalar(node, where, name);
  }
  return out;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read the prompts file ", path.string(), ": ", std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) fail("cannot read the prompts file ", path.string(), ": read error");
  std::string text = out.str();
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // UTF-8 byte order mark
  return text;
}

bool looks_like_path(const std::string& text) {
  if (text.find('\n') != std::string::npos) return false;
  std::string low = lower(text);
  for (const char* ext : {".txt", ".toml", ".json"}) {
    std::string e(ext);
    if (low.size() > e.size() && low.compare(low.size() - e.size(), e.size(), e) == 0) return true;
  }
  for (const char* prefix : {"/", "./", "../", "~/"}) {
    if (text.rfind(prefix, 0) == 0 && text.find(' ') == std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::vector<SamplePrompt> parse_prompts_text(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults, std::vector<std::string>* warnings) {
  Warner warn{warnings};
  std::vector<SamplePrompt> prompts;
  size_t line_start = 0;
  int line_number = 0;
  while (line_start <= text.size()) {
    size_t end = text.find('\n', line_start);
    if (end == std::string::npos) end = text.size();
    ++line_number;
    std::string line = trim(std::string_view(text).substr(line_start, end - line_start));
    line_start = end + 1;
    if (line.empty() || line[0] == '#') continue;
    prompts.push_back(parse_line(line, cat(source_name, ":", line_number), defaults, warn));
  }
  return prompts;
}

std::vector<SamplePrompt> parse_prompts_toml(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults, std::vector<std::string>* warnings) {
  Warner warn{warnings};
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    fail(source_name, ":", e.source().begin.line, ":", e.source().begin.column, ": invalid TOML: ", e.description());
  }
  auto line_of = [&](const toml::node& node) { return cat(source_name, ":", node.source().begin.line); };
  const toml::table* prompt = root["prompt"].as_table();
  nlohmann::json table = nlohmann::json::object();
  std::vector<std::string> subset_where;
  for (const auto& [key, node] : root) {
    if (key.str() != "prompt") table[std::string(key.str())] = nullptr;
  }
  if (prompt) {
    table["prompt"] = toml_table_json(*prompt, line_of(*prompt));
    if (const toml::node* subset = prompt->get("subset")) {
      const toml::array* list = subset->as_array();
      if (!list) fail(line_of(*subset), ": prompt.subset must be a list of tables ([[prompt.subset]] entries)");
      nlohmann::json entries = nlohmann::json::array();
      for (const toml::node& entry : *list) {
        const toml::table* entry_table = entry.as_table();
        if (!entry_table) fail(line_of(entry), ": a prompt.subset entry must be a table ([[prompt.subset]])");
        entries.push_back(toml_table_json(*entry_table, line_of(entry)));
        subset_where.push_back(line_of(entry));
      }
      table["prompt"]["subset"] = entries;
    }
  }
  std::string table_where = prompt ? line_of(*prompt) : source_name;
  auto where_of = [&](int i) { return i < 0 ? table_where : subset_where[static_cast<size_t>(i)]; };
  return prompts_from_table(table, source_name, where_of, defaults, warn);
}

std::vector<SamplePrompt> parse_prompts_json(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults, std::vector<std::string>* warnings) {
  Warner warn{warnings};
  check_json_depth(text, source_name);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    size_t upto = std::min<size_t>(e.byte > 0 ? e.byte - 1 : 0, text.size());
    long line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(upto), '\n');
    fail(source_name, ":", line, ": invalid JSON: ", e.what());
  }
  if (root.is_object()) {
    auto where_of = [&](int i) { return i < 0 ? source_name : cat(source_name, ": prompt.subset[", i, "]"); };
    return prompts_from_table(root, source_name, where_of, defaults, warn);
  }
  if (!root.is_array()) {
    fail(source_name,
         ": expected a JSON list of prompts (strings such as \"a photo of sks dog --w 1024\", or objects "
         "such as {\"prompt\": \"a photo of sks dog\", \"width\": 1024}), got ",
         root.type_name());
  }
  std::vector<SamplePrompt> prompts;
  for (size_t i = 0; i < root.size(); ++i) {
    std::string where = cat(source_name, ": item ", i);
    const nlohmann::json& item = root[i];
    if (item.is_string()) {
      std::string line = trim(item.get<std::string>());
      if (line.empty()) fail(where, ": empty prompt");
      prompts.push_back(parse_line(line, where, defaults, warn));
    } else if (item.is_object()) {
      prompts.push_back(prompt_from_object(item, where, defaults, warn));
    } else {
      fail(where, ": expected a prompt string or an object with a 'prompt' key, got ", json_excerpt(item));
    }
  }
  return prompts;
}

std::vector<SamplePrompt> load_prompts(const std::string& path_or_text, const PromptDefaults& defaults,
                                       const std::string& source_name, std::vector<std::string>* warnings) {
  std::string trimmed = trim(path_or_text);
  if (trimmed.empty()) return {};
  std::error_code ec;
  bool single_line = trimmed.find('\n') == std::string::npos;
  fs::file_status status = single_line && trimmed.size() < 4096 ? fs::status(trimmed, ec) : fs::file_status{};
  if (fs::is_directory(status)) {
    fail(source_name, ": '", trimmed,
         "' is a folder; give a prompts file (.txt, .toml or .json) or the prompt text itself");
  }
  if (!fs::exists(status)) {
    if (single_line && looks_like_path(trimmed)) {
      fail(source_name, ": the prompts file '", trimmed, "' does not exist",
           trimmed.rfind("~/", 0) == 0 ? " (~ is not expanded here: write the full path)" : "",
           "; give the path of an existing file, or the prompt text itself (one prompt per line)");
    }
    return parse_prompts_text(path_or_text, source_name, defaults, warnings);
  }
  std::string text = read_file(trimmed);
  std::string extension = lower(fs::path(trimmed).extension().string());
  std::vector<SamplePrompt> prompts;
  if (extension == ".toml") {
    prompts = parse_prompts_toml(text, trimmed, defaults, warnings);
  } else if (extension == ".json") {
    prompts = parse_prompts_json(text, trimmed, defaults, warnings);
  } else {
    prompts = parse_prompts_text(text, trimmed, defaults, warnings);
  }
  if (prompts.empty()) {
    fail(trimmed,
         ": the prompts file holds no prompts (every line is blank or a # comment); "
         "write one prompt per line, e.g. `a photo of sks dog --w 1024 --h 1024 --d 42`");
  }
  return prompts;
}

uint64_t derive_sample_seed(uint64_t run_seed, size_t index) {
  // SplitMix64 (Steele, Lea, Flood 2014) of the run seed advanced by index + 1 golden-ratio steps.
  uint64_t z = run_seed + (static_cast<uint64_t>(index) + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z & 0xFFFFFFFFull;
}

uint64_t sample_seed(const SamplePrompt& prompt, uint64_t run_seed, size_t index) {
  return prompt.seed ? *prompt.seed : derive_sample_seed(run_seed, index);
}

}  // namespace fluxtrain::sample
