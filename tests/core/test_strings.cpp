// The shared ASCII string helpers (src/core/strings.h).
#include <gtest/gtest.h>

#include <optional>
#include <utility>

#include "core/strings.h"

namespace fluxtrain {
namespace {

TEST(Strings, CaseMappingIsAsciiOnly) {
  EXPECT_EQ(lower("AdamW8bit"), "adamw8bit");
  EXPECT_EQ(upper("500gib"), "500GIB");
  EXPECT_EQ(lower("\xc3\x89T\xc3\x89"), "\xc3\x89t\xc3\x89");  // UTF-8 bytes are kept
  EXPECT_EQ(lower(""), "");
}

TEST(Strings, TrimRemovesTheGivenBlanksAtBothEnds) {
  EXPECT_EQ(trim(" \t a b \r\n\v\f"), "a b");
  EXPECT_EQ(trim(" \t\n "), "");
  EXPECT_EQ(trim(""), "");
  EXPECT_EQ(trim("\va\v", " \t\r\n"), "\va\v");
  EXPECT_EQ(trim("--x--", "-"), "x");
}

TEST(Strings, JoinPutsTheSeparatorBetweenItems) {
  EXPECT_EQ(join({"a", "b", "c"}), "a, b, c");
  EXPECT_EQ(join({"a"}), "a");
  EXPECT_EQ(join({}), "");
  EXPECT_EQ(join({"x", "y"}, ","), "x,y");
  EXPECT_EQ(join({"", "y"}), ", y");
}

TEST(Strings, AlternativesReadAsASentence) {
  EXPECT_EQ(join_alternatives({}), "");
  EXPECT_EQ(join_alternatives({"a"}), "a");
  EXPECT_EQ(join_alternatives({"a", "b"}), "a or b");
  EXPECT_EQ(join_alternatives({"a", "b", "c"}), "a, b or c");
}

// User info and query values are secrets (a password, a presigned URL's signature); the rest stays.
TEST(Strings, RedactUrlHidesUserInfoAndQueryValues) {
  EXPECT_EQ(redact_url("http://u:pw@127.0.0.1:8080/set.tar?X-Amz-Signature=s3cr3t"),
            "http://***@127.0.0.1:8080/set.tar?X-Amz-Signature=***");
  EXPECT_EQ(redact_url("https://huggingface.co/datasets/a/b/resolve/main/x.png"),
            "https://huggingface.co/datasets/a/b/resolve/main/x.png");
  EXPECT_EQ(redact_url("https://cdn.example/blob?X-Amz-Signature=secret&a=b&flag&empty="),
            "https://cdn.example/blob?X-Amz-Signature=***&a=***&***&empty=");
  EXPECT_EQ(redact_url("https://user:pa55word@host.example:8443/set.zip#frag"),
            "https://***@host.example:8443/set.zip#***");
  EXPECT_EQ(redact_url("https://user:p@ss@host/x"), "https://***@host/x");
  EXPECT_EQ(redact_url("https://host/a@b/c"), "https://host/a@b/c");  // '@' in the path is not user info
  EXPECT_EQ(redact_url("http://token@host"), "http://***@host");
  EXPECT_EQ(redact_url("http://host?sig=abc"), "http://host?sig=***");
  EXPECT_EQ(redact_url("http://u:pw@host?x=1@2"), "http://***@host?x=***");
  // Not URLs: unchanged.
  EXPECT_EQ(redact_url("/data/my-set"), "/data/my-set");
  EXPECT_EQ(redact_url("owner/name"), "owner/name");
  EXPECT_EQ(redact_url("kaggle:owner/name"), "kaggle:owner/name");
}

TEST(Strings, ShortenCutsLongText) {
  EXPECT_EQ(shorten("abc", 3), "abc");
  EXPECT_EQ(shorten("abcd", 3), "abc...");
}

// RFC 4648's test vectors, the padding, and a byte outside the alphabet.
TEST(Strings, Base64RoundTripsRfc4648Vectors) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64_encode(plain), encoded);
    EXPECT_EQ(base64_decode(encoded), std::optional<std::string>(plain));
  }
  const std::string bytes = {'\0', '\xff', '\x80', '\x7f'};
  EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes);
  EXPECT_EQ(base64_decode("Zm9v!"), std::nullopt);
}

}  // namespace
}  // namespace fluxtrain
