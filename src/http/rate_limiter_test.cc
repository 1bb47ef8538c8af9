#include "http/rate_limiter.h"

#include <gtest/gtest.h>

namespace custody::http {
namespace {

using std::chrono::milliseconds;

TEST(RateLimiter, AllowsBurstThenRefusesWithRetryAfter) {
  RateLimiter limiter(2, 3);
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.Take("k", t0).allowed) << i;
  const RateLimiter::Decision refused = limiter.Take("k", t0);
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.retry_after, milliseconds(500));  // one token at 2 per second
}

TEST(RateLimiter, RefillsOverTime) {
  RateLimiter limiter(10, 1);
  const auto t0 = RateLimiter::Clock::now();
  EXPECT_TRUE(limiter.Take("k", t0).allowed);
  EXPECT_FALSE(limiter.Take("k", t0 + milliseconds(50)).allowed);
  EXPECT_TRUE(limiter.Take("k", t0 + milliseconds(100)).allowed);
}

TEST(RateLimiter, KeysAreIndependent) {
  RateLimiter limiter(1, 1);
  const auto t0 = RateLimiter::Clock::now();
  EXPECT_TRUE(limiter.Take("device:a", t0).allowed);
  EXPECT_FALSE(limiter.Take("device:a", t0).allowed);
  EXPECT_TRUE(limiter.Take("device:b", t0).allowed);
}

TEST(RateLimiter, ZeroRateDisablesLimiting) {
  RateLimiter limiter(0, 1);
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(limiter.Take("k", t0).allowed);
  EXPECT_EQ(limiter.tracked_keys(), 0u);
}

TEST(RateLimiter, ForgetsQuietClientsSoMemoryStaysBounded) {
  RateLimiter limiter(100, 1);  // a bucket is full again 10 ms after its last use
  const auto t0 = RateLimiter::Clock::now();
  for (int i = 0; i < 40000; ++i) {
    (void)limiter.Take("ip:" + std::to_string(i), t0 + milliseconds(i));
  }
  EXPECT_LT(limiter.tracked_keys(), 40000u / 2);
}

}  // namespace
}  // namespace custody::http
