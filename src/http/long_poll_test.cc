#include "http/long_poll.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

namespace custody::http {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// An io_context run by two threads for the duration of a test.
class LongPollHubTest : public ::testing::Test {
 protected:
  LongPollHubTest() : work_(io_.get_executor()) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  ~LongPollHubTest() override {
    hub_.Shutdown();
    work_.reset();
    for (auto& t : threads_) t.join();
  }

  // Starts a wait; the future holds its result.
  std::future<bool> StartWait(const std::string& key, std::chrono::milliseconds timeout,
                              std::optional<LongPollHub::Sequence> since = std::nullopt) {
    return asio::co_spawn(asio::make_strand(io_), hub_.Wait(key, timeout, since), asio::use_future);
  }

  // Waits (bounded) until `n` waiters are registered.
  bool WaitForWaiters(size_t n) {
    const auto deadline = Clock::now() + 5s;
    while (hub_.waiters() < n) {
      if (Clock::now() > deadline) return false;
      std::this_thread::yield();
    }
    return true;
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  LongPollHub hub_;
};

TEST_F(LongPollHubTest, NotifyWakesAWaiterWithin100Ms) {
  std::future<bool> woken = StartWait("device-1", 30s);
  ASSERT_TRUE(WaitForWaiters(1));
  const auto notified_at = Clock::now();
  hub_.Notify("device-1");
  ASSERT_EQ(woken.wait_for(100ms), std::future_status::ready);
  EXPECT_TRUE(woken.get());
  EXPECT_LT(Clock::now() - notified_at, 100ms);
  EXPECT_EQ(hub_.waiters(), 0u);
}

TEST_F(LongPollHubTest, WaitTimesOutWithoutNotify) {
  const auto start = Clock::now();
  std::future<bool> woken = StartWait("device-1", 50ms);
  ASSERT_EQ(woken.wait_for(5s), std::future_status::ready);
  EXPECT_FALSE(woken.get());
  EXPECT_GE(Clock::now() - start, 50ms);
}

TEST_F(LongPollHubTest, NotifyForAnotherKeyDoesNotWake) {
  std::future<bool> woken = StartWait("device-1", 200ms);
  ASSERT_TRUE(WaitForWaiters(1));
  hub_.Notify("device-2");
  ASSERT_EQ(woken.wait_for(5s), std::future_status::ready);
  EXPECT_FALSE(woken.get());
}

TEST_F(LongPollHubTest, TwoThousandWaitersOnOneKeyAllWake) {
  constexpr size_t kWaiters = 2000;
  std::vector<std::future<bool>> waits;
  waits.reserve(kWaiters);
  for (size_t i = 0; i < kWaiters; ++i) waits.push_back(StartWait("fleet", 30s));
  ASSERT_TRUE(WaitForWaiters(kWaiters));
  const auto notified_at = Clock::now();
  hub_.Notify("fleet");
  for (auto& w : waits) {
    ASSERT_EQ(w.wait_until(notified_at + 2s), std::future_status::ready);
    EXPECT_TRUE(w.get());
  }
  EXPECT_LT(Clock::now() - notified_at, 1s);
}

TEST_F(LongPollHubTest, ShutdownEndsWaitsAndLaterWaitsReturnAtOnce) {
  std::future<bool> woken = StartWait("device-1", 30s);
  ASSERT_TRUE(WaitForWaiters(1));
  hub_.Shutdown();
  ASSERT_EQ(woken.wait_for(1s), std::future_status::ready);
  EXPECT_FALSE(woken.get());
  std::future<bool> later = StartWait("device-1", 30s);
  ASSERT_EQ(later.wait_for(1s), std::future_status::ready);
  EXPECT_FALSE(later.get());
}

TEST_F(LongPollHubTest, SinceCatchesANotificationThatCameBeforeTheWait) {
  const LongPollHub::Sequence since = hub_.Now();
  hub_.Notify("device-1");  // e.g. between the database check and the wait
  std::future<bool> woken = StartWait("device-1", 30s, since);
  ASSERT_EQ(woken.wait_for(1s), std::future_status::ready);
  EXPECT_TRUE(woken.get());
}

TEST_F(LongPollHubTest, NotificationsBeforeSinceDoNotCount) {
  hub_.Notify("device-1");
  const LongPollHub::Sequence since = hub_.Now();
  hub_.Notify("device-2");
  std::future<bool> woken = StartWait("device-1", 50ms, since);
  ASSERT_EQ(woken.wait_for(5s), std::future_status::ready);
  EXPECT_FALSE(woken.get());
}

}  // namespace
}  // namespace custody::http
