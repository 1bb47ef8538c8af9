#include "http/client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "http/server.h"
#include "http/test_pki.h"

namespace custody::http {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::Pki;
using Clock = std::chrono::steady_clock;

class ClientTest : public ::testing::Test {
 protected:
  ~ClientTest() override {
    if (server_) server_->Stop(1s);
  }

  void StartServer(ServerOptions options = {}) {
    options.certificate_chain_pem = Pki().server.cert_pem;
    options.private_key_pem = Pki().server.key_pem;
    options.io_threads = 2;
    options.worker_threads = 2;
    options.rate_per_second = 0;
    options.long_poll_hubs = {&hub_};
    Router router;
    router.Add("GET", "/hello", Access::kPublic, [](const Request&, const Principal&) {
      return Response::Json(200, {{"hello", "world"}});
    });
    router.Add("GET", "/big", Access::kPublic, [](const Request&, const Principal&) {
      Response r;
      r.content_type = "text/plain";
      r.body.assign(10000, 'x');
      return r;
    });
    router.Add("POST", "/count", Access::kPublic, [this](const Request&, const Principal&) {
      return Response::Json(200, {{"count", ++posts_}});
    });
    router.AddAsync("GET", "/stall", Access::kPublic,
                    [this](const Request&, const Principal&) -> asio::awaitable<Response> {
                      co_await hub_.Wait("never", 10s);
                      co_return Response::Json(200, nlohmann::json::object());
                    });
    Result<std::unique_ptr<Server>> server =
        Server::Start(std::move(options), std::move(router), nullptr, nullptr, nullptr);
    ASSERT_TRUE(server.ok()) << server.error().ToString();
    server_ = std::move(*server);
  }

  ClientOptions Options() {
    ClientOptions o;
    o.host = "127.0.0.1";
    o.port = server_->port();
    o.ca_pem = Pki().ca.cert_pem;
    o.request_timeout = 10s;
    return o;
  }

  LongPollHub hub_;
  std::unique_ptr<Server> server_;
  std::atomic<int> posts_{0};
};

TEST_F(ClientTest, RefusesAServerWhoseCertificateIsNotFromTheGivenCa) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options = Options();
  options.ca_pem = Pki().other_ca.cert_pem;
  Result<ClientResponse> r = (*Client::Create(options))->Get("/hello");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(r.error().message(),
              HasSubstr("custodian 127.0.0.1:" + std::to_string(server_->port())));
  EXPECT_THAT(r.error().message(), HasSubstr("TLS handshake failed"));
  EXPECT_THAT(r.error().message(), HasSubstr("unable to get local issuer certificate"));
}

TEST_F(ClientTest, ChecksTheServerNameAndAcceptsAPinnedName) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions wrong = Options();
  wrong.expected_name = "custodian.other.example";
  Result<ClientResponse> refused = (*Client::Create(wrong))->Get("/hello");
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.error().message(), HasSubstr("hostname mismatch"));

  ClientOptions pinned = Options();
  pinned.expected_name = "localhost";  // connect by address, check the issued name
  Result<ClientResponse> ok = (*Client::Create(pinned))->Get("/hello");
  ASSERT_TRUE(ok.ok()) << ok.error().ToString();
  EXPECT_EQ(ok->status, 200);
}

TEST_F(ClientTest, ReportsAServerThatIsNotListening) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options = Options();
  server_->Stop(0ms);
  Result<ClientResponse> r = (*Client::Create(options))->Get("/hello");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(r.error().message(), HasSubstr("cannot connect"));
  EXPECT_THAT(r.error().message(), HasSubstr("refused"));
}

TEST_F(ClientTest, ReconnectsTransparentlyAfterTheServerClosedAnIdleConnection) {
  ServerOptions server_options;
  server_options.idle_timeout = 100ms;
  ASSERT_NO_FATAL_FAILURE(StartServer(server_options));
  auto client = *Client::Create(Options());
  ASSERT_TRUE(client->Get("/hello").ok());
  const auto deadline = Clock::now() + 5s;
  while (server_->open_connections() != 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(server_->open_connections(), 0u);
  Result<ClientResponse> r = client->Get("/hello");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(client->connects(), 2u);
}

// A POST whose answer never came may have been processed (the server died after committing):
// only one marked idempotent is sent again; no request is ever processed twice.
TEST_F(ClientTest, ResendsOnlyIdempotentPostsWhenTheAnswerWasLost) {
  ServerOptions server_options;
  server_options.idle_timeout = 100ms;
  ASSERT_NO_FATAL_FAILURE(StartServer(server_options));
  auto client = *Client::Create(Options());
  auto wait_idle_close = [&] {
    ASSERT_TRUE(client->Get("/hello").ok());
    const auto deadline = Clock::now() + 5s;
    while (server_->open_connections() != 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(1ms);
    }
    ASSERT_EQ(server_->open_connections(), 0u);
  };
  ClientRequest post;
  post.method = "POST";
  post.target = "/count";
  post.body = "{}";

  ASSERT_NO_FATAL_FAILURE(wait_idle_close());
  post.idempotent = true;
  Result<ClientResponse> resent = client->Send(post);
  ASSERT_TRUE(resent.ok()) << resent.error().ToString();
  EXPECT_EQ(posts_.load(), 1);

  ASSERT_NO_FATAL_FAILURE(wait_idle_close());
  post.idempotent = false;
  Result<ClientResponse> once = client->Send(post);
  if (!once.ok()) {
    // Written, but nothing came back: not resent, the caller decides.
    EXPECT_EQ(once.error().code(), StatusCode::kUnavailable) << once.error().ToString();
    EXPECT_EQ(posts_.load(), 1);
  } else {
    // The write itself failed, so the server never had the request: resending was safe.
    EXPECT_EQ(posts_.load(), 2);
  }
}

TEST_F(ClientTest, EnforcesTheResponseBodyLimit) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ClientOptions options = Options();
  options.max_response_body_bytes = 1000;
  Result<ClientResponse> r = (*Client::Create(options))->Get("/big");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kResourceExhausted);
}

