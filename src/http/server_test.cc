#include "http/server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <regex>
#include <thread>

#include "http/client.h"
#include "http/test_pki.h"
#include "http/tls.h"

namespace custody::http {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::KeyAndCert;
using testing::Pki;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;

// Waits (bounded) until `done` holds.
template <typename Pred>
bool Eventually(Pred done, std::chrono::milliseconds limit = 5s) {
  const auto deadline = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A TLS connection that sends whatever a test wants, for requests no proper client would send.
// Every operation has a deadline.
class RawConnection {
 public:
  explicit RawConnection(uint16_t port, const KeyAndCert* client_cert = nullptr) : port_(port) {
    ClientTlsMaterial material{Pki().ca.cert_pem, std::nullopt, std::nullopt};
    if (client_cert != nullptr) {
      material.certificate_chain_pem = client_cert->cert_pem;
      material.private_key_pem = client_cert->key_pem;
    }
    tls_ = *MakeClientTlsContext(material);
    stream_ = std::make_unique<Stream>(io_.get_executor(), *tls_);
  }

  bool Connect() {
    bool ok = false;
    Run([&]() -> asio::awaitable<void> {
      ErrorCode ec;
      beast::tcp_stream& tcp = stream_->next_layer();
      tcp.expires_after(5s);
      co_await tcp.async_connect(
          asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_),
          asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {
        EXPECT_TRUE(PrepareClientSsl(stream_->native_handle(), "127.0.0.1").ok());
        co_await stream_->async_handshake(asio::ssl::stream_base::client,
                                          asio::redirect_error(asio::use_awaitable, ec));
      }
      tcp.expires_never();
      ok = !ec;
    });
    return ok;
  }

  bool Write(std::string_view bytes) {
    bool ok = false;
    Run([&]() -> asio::awaitable<void> {
      ErrorCode ec;
      stream_->next_layer().expires_after(5s);
      co_await asio::async_write(*stream_, asio::buffer(bytes.data(), bytes.size()),
                                 asio::redirect_error(asio::use_awaitable, ec));
      stream_->next_layer().expires_never();
      ok = !ec;
    });
    return ok;
  }

  // One response (a 100 Continue counts as one), or nullopt if the connection ended first.
  std::optional<bhttp::response<bhttp::string_body>> ReadResponse(
      std::chrono::milliseconds limit = 5s) {
    std::optional<bhttp::response<bhttp::string_body>> out;
    Run([&]() -> asio::awaitable<void> {
      ErrorCode ec;
      bhttp::response_parser<bhttp::string_body> parser;
      stream_->next_layer().expires_after(limit);
      co_await bhttp::async_read(*stream_, buffer_, parser,
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {
        stream_->next_layer().expires_never();
        out = parser.release();
      }
    });
    return out;
  }

  // Sends `bytes` and reads one response; nullopt if either fails.
  std::optional<bhttp::response<bhttp::string_body>> Request(std::string_view bytes) {
    if (!Write(bytes)) return std::nullopt;
    return ReadResponse();
  }

  // True if the server closes the connection within `limit`.
  bool WaitClosed(std::chrono::milliseconds limit = 5s) {
    bool closed = false;
    Run([&]() -> asio::awaitable<void> {
      stream_->next_layer().expires_after(limit);
      char scratch[4096];
      for (;;) {
        ErrorCode ec;
        co_await stream_->async_read_some(asio::buffer(scratch),
                                          asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
          closed = ec != beast::error::timeout;
          break;
        }
      }
    });
    return closed;
  }

  // Sends `bytes` one at a time, `interval` apart, while reading; returns how long after the
  // start the server ended the connection (nullopt if it did not within `limit`) and the status
  // of any answer it sent.
  struct Trickle {
    std::optional<std::chrono::milliseconds> closed_after;
    int status = 0;
  };
  Trickle TrickleBytes(std::string bytes, std::chrono::milliseconds interval,
                       std::chrono::milliseconds limit) {
    Trickle result;
    const auto start = Clock::now();
    bool done = false;
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          asio::steady_timer pause(io_);
          for (char c : bytes) {
            if (done) break;
            ErrorCode ec;
            co_await asio::async_write(*stream_, asio::buffer(&c, 1),
                                       asio::redirect_error(asio::use_awaitable, ec));
            if (ec) break;
            pause.expires_after(interval);
            co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
          }
        },
        asio::detached);
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          ErrorCode ec;
          bhttp::response_parser<bhttp::string_body> parser;
          stream_->next_layer().expires_after(limit);
          co_await bhttp::async_read(*stream_, buffer_, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
          if (!ec) {
            result.status = static_cast<int>(parser.get().result_int());
            char scratch[256];
            while (!ec) {
              co_await stream_->async_read_some(asio::buffer(scratch),
                                                asio::redirect_error(asio::use_awaitable, ec));
            }
          }
          if (ec != beast::error::timeout) {
            result.closed_after =
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
          }
          done = true;
        },
        asio::detached);
    io_.restart();
    io_.run();
    return result;
  }

