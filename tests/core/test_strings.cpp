// The shared ASCII string helpers (src/core/strings.h).
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace fluxtrain
