// The guards for untrusted JSON (src/core/json_guard.h): nesting depth before parsing, bounded excerpts
// of parsed values in messages.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_guard.h"

namespace fluxtrain {
namespace {

TEST(JsonGuard, DepthCountsBracketsOutsideStrings) {
  EXPECT_EQ(json_depth("1"), 0u);
  EXPECT_EQ(json_depth("{}"), 1u);
  EXPECT_EQ(json_depth(R"({"a":[1,{"b":[]}]})"), 4u);
  EXPECT_EQ(json_depth(R"(["[[[[", "\"[[[["])"), 1u);  // escaped quotes do not end the string
  EXPECT_EQ(json_depth("[[]][[]]"), 2u);
  EXPECT_EQ(json_depth(std::string(100000, '[')), kMaxJsonDepth + 1);  // stops at the limit
}

TEST(JsonGuard, CheckNamesWhatAndWhere) {
  EXPECT_NO_THROW(check_json_depth(std::string(64, '[') + std::string(64, ']'), "x.json"));
  try {
    check_json_depth(R"({"a":)" + std::string(100000, '['), "/run/state.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("/run/state.json"), std::string::npos) << message;
    EXPECT_NE(message.find("deeper than 64 levels (at byte 68)"), std::string::npos) << message;
    EXPECT_LT(message.size(), 200u) << message;
  }
}

TEST(JsonGuard, ExcerptIsBounded) {
  EXPECT_EQ(json_excerpt(nlohmann::json::parse(R"({"a":[1,2,"x"]})")), R"({"a":[1,2,"x"]})");
  nlohmann::json big = nlohmann::json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  const std::string cut = json_excerpt(big, 50);
  EXPECT_LE(cut.size(), 60u) << cut;
  EXPECT_TRUE(cut.starts_with("[0,1,2,")) << cut;
  EXPECT_TRUE(cut.ends_with("...")) << cut;
  EXPECT_EQ(json_excerpt(nlohmann::json(std::string(1000, 'a')), 10), "\"aaaaaaaaaa\"...");
  // A value built deeper than the limit (not from parsed text) is cut at the limit, not recursed into.
  nlohmann::json deep = 1;
  for (int i = 0; i < 200; ++i) deep = nlohmann::json::array({deep});
  EXPECT_TRUE(json_excerpt(deep, 10000).ends_with("...")) << json_excerpt(deep, 10000);
}

}  // namespace
}  // namespace fluxtrain