 private:
  using Stream = beast::ssl_stream<beast::tcp_stream>;

  template <typename Fn>
  void Run(Fn fn) {
    asio::co_spawn(io_, std::move(fn), asio::detached);
    io_.restart();
    io_.run();
  }

  uint16_t port_;
  asio::io_context io_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::unique_ptr<Stream> stream_;
  beast::flat_buffer buffer_;
};

nlohmann::json Body(const ClientResponse& r) { return nlohmann::json::parse(r.body); }

bool IsErrorShape(std::string_view body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  return j.is_object() && j.contains("error") && j["error"]["code"].is_string() &&
         j["error"]["message"].is_string() && !j["error"]["message"].get<std::string>().empty();
}

nlohmann::json Describe(const Principal& p) {
  return {{"kind", static_cast<int>(p.kind)},
          {"id", p.id},
          {"name", p.name},
          {"role", std::string(RoleName(p.role))}};
}

class ServerTest : public ::testing::Test {
 protected:
  ServerTest()
      : logger_(
            [this](std::string_view line) {
              std::lock_guard lock(log_mu_);
              log_.emplace_back(line);
            },
            LogLevel::kDebug) {}

  ~ServerTest() override {
    if (server_) server_->Stop(1s);
  }

  static ServerOptions Options() {
    ServerOptions o;
    o.certificate_chain_pem = Pki().server.cert_pem;
    o.private_key_pem = Pki().server.key_pem;
    o.client_ca_pem = Pki().ca.cert_pem;
    o.io_threads = 2;
    o.worker_threads = 2;
    o.rate_per_second = 0;  // tests below send bursts; the rate-limit test turns it on
    return o;
  }

  static Result<Principal> Authenticate(std::string_view token) {
    if (token == "admin-secret")
      return Principal{Principal::Kind::kToken, "tok_admin", "Ada", Role::kAdmin};
    if (token == "operator-secret") {
      return Principal{Principal::Kind::kToken, "tok_op", "Otto", Role::kOperator};
    }
    if (token == "viewer-secret") {
      return Principal{Principal::Kind::kToken, "tok_view", "Vera", Role::kViewer};
    }
    if (token == "outage") return Unavailable("database is not reachable");
    return Unauthenticated("unknown token");
  }

  // The routes most tests use.
  Router TestRouter() {
    Router r;
    r.Add("POST", "/v1/echo", Access::kPublic, [this](const Request& req, const Principal&) {
      ++handler_calls_;
      const nlohmann::json in = nlohmann::json::parse(req.body, nullptr, false);
      return Response::Json(200, {{"got", in}, {"request_id", req.request_id}});
    });
    r.Add("GET", "/v1/items/{item_id}", Access::kPublic, [](const Request& req, const Principal&) {
      return Response::Json(200, {{"item_id", req.path_params.at("item_id")},
                                  {"query", req.query},
                                  {"path", req.path},
                                  {"peer", req.peer_address}});
    });
    r.Add("GET", "/v1/device/whoami", Access::kDevice, [](const Request& req, const Principal& p) {
      nlohmann::json out = Describe(p);
      out["cn"] = req.client_cert_subject_cn.value_or("");
      return Response::Json(200, out);
    });
    const auto who = [](const Request&, const Principal& p) {
      return Response::Json(200, Describe(p));
    };
    r.Add("GET", "/v1/viewer", Access::kViewer, who);
    r.Add("GET", "/v1/operator", Access::kOperator, who);
    r.Add("POST", "/v1/admin/thing", Access::kAdmin, who);
    r.Add("GET", "/v1/throw", Access::kPublic,
          [](const Request&, const Principal&) -> Response { throw std::runtime_error("boom"); });
    r.Add("GET", "/metrics", Access::kPublic, MetricsHandler(metrics_));
    r.AddAsync("GET", "/v1/device/events", Access::kPublic,
               [this](const Request& req, const Principal&) -> asio::awaitable<Response> {
                 const auto wait = std::chrono::milliseconds(
                     std::stoi(req.query.count("wait_ms") ? req.query.at("wait_ms") : "30000"));
                 const bool woke = co_await hub_.Wait("device-1", wait);
                 co_return Response::Json(200, {{"woke", woke}});
               });
    r.AddAsync("GET", "/v1/async-throw", Access::kPublic,
               [](const Request&, const Principal&) -> asio::awaitable<Response> {
                 throw std::runtime_error("async boom");
                 co_return Response();
               });
    return r;
  }

