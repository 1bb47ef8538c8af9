#include "agent/local_client.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/local_server.h"
#include "tests/support/must.h"
#include "tests/support/unprivileged.h"

namespace custody::agent {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kWait = 10s;  // upper bound for anything the tests wait for

void ExpectError(const Status& s, StatusCode code, std::string_view part) {
  EXPECT_EQ(StatusCodeName(s.code()), StatusCodeName(code)) << s.ToString();
  EXPECT_NE(s.message().find(part), std::string::npos)
      << "'" << part << "' not in: " << s.message();
}

// A fresh directory under /tmp for the socket, removed with its contents.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/custody-lc-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A scripted HTTP server on a Unix socket, for answers the real server never gives (chunked,
// read until the end, interim, malformed) and for closing at chosen moments. Connection i gets
// the canned answers script[i] in turn, one per request read; an empty one closes the connection
// without answering; after the last one the server waits for the client to close.
class ScriptedServer {
 public:
  ScriptedServer(const std::string& path, std::vector<std::vector<std::string>> script)
      : script_(std::move(script)) {
    listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener_, 8) != 0) {
      ADD_FAILURE() << "cannot listen on " << path << ": " << std::strerror(errno);
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }

  int accepted() const { return accepted_; }
  // The request lines received, in order ("POST /x HTTP/1.1").
  std::vector<std::string> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  // Waits for `fd` to be readable; false when stopping.
  bool WaitReadable(int fd) const {
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10) > 0) return true;
    }
    return false;
  }

  // Reads one request (header and Content-Length body); false if the client closed.
  bool ReadRequest(int fd, std::string& in) {
    size_t end;
    while ((end = in.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(fd, in)) return false;
    }
    size_t length = 0;
    const size_t cl = in.find("Content-Length: ");
    if (cl != std::string::npos && cl < end) length = std::stoul(in.substr(cl + 16));
    while (in.size() < end + 4 + length) {
      if (!Fill(fd, in)) return false;
    }
    {
      std::lock_guard lock(mu_);
      requests_.push_back(in.substr(0, in.find("\r\n")));
    }
    in.erase(0, end + 4 + length);
    return true;
  }

  bool Fill(int fd, std::string& in) const {
    if (!WaitReadable(fd)) return false;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) return false;
    in.append(buf, static_cast<size_t>(n));
    return true;
  }

  void Run() {
    for (const std::vector<std::string>& answers : script_) {
      if (!WaitReadable(listener_)) return;
      const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      ++accepted_;
      std::string in;
      bool open = true;
      for (const std::string& answer : answers) {
        if (!ReadRequest(fd, in) || answer.empty()) {
          open = false;
          break;
        }
        std::string_view rest = answer;
        while (!rest.empty()) {
          const ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
          if (n <= 0) break;
          rest.remove_prefix(static_cast<size_t>(n));
        }
        if (answer.find("Connection: close") != std::string::npos) {
          open = false;
          break;
        }
      }
      // Until the client closes (or the test ends), unless the script closed it.
      while (open && Fill(fd, in)) {
      }
      ::close(fd);
    }
    WaitReadable(-1);
  }

  std::vector<std::vector<std::string>> script_;
  int listener_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  mutable std::mutex mu_;
  std::vector<std::string> requests_;
};

constexpr std::string_view kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

class LocalClientTest : public ::testing::Test {
 protected:
  void TearDown() override {
    OpenGate();
    server_.reset();
  }

  // Requests to /slow wait until the gate opens (at the latest when the test ends).
  void OpenGate() {
    if (!gate_opened_.exchange(true)) gate_.set_value();
  }

