// Sample prompt files: kohya's line syntax, the TOML and JSON forms, SAMPLE_PROMPTS as a path or as
// the prompt text, and the messages for bad input.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "sample/prompts.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fluxtrain::sample {
namespace {

using fluxtrain::testing::write_file;

using fluxtrain::testing::error_of;

bool any_contains(const std::vector<std::string>& lines, const std::string& needle) {
  for (const auto& line : lines) {
    if (line.find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST(Prompts, LineWithEveryOption) {
  std::vector<std::string> warnings;
  auto prompts = parse_prompts_text(
      "a photo of sks dog, on a beach --w 1280 --h 768 --d 42 --s 28 --g 4.5 --l 2.5 --n blurry, lowres\n",
      "prompts.txt", {}, &warnings);
  ASSERT_EQ(prompts.size(), 1u);
  const SamplePrompt& p = prompts[0];
  EXPECT_EQ(p.prompt, "a photo of sks dog, on a beach");
  EXPECT_EQ(p.width, 1280);
  EXPECT_EQ(p.height, 768);
  ASSERT_TRUE(p.seed.has_value());
  EXPECT_EQ(*p.seed, 42u);
  EXPECT_EQ(p.steps, 28);
  EXPECT_DOUBLE_EQ(p.guidance, 4.5);
  EXPECT_DOUBLE_EQ(p.cfg, 2.5);
  EXPECT_EQ(p.negative, "blurry, lowres");
  EXPECT_EQ(p.origin, "prompts.txt:1");
  EXPECT_TRUE(warnings.empty());
}

TEST(Prompts, DefaultsCommentsBlankLinesAndLineNumbers) {
  PromptDefaults defaults;
  defaults.width = 512;
  defaults.steps = 4;
  defaults.guidance = 0;
  std::string text = "# a comment\n\n   \n  # indented comment\r\nfirst prompt\r\n\nsecond --W 256 --S 8\n";
  auto prompts = parse_prompts_text(text, "p.txt", defaults);
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0].prompt, "first prompt");  // the \r is gone
  EXPECT_EQ(prompts[0].origin, "p.txt:5");
  EXPECT_EQ(prompts[0].width, 512);
  EXPECT_EQ(prompts[0].height, 1024);
  EXPECT_EQ(prompts[0].steps, 4);
  EXPECT_EQ(prompts[0].guidance, 0);
  EXPECT_EQ(prompts[0].cfg, 1.0);
  EXPECT_FALSE(prompts[0].seed.has_value());
  EXPECT_EQ(prompts[1].origin, "p.txt:7");
  EXPECT_EQ(prompts[1].width, 256);  // option letters are case-insensitive, as in kohya
  EXPECT_EQ(prompts[1].steps, 8);
}

TEST(Prompts, BuiltInDefaultsAreFluxs) {
  auto prompts = parse_prompts_text("a cat", "x");
  ASSERT_EQ(prompts.size(), 1u);
  EXPECT_EQ(prompts[0].width, 1024);
  EXPECT_EQ(prompts[0].height, 1024);
  EXPECT_EQ(prompts[0].steps, 20);
  EXPECT_DOUBLE_EQ(prompts[0].guidance, 3.5);
  EXPECT_DOUBLE_EQ(prompts[0].cfg, 1.0);
  EXPECT_EQ(prompts[0].negative, "");
}

TEST(Prompts, SizesRoundDownToSixteenWithAWarning) {
  std::vector<std::string> warnings;
  auto prompts = parse_prompts_text("a cat --w 1000 --h 777", "p.txt", {}, &warnings);
  EXPECT_EQ(prompts[0].width, 992);
  EXPECT_EQ(prompts[0].height, 768);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "p.txt:1: --w 1000 is not a multiple of 16; using 992");
  EXPECT_TRUE(any_contains(warnings, "--h 777"));
}

TEST(Prompts, MalformedValuesNameFileLineAndOption) {
  EXPECT_EQ(error_of([] { parse_prompts_text("# c\n\na cat --w abc", "prompts.txt"); }),
            "prompts.txt:3: --w expects a width in pixels, got 'abc'; write e.g. `--w 1024`");
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --h -5", "p.txt"); }).find("p.txt:1: --h expects"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --s 0", "p.txt"); }).find("--s is 0; expected 1 to 1000"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --s 5000", "p.txt"); }).find("--s is 5000"), std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --w 8", "p.txt"); }).find("--w is 8 pixels; expected 16 to 8192"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --w 99999999999999999999999", "p.txt"); }).find("--w expects"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --g high", "p.txt"); }).find("--g expects a number, got 'high'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --l -2", "p.txt"); }).find("--l is -2; expected 0 or more"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --g nan", "p.txt"); }).find("--g expects a number"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("a cat --d 1.5", "p.txt"); }).find("--d expects a seed"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompts_text("a cat --w=512", "p.txt");
            }).find("write the value after a space, e.g. `--w 512`"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_text("--w 512 --h 512", "p.txt"); }).find("p.txt:1: no prompt text"),
            std::string::npos);
}