  void Start(Router router, ServerOptions options = Options()) {
    options.long_poll_hubs = {&hub_};
    Result<std::unique_ptr<Server>> server =
        Server::Start(std::move(options), std::move(router), Authenticate, &metrics_, &logger_);
    ASSERT_TRUE(server.ok()) << server.error().ToString();
    server_ = std::move(*server);
  }

  ClientOptions ClientOpts(const KeyAndCert* cert = nullptr) {
    ClientOptions o;
    o.host = "127.0.0.1";
    o.port = server_->port();
    o.ca_pem = Pki().ca.cert_pem;
    if (cert != nullptr) {
      o.client_certificate_pem = cert->cert_pem;
      o.client_key_pem = cert->key_pem;
    }
    o.request_timeout = 10s;
    return o;
  }

  std::unique_ptr<Client> NewClient(const KeyAndCert* cert = nullptr,
                                    std::optional<std::string> token = std::nullopt) {
    ClientOptions o = ClientOpts(cert);
    o.bearer_token = std::move(token);
    return *Client::Create(std::move(o));
  }

  // A raw TLS connection to the server, or null if the handshake failed.
  std::unique_ptr<RawConnection> Raw() {
    auto raw = std::make_unique<RawConnection>(server_->port());
    return raw->Connect() ? std::move(raw) : nullptr;
  }

  std::vector<std::string> RequestLogLines() {
    std::lock_guard lock(log_mu_);
    std::vector<std::string> out;
    for (const std::string& line : log_) {
      if (line.find("\"msg\":\"request\"") != std::string::npos) out.push_back(line);
    }
    return out;
  }

  std::string AllLogs() {
    std::lock_guard lock(log_mu_);
    std::string out;
    for (const std::string& line : log_) out += line;
    return out;
  }

  std::atomic<int> handler_calls_{0};
  Metrics metrics_;
  std::mutex log_mu_;
  std::vector<std::string> log_;
  Logger logger_;
  LongPollHub hub_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, JsonRoundTripOverTls) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  Result<ClientResponse> r = client->PostJson("/v1/echo", {{"hello", "wörld"}, {"n", 7}});
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("Content-Type"), "application/json");
  const nlohmann::json body = Body(*r);
  EXPECT_EQ(body["got"]["hello"], "wörld");
  EXPECT_EQ(body["got"]["n"], 7);
  const std::optional<std::string> id = r->Header("X-Request-Id");
  ASSERT_TRUE(id.has_value());
  EXPECT_TRUE(std::regex_match(*id, std::regex("[0-9a-f]{32}")));
  EXPECT_EQ(body["request_id"], *id);
}

TEST_F(ServerTest, KeepAliveReusesOneConnection) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    Result<ClientResponse> r = client->Get("/v1/items/" + std::to_string(i));
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    EXPECT_EQ(r->status, 200);
    ids.insert(*r->Header("X-Request-Id"));
  }
  EXPECT_EQ(client->connects(), 1u);
  EXPECT_EQ(server_->open_connections(), 1u);
  EXPECT_EQ(ids.size(), 5u);  // a fresh id per request
}

TEST_F(ServerTest, PathAndQueryParametersArrivePercentDecoded) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  Result<ClientResponse> r = client->Get("/v1/items/a%20b%2Fc?x=1&greeting=hello+w%C3%B6rld");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  ASSERT_EQ(r->status, 200) << r->body;
  const nlohmann::json body = Body(*r);
  EXPECT_EQ(body["item_id"], "a b/c");
  EXPECT_EQ(body["query"]["x"], "1");
  EXPECT_EQ(body["query"]["greeting"], "hello wörld");
  EXPECT_EQ(body["path"], "/v1/items/a%20b%2Fc");
  EXPECT_EQ(body["peer"], "127.0.0.1");
}