  // The real server; its handler answers /echo with what it saw, /big with 3 MiB and /slow once
  // the gate opens.
  void StartServer(LocalServerOptions o = {}) {
    o.socket_path = path_;
    auto handler = [this](LocalRequest& request) {
      LocalResponse r;
      r.content_type = "text/plain";
      if (request.target == "/big") {
        r.body.resize(3 << 20);
        for (size_t i = 0; i < r.body.size(); ++i) r.body[i] = static_cast<char>(i * 7);
        return r;
      }
      if (request.target == "/slow") gate_released_.wait_for(kWait);
      r.body = request.method + " " + request.target + "\n" + request.body;
      if (auto auth = request.Header("Authorization")) {
        r.headers.emplace_back("X-Seen-Authorization", std::string(*auth));
      }
      if (auto test = request.Header("X-Test")) {
        r.headers.emplace_back("X-Seen-Test", std::string(*test));
      }
      return r;
    };
    auto allow = [](const PeerCredentials&, const LocalRequest&) -> Result<std::string> {
      return std::string("test");
    };
    Result<std::unique_ptr<LocalServer>> server = LocalServer::Start(o, allow, handler);
    ASSERT_TRUE(server.ok()) << server.error().ToString();
    server_ = std::move(*server);
  }

  LocalClientOptions ClientOptions() const {
    LocalClientOptions o;
    o.socket_path = path_;
    o.timeout = kWait;
    return o;
  }

  std::unique_ptr<LocalClient> Client(LocalClientOptions o) {
    Result<std::unique_ptr<LocalClient>> client = LocalClient::Connect(std::move(o));
    EXPECT_TRUE(client.ok()) << client.error().ToString();
    return client.ok() ? std::move(*client) : nullptr;
  }
  std::unique_ptr<LocalClient> Client() { return Client(ClientOptions()); }

  TempDir dir_;
  const std::string path_ = dir_.path() + "/agent.sock";
  std::promise<void> gate_;
  std::shared_future<void> gate_released_ = gate_.get_future().share();
  std::atomic<bool> gate_opened_{false};
  std::unique_ptr<LocalServer> server_;
};

// ----- against the real server -----------------------------------------------------------------

TEST_F(LocalClientTest, RoundTripCarriesMethodTargetBodyAndHeaders) {
  StartServer();
  auto client = Client();
  ASSERT_TRUE(client);
  const std::string body("binary\0body", 11);
  Result<LocalAnswer> a = client->Send("POST", "/echo?x=1", body, {{"X-Test", "yes"}});
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->status, 200);
  EXPECT_EQ(a->body, "POST /echo?x=1\n" + body);
  EXPECT_EQ(a->Header("content-type"), "text/plain");
  EXPECT_EQ(a->Header("X-SEEN-TEST"), "yes");
  EXPECT_EQ(a->Header("X-Seen-Authorization"), std::nullopt);
  EXPECT_EQ(a->Header("Nope"), std::nullopt);
  EXPECT_EQ(client->peer(), "the agent at " + path_);
}

TEST_F(LocalClientTest, BearerTokenIsSentWithEveryRequest) {
  StartServer();
  LocalClientOptions o = ClientOptions();
  o.bearer_token = "app-token-123";
  auto client = Client(o);
  ASSERT_TRUE(client);
  for (int i = 0; i < 2; ++i) {
    Result<LocalAnswer> a = client->Send("GET", "/echo");
    ASSERT_TRUE(a.ok()) << a.error().ToString();
    EXPECT_EQ(a->Header("X-Seen-Authorization"), "Bearer app-token-123");
  }
  // The client owns the field then.
  ExpectError(client->Send("GET", "/echo", {}, {{"authorization", "Bearer other"}}).error(),
              StatusCode::kInvalidArgument, "set by the client itself");
  o.bearer_token = "two words";
  ExpectError(LocalClient::Connect(o).error(), StatusCode::kInvalidArgument, "application token");
}

TEST_F(LocalClientTest, KeepAliveReusesOneConnection) {
  StartServer();
  auto client = Client();
  ASSERT_TRUE(client);
  for (int i = 0; i < 20; ++i) {
    Result<LocalAnswer> a = client->Send(i % 2 == 0 ? "GET" : "POST", "/echo", "x");
    ASSERT_TRUE(a.ok()) << a.error().ToString();
    EXPECT_EQ(a->status, 200);
  }
  EXPECT_EQ(server_->stats().requests, 20u);
  EXPECT_EQ(server_->stats().connections, 1u);
}

