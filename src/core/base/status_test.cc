#include "core/base/status.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace custody {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument("expected an even number, got " + std::to_string(x));
  return x / 2;
}

Result<int> Quarter(int x) {
  CUSTODY_ASSIGN_OR_RETURN(int h, Half(x));
  CUSTODY_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(Status, OkByDefaultAndNamesItsCode) {
  EXPECT_TRUE(OkStatus().ok());
  Status s = DataLoss("chunk 3 failed");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.ToString(), "data_loss: chunk 3 failed");
  EXPECT_EQ(s.WithContext("open m.sealed").message(), "open m.sealed: chunk 3 failed");
}

TEST(Status, ResultPropagatesTheFirstError) {
  EXPECT_EQ(Quarter(8).value(), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.error().message(), "expected an even number, got 3");
}

TEST(Status, ErrnoMapsToCodes) {
  EXPECT_EQ(ErrnoStatus(ENOENT, "open x").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EACCES, "open x").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EEXIST, "open x").code(), StatusCode::kAlreadyExists);
  EXPECT_NE(ErrnoStatus(ENOENT, "open x").message().find("open x: "), std::string::npos);
}

TEST(StatusDeathTest, ValueOfAnErrorAborts) {
  EXPECT_DEATH((void)Half(3).value(), "Result::value\\(\\) on error");
}

}  // namespace
}  // namespace custody