TEST_F(ServerTest, DeviceRouteGivesTheHandlerTheCertificateCommonName) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient(&Pki().device);
  Result<ClientResponse> r = client->Get("/v1/device/whoami");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  ASSERT_EQ(r->status, 200) << r->body;
  const nlohmann::json body = Body(*r);
  EXPECT_EQ(body["id"], "device-0001");
  EXPECT_EQ(body["cn"], "device-0001");
  EXPECT_EQ(body["kind"], static_cast<int>(Principal::Kind::kDevice));
}

TEST_F(ServerTest, ClientKeepsOnlyTheTlsContextNotTheKeyPem) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  ClientOptions o = ClientOpts(&Pki().device);
  Result<std::unique_ptr<Client>> created = Client::Create(o);
  ASSERT_TRUE(created.ok()) << created.error().ToString();
  std::unique_ptr<Client> client = std::move(*created);
  // The caller's copy can go: the client authenticates with the context it made.
  WipeClientKey(o);
  EXPECT_FALSE(o.client_key_pem.has_value());
  Result<ClientResponse> r = client->Get("/v1/device/whoami");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200) << r->body;
  // And options without a key are left as they are.
  ClientOptions none = ClientOpts();
  WipeClientKey(none);
  EXPECT_FALSE(none.client_key_pem.has_value());
  EXPECT_EQ(none.ca_pem, Pki().ca.cert_pem);
}

TEST_F(ServerTest, DeviceRouteRefusesAClientWithoutCertificate) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient()->Get("/v1/device/whoami");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("no client certificate was presented"));
  EXPECT_TRUE(IsErrorShape(r->body));
}

TEST_F(ServerTest, DeviceRouteRefusesACertificateFromAnotherCa) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient(&Pki().device_other_ca)->Get("/v1/device/whoami");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("did not verify"));
  EXPECT_THAT(r->body, HasSubstr("unable to get local issuer certificate"));
}

TEST_F(ServerTest, DeviceRouteRefusesAnExpiredCertificate) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient(&Pki().device_expired)->Get("/v1/device/whoami");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->body, HasSubstr("certificate has expired"));
}

TEST_F(ServerTest, BearerRouteRefusesAMissingToken) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient()->Get("/v1/viewer");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->Header("WWW-Authenticate").value_or(""), HasSubstr("Bearer"));
  EXPECT_THAT(r->body, HasSubstr("Authorization: Bearer"));
  EXPECT_TRUE(IsErrorShape(r->body));
}

TEST_F(ServerTest, BearerRouteRefusesMalformedAuthorization) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  for (const char* header :
       {"Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Bearer tok=en", "Bearerviewer-secret"}) {
    ClientRequest req;
    req.target = "/v1/viewer";
    req.headers.emplace_back("Authorization", header);
    Result<ClientResponse> r = client->Send(req);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 401) << header;
    EXPECT_THAT(r->Header("WWW-Authenticate").value_or(""), HasSubstr("invalid_request"));
  }
}

TEST_F(ServerTest, BearerRouteRefusesAnUnknownToken) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient(nullptr, "not-a-token")->Get("/v1/viewer");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401);
  EXPECT_THAT(r->Header("WWW-Authenticate").value_or(""), HasSubstr("invalid_token"));
  EXPECT_THAT(r->body, HasSubstr("not valid"));
}

TEST_F(ServerTest, ViewerCallingAnAdminRouteIsForbiddenAndToldTheRoleNeeded) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient(nullptr, "viewer-secret")->PostJson("/v1/admin/thing", {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 403);
  EXPECT_THAT(r->body, HasSubstr("needs the admin role"));
  EXPECT_EQ(Body(*r)["error"]["code"], "permission_denied");
}

TEST_F(ServerTest, HigherRolesMayCallLowerRoutesAndHandlersSeeThePrincipal) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto admin = NewClient(nullptr, "admin-secret");
  for (const char* target : {"/v1/viewer", "/v1/operator"}) {
    Result<ClientResponse> r = admin->Get(target);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->status, 200) << target << ": " << r->body;
    EXPECT_EQ(Body(*r)["id"], "tok_admin");
    EXPECT_EQ(Body(*r)["role"], "admin");
  }
  Result<ClientResponse> op = NewClient(nullptr, "operator-secret")->Get("/v1/viewer");
  ASSERT_TRUE(op.ok());
  EXPECT_EQ(op->status, 200);
  Result<ClientResponse> denied =
      NewClient(nullptr, "operator-secret")->PostJson("/v1/admin/thing", {});
  ASSERT_TRUE(denied.ok());
  EXPECT_EQ(denied->status, 403);
}