TEST_F(LocalClientTest, HeadAnswerHasNoBodyAndKeepsTheConnection) {
  StartServer();
  auto client = Client();
  ASSERT_TRUE(client);
  Result<LocalAnswer> head = client->Send("HEAD", "/echo");
  ASSERT_TRUE(head.ok()) << head.error().ToString();
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("Content-Length"), std::to_string(std::string("HEAD /echo\n").size()));
  EXPECT_EQ(head->body, "");
  Result<LocalAnswer> get = client->Send("GET", "/echo");
  ASSERT_TRUE(get.ok()) << get.error().ToString();
  EXPECT_EQ(get->body, "GET /echo\n");
  EXPECT_EQ(server_->stats().connections, 1u);
}

TEST_F(LocalClientTest, LargeAnswerIsReadWhole) {
  StartServer();
  auto client = Client();
  ASSERT_TRUE(client);
  Result<LocalAnswer> a = client->Send("GET", "/big");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  ASSERT_EQ(a->body.size(), size_t{3} << 20);
  for (size_t i = 0; i < a->body.size(); ++i) {
    ASSERT_EQ(a->body[i], static_cast<char>(i * 7)) << i;
  }
  // A large request body goes out whole too.
  const std::string upload(5 << 20, 'u');
  Result<LocalAnswer> echo = client->Send("POST", "/echo", upload);
  ASSERT_TRUE(echo.ok()) << echo.error().ToString();
  EXPECT_EQ(echo->body, "POST /echo\n" + upload);
}

TEST_F(LocalClientTest, AnswerOverTheLimitIsResourceExhausted) {
  StartServer();
  LocalClientOptions o = ClientOptions();
  o.max_response_bytes = 1 << 20;
  auto client = Client(o);
  ASSERT_TRUE(client);
  ExpectError(client->Send("GET", "/big").error(), StatusCode::kResourceExhausted,
              "larger than the 1048576 bytes allowed");
  // The connection is gone; the next request gets a new one.
  Result<LocalAnswer> a = client->Send("GET", "/echo");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "GET /echo\n");
}

TEST_F(LocalClientTest, ReconnectsAfterTheServerClosedAnIdleConnection) {
  LocalServerOptions o;
  o.idle_timeout = 50ms;
  StartServer(o);
  auto client = Client();
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Send("GET", "/echo").ok());
  const auto end = Clock::now() + kWait;
  while (server_->stats().connections != 0 && Clock::now() < end) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(server_->stats().connections, 0u);
  // Noticed before anything is written, so even a POST goes out (once) on a new connection.
  Result<LocalAnswer> a = client->Send("POST", "/echo", "after idle");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "POST /echo\nafter idle");
  EXPECT_EQ(server_->stats().requests, 2u);
}

TEST_F(LocalClientTest, TimeoutIsDeadlineExceededAndTheClientRecovers) {
  StartServer();
  LocalClientOptions o = ClientOptions();
  o.timeout = 200ms;
  auto client = Client(o);
  ASSERT_TRUE(client);
  const auto start = Clock::now();
  Result<LocalAnswer> a = client->Send("GET", "/slow");
  ExpectError(a.error(), StatusCode::kDeadlineExceeded, "no answer from the agent at");
  EXPECT_LT(Clock::now() - start, 5s);
  OpenGate();
  Result<LocalAnswer> next = client->Send("GET", "/echo");
  ASSERT_TRUE(next.ok()) << next.error().ToString();
  EXPECT_EQ(next->body, "GET /echo\n");
}

TEST_F(LocalClientTest, LoopbackTcpWorksLikeTheSocket) {
  LocalServerOptions o;
  o.tcp_port = 0;
  StartServer(o);
  LocalClientOptions c;
  c.tcp_port = server_->tcp_port();
  auto client = Client(c);
  ASSERT_TRUE(client);
  Result<LocalAnswer> a = client->Send("POST", "/echo", "over tcp");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "POST /echo\nover tcp");
  EXPECT_EQ(client->peer(), "the agent at 127.0.0.1:" + std::to_string(*c.tcp_port));
}

