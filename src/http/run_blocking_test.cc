#include "http/run_blocking.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <thread>

namespace custody::http {
namespace {

TEST(RunBlocking, RunsOnThePoolAndResumesOnTheCallersExecutor) {
  asio::io_context io;
  asio::thread_pool pool(1);
  std::thread::id io_thread = std::this_thread::get_id();
  std::thread::id ran_on, resumed_on;
  std::string result;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        result = co_await RunBlocking(pool, [&] {
          ran_on = std::this_thread::get_id();
          return std::string("done");
        });
        resumed_on = std::this_thread::get_id();
      },
      asio::detached);
  io.run();
  pool.join();
  EXPECT_EQ(result, "done");
  EXPECT_NE(ran_on, io_thread);
  EXPECT_EQ(resumed_on, io_thread);
}

TEST(RunBlocking, ExceptionsReachTheCoroutine) {
  asio::io_context io;
  asio::thread_pool pool(1);
  std::string caught;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        try {
          (void)co_await RunBlocking(pool, []() -> int { throw std::runtime_error("db gone"); });
        } catch (const std::runtime_error& e) {
          caught = e.what();
        }
      },
      asio::detached);
  io.run();
  pool.join();
  EXPECT_EQ(caught, "db gone");
}

}  // namespace
}  // namespace custody::http