TEST_F(ServerTest, AuthenticatorOutageIsServiceUnavailableNotUnauthorized) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  Result<ClientResponse> r = NewClient(nullptr, "outage")->Get("/v1/viewer");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(Body(*r)["error"]["code"], "unavailable");
}

TEST_F(ServerTest, UnknownRouteIs404AndWrongMethodIs405WithAllow) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  Result<ClientResponse> missing = client->Get("/v1/nope");
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  EXPECT_THAT(missing->body, HasSubstr("/v1/nope"));
  EXPECT_TRUE(IsErrorShape(missing->body));
  Result<ClientResponse> wrong = client->Get("/v1/echo");
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->Header("Allow"), "POST");
  EXPECT_TRUE(IsErrorShape(wrong->body));
  EXPECT_EQ(client->connects(), 1u);  // errors without a body keep the connection
}

TEST_F(ServerTest, OversizedBodyIsRefusedWith413BeforeItIsSent) {
  ServerOptions options = Options();
  options.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  auto raw = Raw();
  ASSERT_NE(raw, nullptr);
  // Announce 10 MiB and send none of it: the answer must come anyway.
  auto response = raw->Request(
      "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 10485760\r\n\r\n");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 413u);
  EXPECT_THAT(response->body(), HasSubstr("1024 bytes"));
  EXPECT_TRUE(raw->WaitClosed());
  EXPECT_EQ(handler_calls_.load(), 0);
}

TEST_F(ServerTest, ChunkedBodyBeyondTheLimitIs413) {
  ServerOptions options = Options();
  options.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  auto raw = Raw();
  ASSERT_NE(raw, nullptr);
  const std::string chunk(1000, 'a');
  auto response = raw->Request(
      "POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3e8\r\n" +
      chunk + "\r\n3e8\r\n" + chunk + "\r\n");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 413u);
  EXPECT_EQ(handler_calls_.load(), 0);
}

TEST_F(ServerTest, OversizedHeaderIsRefusedWith431WithoutWaitingForItsEnd) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto raw = Raw();
  ASSERT_NE(raw, nullptr);
  // 20 KiB of one header field and no end of header: the server must not wait for more.
  auto response =
      raw->Request("GET /v1/items/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a'));
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 431u);
  EXPECT_TRUE(IsErrorShape(response->body()));
}

TEST_F(ServerTest, MalformedRequestsGetErrorAnswersAndTheServerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  const std::pair<std::string, unsigned> cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /v1/items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
      {"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
       400},
      {"GET /v1/items/1?q=%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET /v1/items/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET /v1/items/1?q=%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET http://evil.example/v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"GET /v1/items/1 HTTP/1.1\r\nBad Header\r\n\r\n", 400},
      {"GET /v1/items/1 HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417},
      {"GET /v1/items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       400},
  };
  for (const auto& [request, status] : cases) {
    auto raw = Raw();
    ASSERT_NE(raw, nullptr);
    auto response = raw->Request(request);
    ASSERT_TRUE(response.has_value()) << request;
    EXPECT_EQ(response->result_int(), status) << request << "\n" << response->body();
    EXPECT_TRUE(IsErrorShape(response->body())) << request;
    EXPECT_EQ((*response)["X-Request-Id"].size(), 32u);
  }
  Result<ClientResponse> r = NewClient()->Get("/v1/items/ok");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, ExpectContinueIsAnsweredBeforeTheBody) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto raw = Raw();
  ASSERT_NE(raw, nullptr);
  auto interim = raw->Request(
      "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
      "Expect: 100-continue\r\n\r\n");
  ASSERT_TRUE(interim.has_value());
  EXPECT_EQ(interim->result_int(), 100u);
  auto response = raw->Request("[1,2,3]");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 200u);
  EXPECT_THAT(response->body(), HasSubstr("[1,2,3]"));
}

TEST_F(ServerTest, SlowBodyIsAnswered408AfterTheBodyTimeout) {
  ServerOptions options = Options();
  options.body_timeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  auto raw = Raw();
  ASSERT_NE(raw, nullptr);
  ASSERT_TRUE(raw->Write("POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n[1"));
  auto response = raw->ReadResponse(5s);
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 408u);
  EXPECT_THAT(response->body(), HasSubstr("body did not arrive within 300 ms"));
  EXPECT_TRUE(raw->WaitClosed());
}