TEST(Prompts, IgnoredAndUnknownOptionsWarn) {
  std::vector<std::string> warnings;
  auto prompts = parse_prompts_text("a cat --ss euler_a --zz 3 --w 512", "p.txt", {}, &warnings);
  ASSERT_EQ(prompts.size(), 1u);
  EXPECT_EQ(prompts[0].prompt, "a cat");
  EXPECT_EQ(prompts[0].width, 512);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_EQ(warnings[0], "p.txt:1: --ss is ignored: kohya's option has no effect on Flux LoRA samples");
  EXPECT_NE(warnings[1].find("p.txt:1: unknown option '--zz' is ignored"), std::string::npos);
}

TEST(Prompts, NegativeWithoutCfgWarns) {
  std::vector<std::string> warnings;
  parse_prompts_text("a cat --n ugly", "p.txt", {}, &warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("negative prompt (--n) is unused because the CFG scale (--l) is 1"), std::string::npos);
  warnings.clear();
  auto prompts = parse_prompts_text("a cat --n ugly --l 3", "p.txt", {}, &warnings);
  EXPECT_TRUE(warnings.empty());
  EXPECT_EQ(prompts[0].negative, "ugly");
}

TEST(Prompts, DoubleDashInsideAWordIsNotAnOption) {
  auto prompts = parse_prompts_text("a well--known cat\t--w 512", "p.txt");
  EXPECT_EQ(prompts[0].prompt, "a well--known cat");
  EXPECT_EQ(prompts[0].width, 512);
}

TEST(Prompts, SeedsTakeTheWholeUnsignedRange) {
  auto prompts = parse_prompts_text("a --d 18446744073709551615\nb --d 0", "p.txt");
  EXPECT_EQ(*prompts[0].seed, 18446744073709551615ull);
  EXPECT_EQ(*prompts[1].seed, 0u);
  EXPECT_NE(error_of([] { parse_prompts_text("a --d 18446744073709551616", "p.txt"); }).find("--d expects a seed"),
            std::string::npos);
}

TEST(Prompts, DerivedSeedsAreStablePerIndexAndDiffer) {
  std::set<uint64_t> seen;
  for (size_t i = 0; i < 64; ++i) {
    uint64_t seed = derive_sample_seed(1234, i);
    EXPECT_EQ(seed, derive_sample_seed(1234, i));
    EXPECT_LT(seed, uint64_t{1} << 32);
    seen.insert(seed);
  }
  EXPECT_EQ(seen.size(), 64u);
  EXPECT_NE(derive_sample_seed(1234, 0), derive_sample_seed(1235, 0));
  SamplePrompt with_seed;
  with_seed.seed = 7;
  EXPECT_EQ(sample_seed(with_seed, 1234, 3), 7u);
  EXPECT_EQ(sample_seed(SamplePrompt{}, 1234, 3), derive_sample_seed(1234, 3));
}

