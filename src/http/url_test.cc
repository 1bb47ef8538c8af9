#include "http/url.h"

#include <gtest/gtest.h>

namespace custody::http {
namespace {

TEST(PercentDecode, DecodesEscapesAndOptionallyPlus) {
  EXPECT_EQ(*PercentDecode("a%20b%2Fc", false, "x"), "a b/c");
  EXPECT_EQ(*PercentDecode("a+b", true, "x"), "a b");
  EXPECT_EQ(*PercentDecode("a+b", false, "x"), "a+b");
  EXPECT_EQ(*PercentDecode("%c3%a9", false, "x"), "\xc3\xa9");
}

TEST(PercentDecode, RejectsMalformedEscapesNamingThePart) {
  for (const char* bad : {"%", "%2", "%zz", "abc%g0", "%2x"}) {
    Result<std::string> r = PercentDecode(bad, true, "query parameter 'q'");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("query parameter 'q'"), std::string::npos);
  }
}

TEST(PercentDecode, RejectsControlCharactersAndInvalidUtf8) {
  EXPECT_FALSE(PercentDecode("%00", false, "x").ok());
  EXPECT_FALSE(PercentDecode("a%0Ab", false, "x").ok());
  EXPECT_FALSE(PercentDecode("%ff", false, "x").ok());
}

TEST(SplitTarget, SplitsPathAndQuery) {
  Result<Target> t = SplitTarget("/v1/x?a=1&b");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->path, "/v1/x");
  EXPECT_EQ(t->query, "a=1&b");
  EXPECT_EQ(SplitTarget("/")->query, "");
}

TEST(SplitTarget, RejectsNonOriginForms) {
  for (const char* bad : {"", "*", "http://evil/x", "x/y", "/a b", "/a#frag", "/a\x01"}) {
    EXPECT_FALSE(SplitTarget(bad).ok()) << bad;
  }
}

TEST(ParseQuery, DecodesPairsAndSkipsEmptyPieces) {
  auto q = ParseQuery("a=1&&b=x%20y&flag&c=a+b");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->at("a"), "1");
  EXPECT_EQ(q->at("b"), "x y");
  EXPECT_EQ(q->at("flag"), "");
  EXPECT_EQ(q->at("c"), "a b");
  EXPECT_TRUE(ParseQuery("")->empty());
}

TEST(ParseQuery, RejectsRepeatedKeysAndBadEscapes) {
  EXPECT_FALSE(ParseQuery("a=1&a=2").ok());
  EXPECT_FALSE(ParseQuery("a=%x1").ok());
  EXPECT_FALSE(ParseQuery("%=1").ok());
}

}  // namespace
}  // namespace custody::http