TEST_F(ServerTest, SlowlorisIsDisconnectedAfterTheHeaderTimeoutWithoutHoldingAWorker) {
  ServerOptions options = Options();
  options.header_timeout = 1s;
  options.worker_threads = 1;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  RawConnection slow(server_->port());
  ASSERT_TRUE(slow.Connect());
  auto trickle = std::async(std::launch::async, [&slow] {
    return slow.TrickleBytes(
        "GET /v1/items/1 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n", 250ms, 8s);
  });
  // Meanwhile the only worker thread serves others at once.
  Result<ClientResponse> r = NewClient()->Get("/v1/items/fast");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  const RawConnection::Trickle result = trickle.get();
  ASSERT_TRUE(result.closed_after.has_value()) << "the slow client was never disconnected";
  EXPECT_GE(*result.closed_after, 900ms);
  EXPECT_LT(*result.closed_after, 3s);
  EXPECT_EQ(result.status, 408);
}

TEST_F(ServerTest, ConnectionsBeyondTheLimitAreClosedAtOnce) {
  ServerOptions options = Options();
  options.max_connections = 2;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  auto first = std::make_unique<RawConnection>(server_->port());
  RawConnection second(server_->port());
  ASSERT_TRUE(first->Connect());
  ASSERT_TRUE(second.Connect());
  ASSERT_TRUE(Eventually([&] { return server_->open_connections() == 2; }));
  RawConnection third(server_->port());
  // The TLS handshake may still complete on the client side (TLS 1.3) before the close is
  // seen, so the proof is that the server ends the connection without answering.
  if (third.Connect()) {
    EXPECT_TRUE(third.Write("GET /v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_FALSE(third.ReadResponse().has_value());
  }
  EXPECT_THAT(metrics_.Render(),
              HasSubstr("custody_http_connections_rejected_total{reason=\"limit\"} 1\n"));
  first.reset();
  ASSERT_TRUE(Eventually([&] { return server_->open_connections() == 1; }));
  RawConnection fourth(server_->port());
  ASSERT_TRUE(fourth.Connect());
  auto response = fourth.Request("GET /v1/items/1 HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(response.has_value());
  EXPECT_EQ(response->result_int(), 200u);
}

TEST_F(ServerTest, RateLimitAnswers429WithRetryAfterPerClient) {
  ServerOptions options = Options();
  options.rate_per_second = 1;
  options.rate_burst = 3;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  auto viewer = NewClient(nullptr, "viewer-secret");
  for (int i = 0; i < 3; ++i) {
    Result<ClientResponse> r = viewer->Get("/v1/viewer");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 200) << i;
  }
  Result<ClientResponse> limited = viewer->Get("/v1/viewer");
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(limited->Header("Retry-After"), "1");
  EXPECT_THAT(limited->body, HasSubstr("token:tok_view"));
  EXPECT_EQ(Body(*limited)["error"]["code"], "resource_exhausted");
  // Another client (another token, a device) has its own bucket.
  Result<ClientResponse> admin = NewClient(nullptr, "admin-secret")->Get("/v1/viewer");
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(admin->status, 200);
  Result<ClientResponse> device = NewClient(&Pki().device)->Get("/v1/device/whoami");
  ASSERT_TRUE(device.ok());
  EXPECT_EQ(device->status, 200);
  EXPECT_THAT(
      metrics_.Render(),
      HasSubstr("custody_http_rate_limited_total{method=\"GET\",route=\"/v1/viewer\"} 1\n"));
}

TEST_F(ServerTest, HandlerExceptionIs500AndTheServerKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  for (const char* target : {"/v1/throw", "/v1/async-throw"}) {
    Result<ClientResponse> r = client->Get(target);
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    EXPECT_EQ(r->status, 500) << target;
    EXPECT_EQ(Body(*r)["error"]["code"], "internal");
    EXPECT_THAT(r->body, HasSubstr(*r->Header("X-Request-Id")));
  }
  Result<ClientResponse> ok = client->Get("/v1/items/1");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->status, 200);
  EXPECT_THAT(AllLogs(), HasSubstr("\"exception\":\"boom\""));
  EXPECT_THAT(AllLogs(), HasSubstr("\"exception\":\"async boom\""));
}

TEST_F(ServerTest, InvalidHandlerResponsesAre500AndBodiesOf204AreDropped) {
  Router router;
  router.Add("GET", "/bad-header", Access::kPublic, [](const Request&, const Principal&) {
    Response r;
    r.headers.emplace_back("X-Injected", "a\r\nSet-Cookie: x=y");
    return r;
  });
  router.Add("GET", "/bad-status", Access::kPublic, [](const Request&, const Principal&) {
    Response r;
    r.status = 42;
    return r;
  });
  router.Add("GET", "/no-content", Access::kPublic, [](const Request&, const Principal&) {
    return Response::Json(204, {{"dropped", true}});
  });
  ASSERT_NO_FATAL_FAILURE(Start(std::move(router)));
  auto client = NewClient();
  for (const char* target : {"/bad-header", "/bad-status"}) {
    Result<ClientResponse> r = client->Get(target);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 500) << target;
    EXPECT_FALSE(r->Header("Set-Cookie").has_value());
  }
  Result<ClientResponse> empty = client->Get("/no-content");  // 204 never carries a body
  ASSERT_TRUE(empty.ok()) << empty.error().ToString();
  EXPECT_EQ(empty->status, 204);
  EXPECT_EQ(empty->body, "");
  EXPECT_TRUE(client->Get("/bad-status").ok());  // and the connection is still in sync
  EXPECT_EQ(client->connects(), 1u);
}