TEST(Prompts, TomlKohyaForm) {
  std::vector<std::string> warnings;
  std::string text =
      "[prompt]\n"
      "width = 768\n"
      "sample_steps = 12\n"
      "negative_prompt = \"blurry\"\n"
      "scale = 2.0\n"
      "\n"
      "[[prompt.subset]]\n"
      "prompt = \"a red fox\"\n"
      "seed = 5\n"
      "\n"
      "[[prompt.subset]]\n"
      "prompt = \"a blue jay\"\n"
      "width = 512\n"
      "height = 640\n"
      "guidance_scale = 2.5\n";
  auto prompts = parse_prompts_toml(text, "p.toml", {}, &warnings);
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0].prompt, "a red fox");
  EXPECT_EQ(prompts[0].width, 768);
  EXPECT_EQ(prompts[0].height, 1024);
  EXPECT_EQ(prompts[0].steps, 12);
  EXPECT_EQ(prompts[0].negative, "blurry");
  EXPECT_DOUBLE_EQ(prompts[0].cfg, 2.0);
  EXPECT_EQ(*prompts[0].seed, 5u);
  EXPECT_EQ(prompts[0].origin, "p.toml:7");
  EXPECT_EQ(prompts[1].prompt, "a blue jay");
  EXPECT_EQ(prompts[1].width, 512);  // the subset overrides the table
  EXPECT_EQ(prompts[1].height, 640);
  EXPECT_DOUBLE_EQ(prompts[1].guidance, 2.5);
  EXPECT_FALSE(prompts[1].seed.has_value());
  EXPECT_EQ(prompts[1].origin, "p.toml:11");
  EXPECT_TRUE(warnings.empty());
}

TEST(Prompts, TomlErrors) {
  EXPECT_NE(error_of([] { parse_prompts_toml("prompt = \"x\"\n", "p.toml"); }).find("p.toml: no [prompt] table"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompts_toml("[prompt]\nwidth = \"wide\"\n[[prompt.subset]]\nprompt = \"a\"\n", "p.toml");
            }).find("p.toml:3: 'width' expects a whole number, got \"wide\""),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_toml("[prompt\n", "p.toml"); }).find("p.toml:1:"), std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompts_toml("[prompt]\n[[prompt.subset]]\nwidth = 512\n", "p.toml");
            }).find("p.toml:2: no 'prompt' key"),
            std::string::npos);
  std::vector<std::string> warnings;
  parse_prompts_toml("[prompt]\n[[prompt.subset]]\nprompt = \"a\"\nsample_step = 3\n", "p.toml", {}, &warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("unknown key 'sample_step' is ignored (did you mean 'sample_steps'?)"), std::string::npos);
}

TEST(Prompts, JsonListOfStringsAndObjects) {
  std::string text = R"([
    "a cat --w 512 --d 9",
    {"prompt": "a dog", "height": 768, "seed": 3, "scale": 1.5, "negative_prompt": "dark"}
  ])";
  auto prompts = parse_prompts_json(text, "p.json");
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0].prompt, "a cat");
  EXPECT_EQ(prompts[0].width, 512);
  EXPECT_EQ(*prompts[0].seed, 9u);
  EXPECT_EQ(prompts[0].origin, "p.json: item 0");
  EXPECT_EQ(prompts[1].prompt, "a dog");
  EXPECT_EQ(prompts[1].height, 768);
  EXPECT_EQ(*prompts[1].seed, 3u);
  EXPECT_DOUBLE_EQ(prompts[1].cfg, 1.5);
  EXPECT_EQ(prompts[1].negative, "dark");
  EXPECT_NE(error_of([] { parse_prompts_json("[\n1,\n", "p.json"); }).find("p.json:3: invalid JSON"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_json("[42]", "p.json"); }).find("p.json: item 0: expected a prompt string"),
            std::string::npos);
  EXPECT_NE(
      error_of([] { parse_prompts_json("[{\"prompt\": \"a\", \"seed\": -1}]", "p.json"); }).find("'seed' expects"),
      std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompts_json("[{\"prompt\": \"a\", \"sample_steps\": 0}]", "p.json");
            }).find("p.json: item 0: sample_steps is 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_prompts_json("\"a cat\"", "p.json"); }).find("expected a JSON list"),
            std::string::npos);
}

