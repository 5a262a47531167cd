// The tokenizers on hand-checked cases (ids looked up in the shipped vocab.json / spiece.model), their
// errors, the asset search, SHA-256 and the checksums of the shipped vocabularies. Exact agreement with
// transformers over hundreds of prompts is tests/parity/test_tokenizers.py.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>

#include "app/knob_options.h"
#include "core/assets.h"
#include "core/error.h"
#include "core/sha256.h"
#include "temp_dir.h"
#include "test_util.h"
#include "tokenizers/clip_bpe.h"
#include "tokenizers/t5_unigram.h"

namespace fluxtrain {
namespace {

using fluxtrain::testing::error_of;

namespace fs = std::filesystem;

using testing::fresh_dir;

void write(const fs::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
}

::testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

const ClipTokenizer& clip() {
  static const ClipTokenizer tokenizer = ClipTokenizer::from_assets();
  return tokenizer;
}

const T5Tokenizer& t5() {
  static const T5Tokenizer tokenizer = T5Tokenizer::from_assets();
  return tokenizer;
}

TEST(Sha256, KnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million;
  std::string chunk(1001, 'a');
  for (int i = 0; i < 1000; ++i) million.update(chunk.data(), i % 2 ? 999 : 1001);  // odd splits on purpose
  EXPECT_EQ(million.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// The CPU's SHA extensions (where it has them) against the portable code: the known vectors under both,
// and random inputs of every length up to a few blocks plus a large one, fed in uneven pieces.
TEST(Sha256, HardwareAndPortableAgree) {
  std::cout << "sha256 implementation: " << sha256_implementation() << std::endl;
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  rng.seed(seed);
  auto digest = [](const std::string& data, bool hardware, size_t piece) {
    set_sha256_hardware(hardware);
    Sha256 hash;
    for (size_t at = 0; at < data.size(); at += piece) hash.update(data.data() + at, std::min(piece, data.size() - at));
    std::string hex = hash.hex_digest();
    set_sha256_hardware(true);
    return hex;
  };
  for (bool hardware : {false, true}) {
    EXPECT_EQ(digest("abc", hardware, 1), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(digest(std::string(1000000, 'a'), hardware, 4096),
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 260; ++n) lengths.push_back(n);
  lengths.push_back(3 << 20);
  for (size_t n : lengths) {
    std::string data(n, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    const size_t piece = 1 + rng() % 200;
    EXPECT_EQ(digest(data, true, piece), digest(data, false, n + 1)) << "length " << n << ", pieces of " << piece;
  }
}

TEST(Assets, ShippedFilesMatchTheirChecksums) {
  fs::path sums = find_asset("tokenizers/SHA256SUMS");
  std::ifstream in(sums);
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    ASSERT_GT(line.size(), 66u) << line;
    std::string expected = line.substr(0, 64), relative = line.substr(66);
    EXPECT_EQ(sha256_file_hex(sums.parent_path() / relative), expected) << relative;
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

TEST(Assets, MissingAssetNamesEveryPlaceAndTheFix) {
  fs::path dir = fresh_dir("assets_env");
  ::setenv("FLUXTRAIN_ASSETS", dir.c_str(), 1);
  app::apply_process_settings({}, app::environment());
  std::string message = error_of([] { find_asset("tokenizers/nope.json"); });
  ::unsetenv("FLUXTRAIN_ASSETS");
  app::apply_process_settings({}, app::environment());
  EXPECT_TRUE(contains(message, (dir / "tokenizers/nope.json").string()));
  EXPECT_TRUE(contains(message, "share/fluxtrain/assets/tokenizers/nope.json"));
  EXPECT_TRUE(contains(message, "set FLUXTRAIN_ASSETS"));
  EXPECT_EQ(asset_roots().size(), 2u);  // without the variable: installed tree and source tree
  fs::remove_all(dir);
}

TEST(Assets, EnvironmentVariableComesFirst) {
  fs::path dir = fresh_dir("assets_first");
  fs::create_directories(dir / "tokenizers");
  write(dir / "tokenizers" / "SHA256SUMS", "");
  ::setenv("FLUXTRAIN_ASSETS", dir.c_str(), 1);
  app::apply_process_settings({}, app::environment());
  fs::path found = find_asset("tokenizers/SHA256SUMS");
  ::unsetenv("FLUXTRAIN_ASSETS");
  app::apply_process_settings({}, app::environment());
  EXPECT_EQ(found, dir / "tokenizers" / "SHA256SUMS");
  fs::remove_all(dir);
}

TEST(ClipTokenizer, HandCheckedPrompt) {
  // a</w> photo</w> of</w> a</w> cat</w> 's</w> toy</w> ,</w> 1</w> 2</w> 3</w> !!</w>: digits one by one.
  std::vector<int32_t> expected = {49406, 320, 1125, 539, 320, 2368, 568, 5988, 267, 272, 273, 274, 748, 49407};
  EXPECT_EQ(clip().encode_untruncated("A photo of a CAT's toy, 123!!"), expected);
  EXPECT_EQ(clip().encode_untruncated("  a\tphoto\n\nof   a cat's TOY ,1 2 3 !!  "), expected);
  std::vector<int32_t> padded = clip().encode("A photo of a CAT's toy, 123!!");
  ASSERT_EQ(padded.size(), 77u);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), padded.begin()));
  EXPECT_EQ(padded.back(), ClipTokenizer::kEndOfText);
}

TEST(ClipTokenizer, EmptyAndWhitespaceOnly) {
  std::vector<int32_t> empty(77, ClipTokenizer::kEndOfText);
  empty[0] = ClipTokenizer::kStartOfText;
  EXPECT_EQ(clip().encode(""), empty);
  EXPECT_EQ(clip().encode(" \t\n\u3000"), empty);
}

TEST(ClipTokenizer, TruncatesTo75TokensBetweenTheMarkers) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "cat ";
  std::vector<int32_t> ids = clip().encode(prompt);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[0], 49406);
  for (int i = 1; i <= 75; ++i) EXPECT_EQ(ids[size_t(i)], 2368);
  EXPECT_EQ(ids[76], 49407);
  EXPECT_EQ(clip().encode_untruncated(prompt).size(), 102u);
}

TEST(ClipTokenizer, SpecialTokensInText) {
  // <|endoftext|> is matched before lowercasing only; <|startoftext|> after it (Flux's config).
  EXPECT_EQ(clip().tokenize("<|endoftext|>a<|StartOfText|>"), (std::vector<int32_t>{49407, 320, 49406}));
  // "<|ENDOFTEXT|>" is ordinary text: <  |</w>  endof  text</w>  |  ></w>
  EXPECT_EQ(clip().tokenize("<|ENDOFTEXT|>"), (std::vector<int32_t>{27, 347, 40786, 4160, 91, 285}));
}

TEST(ClipTokenizer, RejectsInvalidUtf8) {
  EXPECT_TRUE(contains(error_of([] { clip().encode("caf\xC3"); }), "not valid UTF-8"));
  EXPECT_TRUE(contains(error_of([] { clip().encode("\xED\xA0\x80"); }), "byte offset 0"));  // a surrogate
}

TEST(ClipTokenizer, MissingOrCorruptVocabularyNamesTheFile) {
  fs::path dir = fresh_dir("clip_vocab");
  EXPECT_TRUE(contains(error_of([&] { ClipTokenizer{dir}; }), (dir / "vocab.json").string()));
  write(dir / "vocab.json", "{\"a\": 1,");
  EXPECT_TRUE(contains(error_of([&] { ClipTokenizer{dir}; }), "vocab.json is not a JSON object"));
  fs::copy_file(find_asset("tokenizers/clip_l/vocab.json"), dir / "vocab.json", fs::copy_options::overwrite_existing);
  EXPECT_TRUE(contains(error_of([&] { ClipTokenizer{dir}; }), (dir / "merges.txt").string()));
  write(dir / "merges.txt", "#version: 0.2\ni n\nqq zz\n");
  EXPECT_TRUE(contains(error_of([&] { ClipTokenizer{dir}; }), "merges.txt line 3"));
  fs::remove_all(dir);
}

TEST(T5Tokenizer, HandCheckedPrompt) {
  T5Encoding encoding = t5().encode("Hello world", T5Tokenizer::kFluxSchnellMaxLength);
  ASSERT_EQ(encoding.ids.size(), 256u);
  ASSERT_EQ(encoding.attention_mask.size(), 256u);
  EXPECT_EQ(std::vector<int32_t>(encoding.ids.begin(), encoding.ids.begin() + 4),
            (std::vector<int32_t>{8774, 296, 1, 0}));
  EXPECT_EQ(std::count(encoding.attention_mask.begin(), encoding.attention_mask.end(), 1), 3);
  EXPECT_EQ(t5().encode("Hello world", T5Tokenizer::kFluxDevMaxLength).ids.size(), 512u);
  EXPECT_EQ(t5().encode_untruncated("\t Hello \n world  "), (std::vector<int32_t>{8774, 296, 1}));
}

TEST(T5Tokenizer, EmptyTruncationAndSpecials) {
  EXPECT_EQ(t5().encode_untruncated(""), std::vector<int32_t>{1});
  EXPECT_EQ(t5().encode_untruncated("   "), std::vector<int32_t>{1});
  EXPECT_EQ(t5().encode("Hello world again", 2).ids, (std::vector<int32_t>{8774, 1}));
  EXPECT_TRUE(contains(error_of([] { t5().encode("x", 0); }), "max_length is 0"));
  // Special tokens in the text; each word gets its own "▁" (3 where no "▁x" piece exists).
  EXPECT_EQ(t5().tokenize("x<pad>y</s><extra_id_0>"), (std::vector<int32_t>{3, 226, 0, 3, 63, 1, 32099}));
  EXPECT_EQ(t5().vocab_size(), 32100u);
}

TEST(T5Tokenizer, NormalizerWorksPerGraphemeLikeTheReference) {
  EXPECT_EQ(t5().normalize("Ａ１ ﬁ"), "A1 fi");
  // Fullwidth e + combining acute is one grapheme whose first code point has a rule: the whole
  // cluster becomes "e" (the reference drops the accent; SentencePiece itself would not).
  EXPECT_EQ(t5().normalize("\uFF45\u0301"), "e");
  EXPECT_EQ(t5().tokenize("\uFF45\u0301"), (std::vector<int32_t>{3, 15}));
}

TEST(T5Tokenizer, MissingOrCorruptModelNamesTheFile) {
  fs::path dir = fresh_dir("t5_model");
  EXPECT_TRUE(contains(error_of([&] { T5Tokenizer{dir / "spiece.model"}; }), (dir / "spiece.model").string()));
  std::ifstream in(find_asset("tokenizers/t5/spiece.model"), std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  write(dir / "spiece.model", content.str().substr(0, 999));  // cut inside a piece
  std::string message = error_of([&] { T5Tokenizer{dir / "spiece.model"}; });
  EXPECT_TRUE(contains(message, (dir / "spiece.model").string()));
  EXPECT_TRUE(contains(message, "corrupt"));
  write(dir / "spiece.model", content.str().substr(0, 1000));  // cut between two pieces
  EXPECT_TRUE(contains(error_of([&] { T5Tokenizer{dir / "spiece.model"}; }), "truncated file?"));
  write(dir / "spiece.model", "");
  EXPECT_TRUE(contains(error_of([&] { T5Tokenizer{dir / "spiece.model"}; }), "no pieces"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fluxtrain