TEST_F(LocalClientTest, MalformedRequestPartsAreRefusedBeforeSending) {
  StartServer();
  auto client = Client();
  ASSERT_TRUE(client);
  ExpectError(client->Send("GE T", "/echo").error(), StatusCode::kInvalidArgument, "method");
  ExpectError(client->Send("GET", "echo").error(), StatusCode::kInvalidArgument, "target");
  ExpectError(client->Send("GET", "/a b").error(), StatusCode::kInvalidArgument, "target");
  ExpectError(client->Send("GET", "/a\r\nX: y").error(), StatusCode::kInvalidArgument, "target");
  ExpectError(client->Send("GET", "/echo", {}, {{"X-Test", "a\r\nInjected: 1"}}).error(),
              StatusCode::kInvalidArgument, "X-Test");
  ExpectError(client->Send("GET", "/echo", {}, {{"Bad Name", "v"}}).error(),
              StatusCode::kInvalidArgument, "Bad Name");
  for (const char* ours : {"Content-Length", "transfer-encoding", "Host", "Connection"}) {
    ExpectError(client->Send("GET", "/echo", {}, {{ours, "1"}}).error(),
                StatusCode::kInvalidArgument, "set by the client itself");
  }
  EXPECT_EQ(server_->stats().requests, 0u);
  ASSERT_TRUE(client->Send("GET", "/echo").ok());
}

// ----- connecting -------------------------------------------------------------------------------

TEST_F(LocalClientTest, MissingSocketIsUnavailableNamingThePath) {
  Result<std::unique_ptr<LocalClient>> client = LocalClient::Connect(ClientOptions());
  ASSERT_FALSE(client.ok());
  ExpectError(client.error(), StatusCode::kUnavailable,
              "cannot connect to the agent at " + path_ + ": No such file or directory");
  ExpectError(client.error(), StatusCode::kUnavailable, "is custody-agent running?");
  // A socket file nobody listens on.
  { ScriptedServer stale(path_, {}); }
  ExpectError(LocalClient::Connect(ClientOptions()).error(), StatusCode::kUnavailable,
              "Connection refused");
}

TEST_F(LocalClientTest, SocketWithoutPermissionIsPermissionDenied) {
  StartServer();
  testing::LetOthersThrough(dir_.path());
  // An ordinary user (nobody, when the suite runs as root) connects: the socket's mode decides.
  auto connect = [&] {
    return MUST(testing::AsUnprivilegedUser([&] {
      Result<std::unique_ptr<LocalClient>> client = LocalClient::Connect(ClientOptions());
      return client.ok() ? std::string("connected") : client.error().ToString();
    }));
  };
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  EXPECT_EQ(connect(), "connected") << "the control: the path to the socket is open";
  ASSERT_EQ(::chmod(path_.c_str(), 0), 0);
  const std::string refused = connect();
  EXPECT_TRUE(refused.starts_with("permission_denied: cannot connect to the agent at " + path_ +
                                  ": Permission denied"))
      << refused;
  EXPECT_NE(refused.find("is your user allowed on the socket?"), std::string::npos) << refused;
}

TEST_F(LocalClientTest, BadOptionsAreRefused) {
  LocalClientOptions o;
  ExpectError(LocalClient::Connect(o).error(), StatusCode::kInvalidArgument, "no agent socket");
  o.socket_path = "/" + std::string(200, 'a');
  ExpectError(LocalClient::Connect(o).error(), StatusCode::kInvalidArgument, "longer than");
  o = ClientOptions();
  o.timeout = 0ms;
  ExpectError(LocalClient::Connect(o).error(), StatusCode::kInvalidArgument, "timeout");
}

// ----- answers the real server does not give ----------------------------------------------------