TEST_F(ServerTest, LongPollAnswersAsSoonAsNotified) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  auto poll = std::async(std::launch::async, [&] { return client->Get("/v1/device/events"); });
  ASSERT_TRUE(Eventually([&] { return hub_.waiters() == 1; }));
  const auto notified_at = Clock::now();
  hub_.Notify("device-1");
  ASSERT_EQ(poll.wait_for(2s), std::future_status::ready);
  Result<ClientResponse> r = poll.get();
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(Body(*r)["woke"], true);
  EXPECT_LT(Clock::now() - notified_at, 500ms);
}

TEST_F(ServerTest, AsyncHandlerBeyondMaxLongPollIsAnswered503) {
  ServerOptions options = Options();
  options.max_long_poll = 300ms;
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter(), options));
  const auto start = Clock::now();
  Result<ClientResponse> r = NewClient()->Get("/v1/device/events?wait_ms=30000");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 503);
  EXPECT_THAT(r->body, HasSubstr("300 ms"));
  EXPECT_LT(Clock::now() - start, 3s);
}

TEST_F(ServerTest, StopEndsLongPollsPromptly) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  auto poll = std::async(std::launch::async, [&] { return client->Get("/v1/device/events"); });
  ASSERT_TRUE(Eventually([&] { return hub_.waiters() == 1; }));
  const auto start = Clock::now();
  server_->Stop(10s);
  EXPECT_LT(Clock::now() - start, 2s);
  Result<ClientResponse> r = poll.get();
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(Body(*r)["woke"], false);
  EXPECT_EQ(r->Header("Connection"), "close");
}

TEST_F(ServerTest, GracefulStopFinishesARequestInProgress) {
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  Router router;
  router.Add("GET", "/slow", Access::kPublic, [&](const Request&, const Principal&) {
    entered.set_value();
    released.wait();
    return Response::Json(200, {{"finished", true}});
  });
  ASSERT_NO_FATAL_FAILURE(Start(std::move(router)));
  auto client = NewClient();
  auto idle = NewClient();
  ASSERT_TRUE(idle->Get("/nothing").ok());  // an idle keep-alive connection
  auto request = std::async(std::launch::async, [&] { return client->Get("/slow"); });
  ASSERT_EQ(entered.get_future().wait_for(5s), std::future_status::ready);
  auto stop = std::async(std::launch::async, [&] { server_->Stop(10s); });
  // The stop waits for the request (bounded check that it has not returned yet).
  EXPECT_EQ(stop.wait_for(300ms), std::future_status::timeout);
  // The idle connection is closed at once, and nothing new is accepted.
  EXPECT_TRUE(Eventually([&] { return server_->open_connections() == 1; }));
  RawConnection late(server_->port());
  EXPECT_FALSE(late.Connect());
  release.set_value();
  Result<ClientResponse> r = request.get();
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(Body(*r)["finished"], true);
  ASSERT_EQ(stop.wait_for(5s), std::future_status::ready);
  server_->Stop(1s);  // idempotent
  EXPECT_EQ(server_->open_connections(), 0u);
}

