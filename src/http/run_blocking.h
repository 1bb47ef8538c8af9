// Running blocking work (database calls) from a coroutine without blocking the I/O thread it runs
// on: RunBlocking posts `fn` to a thread pool and resumes the coroutine on ITS OWN executor (for
// a connection, its strand) with the result.
//
//   Result<Events> events = co_await RunBlocking(pool, [&] { return store.EventsFor(device); });
//
// Why not `co_await asio::post(pool, asio::use_awaitable)`: in Boost 1.74 that runs nothing on the
// pool; the coroutine resumes on its own executor, so the blocking call would still run on the
// I/O thread.
//
// Exceptions thrown by `fn` are rethrown in the coroutine (a thread pool thread must never see
// one). References captured by `fn` stay valid: the coroutine is suspended until `fn` returned.
// If the pool is stopped before `fn` runs, the coroutine is destroyed without resuming (only at
// shutdown).
#pragma once

#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

#include "http/asio.h"

namespace custody::http {

template <typename Fn, typename T = std::invoke_result_t<Fn&>>
asio::awaitable<T> RunBlocking(asio::thread_pool& pool, Fn fn) {
  static_assert(!std::is_void_v<T> && !std::is_reference_v<T>,
                "RunBlocking needs a function returning a value");
  std::optional<T> result =
      co_await asio::async_initiate<const asio::use_awaitable_t<>&,
                                    void(std::exception_ptr, std::optional<T>)>(
          [&pool](auto handler, Fn f) {
            asio::post(pool, [handler = std::move(handler), f = std::move(f)]() mutable {
              std::exception_ptr error;
              std::optional<T> value;
              try {
                value.emplace(f());
              } catch (...) {
                error = std::current_exception();
              }
              const auto home = asio::get_associated_executor(handler);
              asio::dispatch(
                  home, [handler = std::move(handler), error, value = std::move(value)]() mutable {
                    handler(error, std::move(value));
                  });
            });
          },
          asio::use_awaitable, std::move(fn));
  co_return std::move(*result);
}

}  // namespace custody::http