TEST_F(LocalClientTest, ChunkedAnswerIsDecoded) {
  ScriptedServer server(path_, {{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                                 std::string(kOk)}});
  auto client = Client();
  ASSERT_TRUE(client);
  Result<LocalAnswer> a = client->Send("GET", "/chunked");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "hello world");
  // The connection stays usable after a chunked answer.
  Result<LocalAnswer> b = client->Send("GET", "/next");
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ(b->body, "ok");
  EXPECT_EQ(server.accepted(), 1);
}

TEST_F(LocalClientTest, ConnectionCloseEndsTheConnectionAndAnswersMayRunToIt) {
  ScriptedServer server(path_,
                        {{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"},
                         {"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n1.0"},
                         {std::string(kOk)}});
  auto client = Client();
  ASSERT_TRUE(client);
  Result<LocalAnswer> a = client->Send("GET", "/a");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "until the end");
  Result<LocalAnswer> b = client->Send("POST", "/b", "x");
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ(b->body, "1.0");
  Result<LocalAnswer> c = client->Send("GET", "/c");
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(server.accepted(), 3);
}

TEST_F(LocalClientTest, InterimAnswersAreSkipped) {
  ScriptedServer server(path_, {{"HTTP/1.1 100 Continue\r\n\r\n" + std::string(kOk)}});
  auto client = Client();
  ASSERT_TRUE(client);
  Result<LocalAnswer> a = client->Send("POST", "/x", "body");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->status, 200);
  EXPECT_EQ(a->body, "ok");
}

TEST_F(LocalClientTest, MalformedOrCutAnswersAreErrors) {
  ScriptedServer server(path_,
                        {{"garbage\r\n\r\n"},
                         {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
                          "abc"},
                         {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          "Connection: close\r\n\r\n5\r\nhel"},
                         {"HTTP/1.1 200 OK\r\nX-Big: " + std::string(20 << 10, 'b') +
                          "\r\nContent-Length: 0\r\n\r\n"}});
  auto client = Client();
  ASSERT_TRUE(client);
  ExpectError(client->Send("GET", "/1").error(), StatusCode::kInternal, "not valid HTTP/1.1");
  ExpectError(client->Send("GET", "/2").error(), StatusCode::kUnavailable,
              "closed the connection in the middle of its answer");
  ExpectError(client->Send("GET", "/3").error(), StatusCode::kUnavailable,
              "in the middle of its answer");
  ExpectError(client->Send("GET", "/4").error(), StatusCode::kResourceExhausted,
              "header larger than");
}

TEST_F(LocalClientTest, GetIsSentAgainWhenAKeptConnectionClosesBeforeAnswering) {
  // The first connection answers once, then takes the next request and closes without answering
  // (the race with an idle timeout); a GET goes out once more on a new connection.
  ScriptedServer server(path_, {{std::string(kOk), ""}, {std::string(kOk)}});
  auto client = Client();
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Send("GET", "/first").ok());
  Result<LocalAnswer> a = client->Send("GET", "/again");
  ASSERT_TRUE(a.ok()) << a.error().ToString();
  EXPECT_EQ(a->body, "ok");
  EXPECT_EQ(server.accepted(), 2);
  EXPECT_EQ(server.requests(),
            (std::vector<std::string>{"GET /first HTTP/1.1", "GET /again HTTP/1.1",
                                      "GET /again HTTP/1.1"}));
}

TEST_F(LocalClientTest, PostIsNeverSentTwice) {
  // Same race for a POST (an inference, metered): it was written, so it is not resent.
  ScriptedServer server(path_, {{std::string(kOk), ""}, {std::string(kOk)}});
  auto client = Client();
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Send("GET", "/first").ok());
  ExpectError(client->Send("POST", "/v2/models/m/infer", "{}").error(), StatusCode::kUnavailable,
              "closed the connection before answering");
  EXPECT_EQ(server.accepted(), 1);
  EXPECT_EQ(server.requests().size(), 2u);
}

}  // namespace
}  // namespace custody::agent