TEST_F(ClientTest, GivesUpOnASlowServerAfterTheRequestTimeout) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = *Client::Create(Options());
  ClientRequest request;
  request.target = "/stall";
  request.timeout = 300ms;
  const auto start = Clock::now();
  Result<ClientResponse> r = client->Send(request);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(r.error().message(), HasSubstr("within 300 ms"));
  EXPECT_LT(Clock::now() - start, 3s);
  Result<ClientResponse> after = client->Get("/hello");  // a fresh connection
  ASSERT_TRUE(after.ok()) << after.error().ToString();
}

TEST_F(ClientTest, InterruptFromAnotherThreadEndsAWaitingRequestAndEveryLaterOne) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = *Client::Create(Options());
  ASSERT_TRUE(client->Get("/hello").ok());
  ClientRequest request;
  request.target = "/stall";
  std::atomic<bool> sent{false};
  std::thread interrupter([&] {
    while (!sent.load()) std::this_thread::yield();
    std::this_thread::sleep_for(100ms);  // let the request reach its wait (not a condition)
    client->Interrupt();
  });
  const auto start = Clock::now();
  sent = true;
  Result<ClientResponse> r = client->Send(request);
  interrupter.join();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(r.error().message(), HasSubstr("interrupted"));
  EXPECT_LT(Clock::now() - start, 5s);  // not the 10 s of the stall
  Result<ClientResponse> after = client->Get("/hello");
  ASSERT_FALSE(after.ok());
  EXPECT_THAT(after.error().message(), HasSubstr("interrupted"));
}

TEST_F(ClientTest, RefusesMalformedRequestsWithoutSendingThem) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto client = *Client::Create(Options());
  ClientRequest no_slash;
  no_slash.target = "hello";
  EXPECT_EQ(client->Send(no_slash).error().code(), StatusCode::kInvalidArgument);
  ClientRequest injected;
  injected.target = "/hello";
  injected.headers.emplace_back("X-A", "b\r\nX-Injected: 1");
  EXPECT_EQ(client->Send(injected).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client->connects(), 0u);
}

TEST_F(ClientTest, ResponseJsonUsesStrictParsing) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  Result<ClientResponse> r = (*Client::Create(Options()))->Get("/hello");
  ASSERT_TRUE(r.ok());
  Result<nlohmann::json> json = r->Json();
  ASSERT_TRUE(json.ok()) << json.error().ToString();
  EXPECT_EQ((*json)["hello"], "world");
  ClientResponse not_json{200, "[1,2]", {}};
  EXPECT_FALSE(not_json.Json().ok());
}

// Runs `connections` keep-alive connections on a two-thread io_context, each sending requests
// back to back until `stop_after` requests in total or `duration`; returns requests completed.
struct LoadResult {
  uint64_t ok = 0;
  uint64_t failed = 0;
  std::chrono::duration<double> elapsed{};
};
LoadResult RunLoad(std::shared_ptr<const ClientContext> context, int connections,
                   uint64_t requests_per_connection, std::chrono::milliseconds duration) {
  asio::io_context io(2);
  std::atomic<uint64_t> ok{0}, failed{0};
  const auto start = Clock::now();
  const auto deadline = start + duration;
  for (int c = 0; c < connections; ++c) {
    asio::co_spawn(
        asio::make_strand(io),
        [&, context]() -> asio::awaitable<void> {
          AsyncConnection conn(co_await asio::this_coro::executor, context);
          for (uint64_t i = 0; i < requests_per_connection && Clock::now() < deadline; ++i) {
            ClientRequest request;
            request.target = "/hello";
            Result<ClientResponse> r = co_await conn.Send(std::move(request));
            if (r.ok() && r->status == 200) {
              ok.fetch_add(1);
            } else {
              failed.fetch_add(1);
            }
          }
        },
        asio::detached);
  }
  std::thread helper([&io] { io.run(); });
  io.run();
  helper.join();
  return {ok.load(), failed.load(), Clock::now() - start};
}

TEST_F(ClientTest, ManyAsyncConnectionsFromOneProcess) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto context = *ClientContext::Create(Options());
  const LoadResult result = RunLoad(context, 200, 3, 30s);
  EXPECT_EQ(result.ok, 600u);
  EXPECT_EQ(result.failed, 0u);
}

}  // namespace
}  // namespace custody::http
