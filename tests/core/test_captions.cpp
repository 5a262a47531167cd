// Captions: file cleaning (BOM, CRLF, Python's split/strip), prefix and suffix, shuffle with keep_tokens,
// caption and tag dropout (kohya's semantics, spec/training.md).
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include "core/error.h"
#include "data/captions.h"
#include "data/rng.h"
#include "temp_dir.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace fluxtrain;
using namespace fluxtrain::data;
using fluxtrain::testing::expect_error;
using fluxtrain::testing::write_file;

TEST(Captions, FileCleaning) {
  CaptionFile c = parse_caption_text("\xEF\xBB\xBF  a photo of ohwx, red  \r\nsecond line\r\n", "c.txt");
  EXPECT_EQ(c.text, "a photo of ohwx, red");
  EXPECT_TRUE(c.found);
  EXPECT_TRUE(c.multiline);
  c = parse_caption_text("one\rtwo", "c.txt");  // old Mac line ends
  EXPECT_EQ(c.text, "one");
  c = parse_caption_text("\xE3\x80\x80wide space\xE3\x80\x80\n\n  \n", "c.txt");  // U+3000 is whitespace to Python
  EXPECT_EQ(c.text, "wide space");
  EXPECT_FALSE(c.multiline);
  c = parse_caption_text("  \n", "c.txt");
  EXPECT_FALSE(c.found);
  EXPECT_TRUE(c.empty);
  expect_error([] { parse_caption_text("caf\xE9 au lait", "latin1.txt"); },
               {"latin1.txt", "UTF-8", "0xE9", "offset 3"});
  expect_error([] { parse_caption_text("ab\xE2\x82", "cut.txt"); }, {"cut.txt", "UTF-8"});
  expect_error([] { parse_caption_text("\xED\xA0\x80", "surrogate.txt"); }, {"surrogate.txt"});
  EXPECT_EQ(utf8_problem("Grüße, 日本語, 🙂"), "");

  const fs::path root = fluxtrain::testing::fresh_dir("captions_file");
  write_file(root / "a.txt", "\xEF\xBB\xBFhello\r\n");
  c = read_caption_file(root / "a.png", ".txt");
  EXPECT_EQ(c.text, "hello");
  EXPECT_EQ(c.path, root / "a.txt");
  EXPECT_FALSE(read_caption_file(root / "b.png", ".txt").found);
}

// A caption file is read with a byte cap: one over 1 MiB is an error naming it and the cap.
TEST(Captions, OversizedCaptionFileIsRefused) {
  const fs::path root = fluxtrain::testing::fresh_dir("captions_cap");
  write_file(root / "ok.txt", std::string(kMaxCaptionFileBytes, 'a'));
  EXPECT_EQ(read_caption_file(root / "ok.png", ".txt").text.size(), kMaxCaptionFileBytes);
  write_file(root / "big.txt", std::string(kMaxCaptionFileBytes + 1, 'a'));
  expect_error([&] { read_caption_file(root / "big.png", ".txt"); },
               {(root / "big.txt").string(), "over the 1 MiB limit for a caption file"});
}

