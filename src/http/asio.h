// The one way Custody includes Boost.Asio and Boost.Beast. Every file of the HTTP layer (and every
// user of its coroutine API) includes this header instead of Boost directly.
//
// Why a wrapper: Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>,
// and clang 14 with libstdc++ is not recognised as supporting C++20 coroutines. The target
// custody::http defines BOOST_ASIO_HAS_CO_AWAIT, BOOST_ASIO_HAS_STD_COROUTINE and
// BOOST_BEAST_USE_STD_STRING_VIEW as PUBLIC compile definitions, so every translation unit that
// sees these headers agrees on them (they change types, so they must agree: ODR). The fallbacks
// below only keep a stray include from compiling differently.
#pragma once

// clang-format off
#include <coroutine>
#include <utility>
// clang-format on

#ifndef BOOST_ASIO_HAS_CO_AWAIT
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif
#ifndef BOOST_ASIO_HAS_STD_COROUTINE
#define BOOST_ASIO_HAS_STD_COROUTINE 1
#endif
#ifndef BOOST_BEAST_USE_STD_STRING_VIEW
#define BOOST_BEAST_USE_STD_STRING_VIEW 1
#endif

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

namespace custody::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

}  // namespace custody::http
