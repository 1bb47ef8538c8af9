#include "custodian/derived_cache.h"

#include <gtest/gtest.h>

#include <string>

namespace custody::custodian {
namespace {

// A device enrolled again (a new binding key) or a model registered again (a new sealed key)
// must never be served the value derived from the old bytes.
TEST(DerivedCache, AValueIsUsedOnlyForTheBytesItCameFrom) {
  DerivedCache<std::string> cache(8);
  cache.Put("dev_1", AsBytes("old binding key"), std::make_shared<const std::string>("old"));
  ASSERT_NE(cache.Find("dev_1", AsBytes("old binding key")), nullptr);
  EXPECT_EQ(*cache.Find("dev_1", AsBytes("old binding key")), "old");
  EXPECT_EQ(cache.Find("dev_1", AsBytes("new binding key")), nullptr);
  EXPECT_EQ(cache.Find("dev_1", AsBytes("old binding ke")), nullptr);  // a prefix is not equal
  EXPECT_EQ(cache.Find("dev_2", AsBytes("old binding key")), nullptr);
}

TEST(DerivedCache, StartsOverInsteadOfGrowingPastItsBound) {
  DerivedCache<int> cache(2);
  cache.Put("a", AsBytes("1"), std::make_shared<const int>(1));
  cache.Put("b", AsBytes("2"), std::make_shared<const int>(2));
  cache.Put("c", AsBytes("3"), std::make_shared<const int>(3));  // full: cleared first
  EXPECT_EQ(cache.Find("a", AsBytes("1")), nullptr);
  EXPECT_EQ(cache.Find("b", AsBytes("2")), nullptr);
  ASSERT_NE(cache.Find("c", AsBytes("3")), nullptr);
}

}  // namespace
}  // namespace custody::custodian
