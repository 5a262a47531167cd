// Sample prompts for the images generated during training, in kohya-ss/sd-scripts' formats
// (library/train_util.py `line_to_prompt_dict`, `load_prompts`; Flux defaults from
// library/flux_train_utils.py `sample_image_inference`), torch-free.
//
// Text files, one prompt per line:
//   a photo of sks dog on a beach --w 1280 --h 768 --d 42 --s 28 --g 3.5 --l 1.0 --n blurry, lowres
// Options start with " --" and a letter (case-insensitive):
//   --w / --h  width / height in pixels (rounded down to a multiple of 16, with a warning)
//   --d        seed (unset: derived from the run seed and the prompt's index, see derive_sample_seed)
//   --s        sampling steps (1..1000)
//   --g        Flux's embedded (distilled) guidance
//   --l        true classifier-free guidance scale; 1 = off (the negative prompt is then unused)
//   --n        negative prompt (the rest of the option, up to the next " --")
// kohya's other letters (--ss sampler, --cn control image, --ctr, --rcfg, --fs, --i, --f) do nothing
// for Flux LoRA samples: they are ignored with a warning naming the file and line. An unknown letter is
// also a warning (kohya ignores it silently); a known letter with a malformed value is an error.
// `#` at the start of a line (after blanks) makes it a comment; blank lines are skipped.
//
// .toml files: a [prompt] table of defaults and [[prompt.subset]] entries; .json files: a list whose
// items are prompt lines (strings, with options as above) or objects. Both use kohya's keys: prompt,
// negative_prompt, width, height, seed, sample_steps, guidance_scale, scale (the CFG scale).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace fluxtrain::sample {

struct SamplePrompt {
  std::string prompt;
  std::string negative;
  int width = 1024;
  int height = 1024;
  int steps = 20;
  double guidance = 3.5;
  double cfg = 1.0;
  std::optional<uint64_t> seed;
  // Where the prompt came from, for messages: "prompts.txt:3", "prompts.toml:12", "SAMPLE_PROMPTS:1".
  std::string origin;
};

// Values for the options a prompt does not set. kohya's Flux defaults are 512x512, 20 steps, guidance
// 3.5, CFG 1.0; fluxtrain samples at 1024x1024 by default because Flux.1 is trained at ~1 MP and looks
// degraded at 512 px.
struct PromptDefaults {
  int width = 1024;
  int height = 1024;
  int steps = 20;
  double guidance = 3.5;
  double cfg = 1.0;
  std::string negative;
  std::optional<uint64_t> seed;
};

// Warnings (size rounded, option ignored, ...) go to the log, or into `warnings` when it is given.

// Parses prompt lines (the .txt format). `source_name` names the text in messages ("prompts.txt",
// "SAMPLE_PROMPTS"). Throws Error naming source and line for a malformed value.
std::vector<SamplePrompt> parse_prompts_text(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults = {},
                                             std::vector<std::string>* warnings = nullptr);

// Parses the TOML ([prompt] + [[prompt.subset]]) or JSON (a list; or an object shaped like the TOML)
// forms. A subset's keys override the [prompt] table's (kohya refuses a key present in both).
std::vector<SamplePrompt> parse_prompts_toml(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults = {},
                                             std::vector<std::string>* warnings = nullptr);
std::vector<SamplePrompt> parse_prompts_json(const std::string& text, const std::string& source_name,
                                             const PromptDefaults& defaults = {},
                                             std::vector<std::string>* warnings = nullptr);

// What SAMPLE_PROMPTS / --sample-prompts holds: the path of an existing file (.toml, .json, anything else
// read as prompt lines), or else the prompt lines themselves (one prompt per line; options allowed).
// A single word that looks like a file name (ends in .txt/.toml/.json, or starts with / ./ ../ ~/) but
// names no file is an error rather than a prompt. "" (or only blanks) gives no prompts; a file with no
// prompts is an error. `source_name` names the setting in messages for inline text.
std::vector<SamplePrompt> load_prompts(const std::string& path_or_text, const PromptDefaults& defaults = {},
                                       const std::string& source_name = "SAMPLE_PROMPTS",
                                       std::vector<std::string>* warnings = nullptr);

// The seed of a prompt without --d: a function of the run seed and the prompt's 0-based index only (not
// of the step), so that every sampling round of a run draws the same noise for the same prompt and the
// pictures show the training's progress alone. SplitMix64 of (run_seed, index), kept to 32 bits so
// it can be typed into any UI (some lose precision past 2^53).
uint64_t derive_sample_seed(uint64_t run_seed, size_t index);

// The prompt's seed, or the derived one.
uint64_t sample_seed(const SamplePrompt& prompt, uint64_t run_seed, size_t index);

}  // namespace fluxtrain::sample