TEST_F(ServerTest, MetricsEndpointServesPrometheusText) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto client = NewClient();
  ASSERT_TRUE(client->PostJson("/v1/echo", {{"a", 1}}).ok());
  ASSERT_TRUE(client->Get("/v1/nope").ok());
  Result<ClientResponse> r = client->Get("/metrics");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = r->body;
  EXPECT_THAT(text, HasSubstr("# HELP custody_http_requests_total "));
  EXPECT_THAT(text, HasSubstr("# TYPE custody_http_requests_total counter\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE custody_http_request_duration_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE custody_http_open_connections gauge\n"));
  EXPECT_THAT(text, HasSubstr("custody_http_requests_total{code=\"2xx\",method=\"POST\","
                              "route=\"/v1/echo\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("custody_http_requests_total{code=\"4xx\",method=\"-\","
                              "route=\"unmatched\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("custody_http_request_duration_seconds_count{method=\"POST\","
                              "route=\"/v1/echo\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("custody_http_open_connections 1\n"));
  // Every sample line is "name{labels} value" or "name value".
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eEInfNa]+$)");
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("#")) continue;
    EXPECT_TRUE(std::regex_match(line, sample)) << line;
  }
}

TEST_F(ServerTest, EveryRequestIsLoggedOnceWithoutTokensOrBodies) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  auto admin = NewClient(nullptr, "admin-secret");
  ASSERT_TRUE(admin->PostJson("/v1/admin/thing", {{"secret", "body-secret-value"}}).ok());
  ASSERT_TRUE(admin->Get("/v1/nope").ok());
  ASSERT_TRUE(NewClient()->PostJson("/v1/echo", {{"secret", "body-secret-value"}}).ok());
  ASSERT_TRUE(Eventually([&] { return RequestLogLines().size() >= 3; }));
  const std::vector<std::string> lines = RequestLogLines();
  ASSERT_EQ(lines.size(), 3u);
  const nlohmann::json first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["method"], "POST");
  EXPECT_EQ(first["route"], "/v1/admin/thing");
  EXPECT_EQ(first["status"], 200);
  EXPECT_EQ(first["principal"], "token:tok_admin");
  EXPECT_EQ(first["request_id"].get<std::string>().size(), 32u);
  EXPECT_TRUE(first["duration_ms"].is_number());
  EXPECT_EQ(nlohmann::json::parse(lines[1])["route"], "-");
  EXPECT_EQ(nlohmann::json::parse(lines[1])["status"], 404);
  const std::string all = AllLogs();
  EXPECT_THAT(all, ::testing::Not(HasSubstr("admin-secret")));
  EXPECT_THAT(all, ::testing::Not(HasSubstr("body-secret-value")));
}

TEST_F(ServerTest, StartRefusesInconsistentConfiguration) {
  Router device_routes;
  device_routes.Add("GET", "/d", Access::kDevice,
                    [](const Request&, const Principal&) { return Response(); });
  ServerOptions no_ca = Options();
  no_ca.client_ca_pem.reset();
  Result<std::unique_ptr<Server>> a =
      Server::Start(no_ca, device_routes, Authenticate, nullptr, nullptr);
  ASSERT_FALSE(a.ok());
  EXPECT_THAT(a.error().message(), HasSubstr("client CA"));

  Router admin_routes;
  admin_routes.Add("GET", "/a", Access::kAdmin,
                   [](const Request&, const Principal&) { return Response(); });
  Result<std::unique_ptr<Server>> b =
      Server::Start(Options(), admin_routes, nullptr, nullptr, nullptr);
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.error().message(), HasSubstr("authenticator"));

  ServerOptions bad_key = Options();
  bad_key.private_key_pem = Pki().other_ca.key_pem;
  Result<std::unique_ptr<Server>> c = Server::Start(bad_key, Router(), nullptr, nullptr, nullptr);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.error().message(), HasSubstr("does not match"));
}

TEST_F(ServerTest, StartReportsAPortInUse) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  ServerOptions same_port = Options();
  same_port.port = server_->port();
  Result<std::unique_ptr<Server>> second =
      Server::Start(same_port, Router(), nullptr, nullptr, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), StatusCode::kUnavailable);
  EXPECT_THAT(second.error().message(), HasSubstr(std::to_string(server_->port())));
}

TEST_F(ServerTest, ReloadTlsServesNewConnectionsWithTheNewCertificate) {
  ASSERT_NO_FATAL_FAILURE(Start(TestRouter()));
  const KeyAndCert renewed =
      testing::Issue({.common_name = "custodian-renewed", .server = true}, &Pki().ca);
  ASSERT_TRUE(server_->ReloadTls(renewed.cert_pem, renewed.key_pem, Pki().ca.cert_pem).ok());
  EXPECT_FALSE(server_->ReloadTls("junk", renewed.key_pem, Pki().ca.cert_pem).ok());
  Result<ClientResponse> r = NewClient()->Get("/v1/items/1");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
}

}  // namespace
}  // namespace custody::http