TEST(Captions, PythonSplitAndStrip) {
  EXPECT_EQ(split_on("a,,b", ","), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(split_on("", ","), (std::vector<std::string>{""}));
  EXPECT_EQ(split_on("a||b||", "||"), (std::vector<std::string>{"a", "b", ""}));
  EXPECT_EQ(strip_whitespace(" \t\xC2\xA0x y\xE2\x80\x83 "), "x y");
}

TEST(Captions, PrefixSuffixAndPlainCaption) {
  CaptionSettings s;
  s.caption_prefix = "photo of";
  s.caption_suffix = "high quality";
  DataRng rng(1);
  EXPECT_EQ(process_caption(s, "ohwx, red", 0, rng), "photo of ohwx, red high quality");
  // Without shuffle or tag dropout the text is kept as written (no re-joining).
  CaptionSettings plain;
  EXPECT_EQ(process_caption(plain, "a,b ,  c", 0, rng), "a,b ,  c");
}

TEST(Captions, KeepTokensShuffleIsDeterministic) {
  CaptionSettings s;
  s.shuffle_caption = true;
  s.keep_tokens = 2;
  const std::string caption = "ohwx, man, t1, t2, t3, t4, t5, t6";
  std::set<std::string> seen;
  for (uint64_t k = 0; k < 200; ++k) {
    DataRng a = DataRng::derive({9, k}), b = DataRng::derive({9, k});
    const std::string x = process_caption(s, caption, 0, a);
    EXPECT_EQ(x, process_caption(s, caption, 0, b));
    EXPECT_EQ(x.rfind("ohwx, man, ", 0), 0u) << x;
    auto parts = split_on(x, ", ");
    EXPECT_EQ(std::multiset<std::string>(parts.begin(), parts.end()),
              (std::multiset<std::string>{"ohwx", "man", "t1", "t2", "t3", "t4", "t5", "t6"}));
    seen.insert(x);
  }
  EXPECT_GT(seen.size(), 100u) << "the flexible tags are shuffled";
  // Re-joined with ", " whatever the spacing was; empty tags kept (as kohya).
  s.keep_tokens = 0;
  s.shuffle_caption = false;
  s.caption_tag_dropout_rate = 1e-12;
  DataRng rng(3);
  EXPECT_EQ(process_caption(s, " a ,b,, c ", 0, rng), "a, b, , c");
}

TEST(Captions, KeepTokensSeparator) {
  CaptionSettings s;
  s.shuffle_caption = true;
  s.keep_tokens_separator = "|||";
  s.keep_tokens = 5;  // ignored when the separator is in the caption
  for (uint64_t k = 0; k < 50; ++k) {
    DataRng rng = DataRng::derive({k});
    const std::string x = process_caption(s, "ohwx, man ||| a, b, c, , d ||| best, hq", 0, rng);
    EXPECT_EQ(x.rfind("ohwx, man, ", 0), 0u) << x;
    EXPECT_EQ(x.substr(x.size() - 10), ", best, hq") << x;
    EXPECT_EQ(split_on(x, ", ").size(), 8u) << "empty tags dropped in this form: " << x;
  }
}

TEST(Captions, DropoutRates) {
  CaptionSettings s;
  s.caption_dropout_rate = 0.25;
  int dropped = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    DataRng rng = DataRng::derive({1, uint64_t(i)});
    if (process_caption(s, "a, b", 0, rng).empty()) ++dropped;
  }
  // Binomial(20000, 0.25): sd 61; 5 sd.
  EXPECT_NEAR(dropped, n / 4, 310);

  CaptionSettings t;
  t.caption_tag_dropout_rate = 0.3;
  t.keep_tokens = 1;
  long kept = 0;
  for (int i = 0; i < 5000; ++i) {
    DataRng rng = DataRng::derive({2, uint64_t(i)});
    const std::string x = process_caption(t, "keep, a, b, c, d, e, f, g, h, i, j", 0, rng);
    EXPECT_EQ(x.rfind("keep", 0), 0u);
    kept += long(split_on(x, ", ").size()) - 1;
  }
  // 50000 tag rolls at p(keep) 0.7: mean 35000, sd 102.
  EXPECT_NEAR(kept, 35000, 520);

  CaptionSettings every;
  every.caption_dropout_every_n_epochs = 3;
  DataRng rng(5);
  EXPECT_EQ(process_caption(every, "x", 1, rng), "x");
  EXPECT_EQ(process_caption(every, "x", 2, rng), "");  // the 3rd epoch, counted from 1
  EXPECT_EQ(process_caption(every, "x", 5, rng), "");
}

TEST(Captions, SecondarySeparator) {
  CaptionSettings s;
  s.secondary_separator = ";;;";
  s.shuffle_caption = true;
  DataRng rng(11);
  const std::string x = process_caption(s, "a;;;b, c", 0, rng);
  EXPECT_TRUE(x == "a,b, c" || x == "c, a,b") << x;  // "a;;;b" stays one tag through the shuffle
}