TEST(Prompts, TableFormsWithoutSubsetsAndInJson) {
  auto single = parse_prompts_toml("[prompt]\nprompt = \"only one\"\nseed = 3\n", "p.toml");
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].prompt, "only one");
  EXPECT_EQ(single[0].origin, "p.toml:1");
  std::vector<std::string> warnings;
  auto json = parse_prompts_json(
      R"({"prompt": {"width": 512, "subset": [{"prompt": "a"}, {"prompt": "b", "width": 256}]}, "extra": 1})", "p.json",
      {}, &warnings);
  ASSERT_EQ(json.size(), 2u);
  EXPECT_EQ(json[0].width, 512);
  EXPECT_EQ(json[1].width, 256);
  EXPECT_EQ(json[1].origin, "p.json: prompt.subset[1]");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("top-level key 'extra' is ignored"), std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompts_json(R"({"prompt": {"subset": [3]}})", "p.json");
            }).find("p.json: prompt.subset[0]: a prompt.subset entry must be a table"),
            std::string::npos);
}

TEST(Prompts, LoadFromFilesByExtension) {
  auto dir = testing::fresh_dir("prompts_load");
  write_file(dir / "p.txt", "\xEF\xBB\xBF# header\none --w 512\ntwo\n");
  write_file(dir / "p.TOML", "[prompt]\n[[prompt.subset]]\nprompt = \"three\"\n");
  write_file(dir / "p.json", "[\"four --h 256\"]");
  write_file(dir / "p.prompts", "five --s 3\n");
  auto txt = load_prompts((dir / "p.txt").string());
  ASSERT_EQ(txt.size(), 2u);
  EXPECT_EQ(txt[0].prompt, "one");  // the byte order mark is not part of the text
  EXPECT_EQ(txt[0].origin, (dir / "p.txt").string() + ":2");
  EXPECT_EQ(load_prompts((dir / "p.TOML").string())[0].prompt, "three");
  EXPECT_EQ(load_prompts((dir / "p.json").string())[0].height, 256);
  EXPECT_EQ(load_prompts((dir / "p.prompts").string())[0].steps, 3);

  write_file(dir / "empty.txt", "# nothing\n\n");
  EXPECT_NE(error_of([&] { load_prompts((dir / "empty.txt").string()); }).find("holds no prompts"), std::string::npos);
  EXPECT_NE(error_of([&] { load_prompts(dir.string()); }).find("is a folder"), std::string::npos);
}

TEST(Prompts, LoadInlineText) {
  auto prompts = load_prompts("a cat --w 512\na dog --d 4\n", {}, "SAMPLE_PROMPTS");
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[0].origin, "SAMPLE_PROMPTS:1");
  EXPECT_EQ(prompts[1].prompt, "a dog");
  EXPECT_EQ(load_prompts("a single prompt").size(), 1u);
  EXPECT_TRUE(load_prompts("").empty());
  EXPECT_TRUE(load_prompts("  \n ").empty());
  EXPECT_NE(error_of([] {
              load_prompts("/no/such/prompts.txt");
            }).find("SAMPLE_PROMPTS: the prompts file '/no/such/prompts.txt' does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_prompts("missing.json"); }).find("does not exist"), std::string::npos);
  EXPECT_NE(error_of([] { load_prompts("~/prompts.txt"); }).find("~ is not expanded"), std::string::npos);
  EXPECT_NE(
      error_of([] { load_prompts("a cat --w x", {}, "--sample-prompts"); }).find("--sample-prompts:1: --w expects"),
      std::string::npos);
}

}  // namespace
}  // namespace fluxtrain::sample
