#include "agent/local_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/must.h"
#include "tests/support/unprivileged.h"

namespace custody::agent {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr auto kWait = 10s;  // upper bound for anything the tests wait for

// Waits until `condition` holds or `timeout` passed; returns whether it holds.
bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout = kWait) {
  const auto end = Clock::now() + timeout;
  while (!condition()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A gate handlers wait at, and a count of those that arrived.
class Gate {
 public:
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Returns whether the gate opened within the timeout.
  bool Pass(std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mu_);
    ++arrived_;
    cv_.notify_all();
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }
  bool WaitArrived(int n, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [this, n] { return arrived_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int arrived_ = 0;
};

struct HttpResponse {
  int status = 0;
  std::string status_line;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  std::optional<std::string> Header(std::string_view name) const {
    for (const auto& [n, v] : headers) {
      if (n.size() == name.size() &&
          std::equal(n.begin(), n.end(), name.begin(),
                     [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
        return v;
      }
    }
    return std::nullopt;
  }
  Json JsonBody() const { return Json::parse(body, nullptr, false); }
};

// A blocking HTTP client on a raw socket, so that tests can send exactly the bytes they want
// (partial headers, lies in Content-Length) and see exactly what comes back.
class RawClient {
 public:
  static std::unique_ptr<RawClient> Unix(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return nullptr;
    }
    return std::unique_ptr<RawClient>(new RawClient(fd));
  }
  static std::unique_ptr<RawClient> Tcp(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return nullptr;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return std::unique_ptr<RawClient>(new RawClient(fd));
  }
  ~RawClient() { ::close(fd_); }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one response (an interim 1xx one too). nullopt if the connection closed or nothing
  // complete arrived within `timeout`. `head`: the response to a HEAD request (no body).
  std::optional<HttpResponse> Read(std::chrono::milliseconds timeout = kWait, bool head = false) {
    const auto end = Clock::now() + timeout;
    size_t header_end;
    while ((header_end = in_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill(end)) return std::nullopt;
    }
    HttpResponse r;
    std::string_view header(in_.data(), header_end);
    size_t line_end = header.find("\r\n");
    r.status_line = std::string(header.substr(0, line_end));
    if (r.status_line.size() < 12) return std::nullopt;
    r.status = std::atoi(r.status_line.c_str() + 9);
    while (line_end != std::string_view::npos) {
      header.remove_prefix(line_end + 2);
      line_end = header.find("\r\n");
      const std::string_view line = header.substr(0, line_end);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      r.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
    }
    in_.erase(0, header_end + 4);
    size_t length = 0;
    if (auto cl = r.Header("Content-Length"); cl && !head) length = std::stoul(*cl);
    while (in_.size() < length) {
      if (!Fill(end)) return std::nullopt;
    }
    r.body = in_.substr(0, length);
    in_.erase(0, length);
    return r;
  }

  // True if the server closed the connection (EOF or reset) within `timeout`, with no data left.
  bool WaitClosed(std::chrono::milliseconds timeout = kWait) {
    const auto end = Clock::now() + timeout;
    while (Fill(end)) {
    }
    return closed_ && in_.empty();
  }

  int fd() const { return fd_; }

 private:
  explicit RawClient(int fd) : fd_(fd) {}

  // Reads what is available (waiting until `end`); false on close, error or timeout.
  bool Fill(Clock::time_point end) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char buf[65536];
    const ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    in_.append(buf, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  std::string in_;
  bool closed_ = false;
};

std::string Post(std::string_view target, std::string_view body,
                 std::string_view extra_headers = "") {
  return "POST " + std::string(target) +
         " HTTP/1.1\r\nHost: localhost\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         std::string(extra_headers) + "\r\n" + std::string(body);
}

std::string Get(std::string_view target, std::string_view extra_headers = "") {
  return "GET " + std::string(target) + " HTTP/1.1\r\nHost: localhost\r\n" +
         std::string(extra_headers) + "\r\n";
}

Json PeerJson(const PeerCredentials& p) {
  Json j{{"unix", p.unix_socket}};
  if (p.pid) j["pid"] = *p.pid;
  if (p.uid) j["uid"] = *p.uid;
  if (p.gid) j["gid"] = *p.gid;
  return j;
}

// Answers with what it saw.
LocalResponse EchoHandler(LocalRequest& request) {
  LocalResponse r;
  Json j{{"method", request.method},
         {"target", request.target},
         {"client", request.client},
         {"body", request.body},
         {"peer", PeerJson(request.peer)}};
  if (auto v = request.Header("x-test")) j["x_test"] = std::string(*v);
  r.body = j.dump();
  return r;
}

Result<std::string> AllowAll(const PeerCredentials& peer, const LocalRequest&) {
  if (!peer.unix_socket) return std::string("tcp");
  return "uid:" + std::to_string(peer.uid.value_or(-1));
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

class LocalServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/custody-ls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/agent.sock";
  }
  void TearDown() override {
    server_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  LocalServerOptions Options() const {
    LocalServerOptions o;
    o.socket_path = path_;
    return o;
  }

  void Start(LocalServerOptions o, LocalHandler handler = EchoHandler,
             LocalAuthorizer authorizer = AllowAll) {
    Result<std::unique_ptr<LocalServer>> server =
        LocalServer::Start(std::move(o), std::move(authorizer), std::move(handler));
    ASSERT_TRUE(server.ok()) << server.error().ToString();
    server_ = std::move(*server);
  }

  std::unique_ptr<RawClient> Connect() {
    auto client = RawClient::Unix(path_);
    EXPECT_NE(client, nullptr);
    return client;
  }

  // One request on a new connection.
  std::optional<HttpResponse> RoundTrip(const std::string& request) {
    auto client = Connect();
    if (!client || !client->Send(request)) return std::nullopt;
    return client->Read();
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<LocalServer> server_;
};

void ExpectJsonError(const HttpResponse& r, std::string_view contains) {
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  const Json j = r.JsonBody();
  ASSERT_TRUE(j.is_object()) << r.body;
  ASSERT_TRUE(j.contains("error") && j["error"].is_string()) << r.body;
  EXPECT_NE(j["error"].get<std::string>().find(contains), std::string::npos) << r.body;
}

TEST_F(LocalServerTest, HandlerEchoesTheRequest) {
  Start(Options());
  auto r = RoundTrip(Post("/v2/models/m/infer?x=1", "hello", "X-Test: yes\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->status_line, "HTTP/1.1 200 OK");
  EXPECT_EQ(r->Header("Content-Type"), "application/json");
  EXPECT_EQ(r->Header("Cache-Control"), "no-store");
  EXPECT_EQ(r->Header("Content-Length"), std::to_string(r->body.size()));
  const Json j = r->JsonBody();
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["target"], "/v2/models/m/infer?x=1");
  EXPECT_EQ(j["body"], "hello");
  EXPECT_EQ(j["x_test"], "yes");
  EXPECT_EQ(j["client"], "uid:" + std::to_string(::getuid()));
  EXPECT_EQ(server_->stats().requests, 1u);
}

TEST_F(LocalServerTest, BinaryBodiesTravelUnchangedBothWays) {
  Start(Options(), [](LocalRequest& request) {
    LocalResponse r;
    r.content_type = "application/octet-stream";
    r.body = std::move(request.body);
    std::reverse(r.body.begin(), r.body.end());
    return r;
  });
  std::string body(3 << 20, '\0');  // larger than one read and than the eager allocation
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 7 + (i >> 13));
  auto r = RoundTrip(Post("/bin", body));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("Content-Type"), "application/octet-stream");
  std::reverse(body.begin(), body.end());
  EXPECT_TRUE(r->body == body);
}

TEST_F(LocalServerTest, AuthorizerAndHandlerSeeThePeersCredentials) {
  std::mutex mu;
  std::optional<PeerCredentials> seen_by_authorizer;
  std::optional<std::string> header_seen;
  std::optional<size_t> body_size_seen;
  Start(Options(), EchoHandler,
        [&](const PeerCredentials& peer, const LocalRequest& header_only) -> Result<std::string> {
          std::lock_guard lock(mu);
          seen_by_authorizer = peer;
          if (auto v = header_only.Header("X-TEST")) header_seen = std::string(*v);
          body_size_seen = header_only.body.size();
          return std::string("app:test");
        });
  auto r = RoundTrip(Post("/p", "body", "x-test: Value\r\n"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const Json peer = r->JsonBody()["peer"];
  EXPECT_EQ(peer["unix"], true);
  EXPECT_EQ(peer["pid"], ::getpid());
  EXPECT_EQ(peer["uid"], ::getuid());
  EXPECT_EQ(peer["gid"], ::getgid());
  EXPECT_EQ(r->JsonBody()["client"], "app:test");
  std::lock_guard lock(mu);
  ASSERT_TRUE(seen_by_authorizer);
  EXPECT_TRUE(seen_by_authorizer->unix_socket);
  EXPECT_EQ(seen_by_authorizer->uid, ::getuid());
  EXPECT_EQ(seen_by_authorizer->gid, ::getgid());
  EXPECT_EQ(seen_by_authorizer->pid, ::getpid());
  EXPECT_EQ(header_seen, "Value");
  EXPECT_EQ(body_size_seen, 0u);  // called before the body was read
}

TEST_F(LocalServerTest, RefusedPeerGets401WithoutTheBodyBeingRead) {
  std::atomic<int> handled{0};
  LocalServerOptions o = Options();
  o.body_timeout = 60s;  // a 401 cannot be a timeout in disguise
  o.max_body_bytes = 1 << 20;
  Start(
      o,
      [&](LocalRequest&) {
        ++handled;
        return LocalResponse{};
      },
      [](const PeerCredentials&, const LocalRequest&) -> Result<std::string> {
        return Unauthenticated("uid 1000 is not \"allowed\"");
      });
  for (const std::string_view expect : {"", "Expect: 100-continue\r\n"}) {
    auto client = Connect();
    // 10 GiB announced (far above the body limit: the authorizer still answers first), none sent.
    ASSERT_TRUE(
        client->Send("POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 10737418240\r\n" +
                     std::string(expect) + "\r\n"));
    const auto started = Clock::now();
    auto r = client->Read(5s);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << "no 100 Continue may come first";
    EXPECT_LT(Clock::now() - started, 5s);
    ExpectJsonError(*r, "uid 1000 is not \"allowed\"");
    EXPECT_EQ(r->Header("Connection"), "close");
    EXPECT_TRUE(client->WaitClosed());
  }
  EXPECT_EQ(handled.load(), 0);
  EXPECT_EQ(server_->stats().rejected_auth, 2u);
}

TEST_F(LocalServerTest, AuthorizerPermissionDeniedGives403AndOtherErrorsTheirStatus) {
  Start(Options(), EchoHandler,
        [](const PeerCredentials&, const LocalRequest& r) -> Result<std::string> {
          if (r.target == "/403") return PermissionDenied("not for you");
          if (r.target == "/503") return Unavailable("policy store down");
          if (r.target == "/throw") throw std::runtime_error("secret detail");
          return std::string("ok");
        });
  auto client = Connect();
  // A refused GET has no body left unread: the connection stays usable.
  ASSERT_TRUE(client->Send(Get("/403")));
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  ExpectJsonError(*r, "not for you");
  ASSERT_TRUE(client->Send(Get("/503")));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  ASSERT_TRUE(client->Send(Get("/throw")));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(r->body.find("secret detail"), std::string::npos);
  ASSERT_TRUE(client->Send(Get("/fine")));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(LocalServerTest, ErrorMessagesAreEscapedJson) {
  Start(Options(), EchoHandler,
        [](const PeerCredentials&, const LocalRequest&) -> Result<std::string> {
          return Unauthenticated("quote \" backslash \\ newline \n control \x01 bad utf8 \xff end");
        });
  auto r = RoundTrip(Get("/"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  const Json j = r->JsonBody();
  ASSERT_TRUE(j.is_object()) << r->body;
  const std::string error = j["error"];
  EXPECT_NE(error.find("quote \" backslash \\ newline \n control \x01 bad utf8 "),
            std::string::npos);
  EXPECT_NE(error.find(" end"), std::string::npos);
}

TEST_F(LocalServerTest, ContentLengthOverTheLimitGets413BeforeTheBody) {
  std::atomic<int> handled{0};
  LocalServerOptions o = Options();
  o.max_body_bytes = 1024;
  o.body_timeout = 60s;
  Start(o, [&](LocalRequest&) {
    ++handled;
    return LocalResponse{};
  });
  auto client = Connect();
  ASSERT_TRUE(client->Send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n"));
  auto r = client->Read(5s);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  ExpectJsonError(*r, "1024");
  EXPECT_TRUE(client->WaitClosed());
  // Exactly at the limit is fine.
  r = RoundTrip(Post("/", std::string(1024, 'a')));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(handled.load(), 1);
}

TEST_F(LocalServerTest, ChunkedBodiesAreDecodedAndLimited) {
  LocalServerOptions o = Options();
  o.max_body_bytes = 1024;
  Start(o);
  auto r = RoundTrip(
      "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->JsonBody()["body"], "hello world");

  auto client = Connect();
  std::string big = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) big += "200\r\n" + std::string(512, 'x') + "\r\n";
  big += "0\r\n\r\n";
  ASSERT_TRUE(client->Send(big));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  ExpectJsonError(*r, "limit");
}

TEST_F(LocalServerTest, OversizedHeaderGets431) {
  LocalServerOptions o = Options();
  o.max_header_bytes = 1024;
  Start(o);
  auto client = Connect();
  ASSERT_TRUE(client->Send(Get("/", "X-Big: " + std::string(2000, 'a') + "\r\n")));
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  ExpectJsonError(*r, "1024");
  EXPECT_TRUE(client->WaitClosed());
}

TEST_F(LocalServerTest, SlowHeaderGets408AndTheConnectionCloses) {
  LocalServerOptions o = Options();
  o.header_timeout = 200ms;
  Start(o);
  auto client = Connect();
  ASSERT_TRUE(client->Send("GET / HTTP/1.1\r\nHost: x\r\n"));  // never finished
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  ExpectJsonError(*r, "header");
  EXPECT_TRUE(client->WaitClosed());
}

TEST_F(LocalServerTest, SlowBodyGets408) {
  LocalServerOptions o = Options();
  o.body_timeout = 200ms;
  Start(o);
  auto client = Connect();
  ASSERT_TRUE(client->Send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"));
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  ExpectJsonError(*r, "body");
  EXPECT_TRUE(client->WaitClosed());
}

TEST_F(LocalServerTest, FullQueueGets503WithRetryAfterAtOnce) {
  Gate gate;
  LocalServerOptions o = Options();
  o.worker_threads = 1;
  o.max_queue = 1;
  Start(o, [&](LocalRequest& request) {
    gate.Pass();
    return EchoHandler(request);
  });
  auto running = Connect();
  ASSERT_TRUE(running->Send(Post("/a", "a")));
  ASSERT_TRUE(gate.WaitArrived(1));
  auto queued = Connect();
  ASSERT_TRUE(queued->Send(Post("/b", "b")));
  ASSERT_TRUE(WaitUntil([&] { return server_->stats().queued == 1; }));
  EXPECT_EQ(server_->stats().in_flight, 1u);

  auto refused = Connect();
  ASSERT_TRUE(refused->Send(Post("/c", "c")));
  auto r = refused->Read();  // while the gate is still closed
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("Retry-After"), "1");
  ExpectJsonError(*r, "busy");
  EXPECT_EQ(server_->stats().rejected_busy, 1u);

  gate.Open();
  r = running->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = queued->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->JsonBody()["body"], "b");
  // Capacity is back.
  r = RoundTrip(Post("/d", "d"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(LocalServerTest, RequestsOnDifferentConnectionsRunConcurrently) {
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  LocalServerOptions o = Options();
  o.worker_threads = 2;
  Start(o, [&](LocalRequest&) {
    // Each handler waits for the other: both finish only if they run at the same time.
    std::unique_lock lock(mu);
    ++arrived;
    cv.notify_all();
    const bool both = cv.wait_for(lock, kWait, [&] { return arrived == 2; });
    LocalResponse r;
    r.status = both ? 200 : 500;
    return r;
  });
  auto a = Connect();
  auto b = Connect();
  ASSERT_TRUE(a->Send(Post("/a", "")));
  ASSERT_TRUE(b->Send(Post("/b", "")));
  auto ra = a->Read();
  auto rb = b->Read();
  ASSERT_TRUE(ra && rb);
  EXPECT_EQ(ra->status, 200);
  EXPECT_EQ(rb->status, 200);
}

TEST_F(LocalServerTest, ThrowingHandlerGets500AndTheServerKeepsServing) {
  Start(Options(), [](LocalRequest& request) -> LocalResponse {
    if (request.target == "/throw") throw std::runtime_error("engine exploded: key=abc");
    if (request.target == "/throw-int") throw 42;
    if (request.target == "/bad-status") return LocalResponse{99, "text/plain", {}, ""};
    if (request.target == "/bad-header") {
      return LocalResponse{200, "text/plain", {{"X-Evil", "a\r\nSet-Cookie: x"}}, ""};
    }
    return EchoHandler(request);
  });
  auto client = Connect();
  for (const char* target : {"/throw", "/throw-int", "/bad-status", "/bad-header"}) {
    ASSERT_TRUE(client->Send(Get(target)));
    auto r = client->Read();
    ASSERT_TRUE(r) << target;
    EXPECT_EQ(r->status, 500) << target;
    ExpectJsonError(*r, "internal error");
    EXPECT_EQ(r->body.find("key=abc"), std::string::npos);
    EXPECT_FALSE(r->Header("X-Evil"));
  }
  ASSERT_TRUE(client->Send(Get("/ok")));
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(server_->stats().handler_failures, 4u);
}

TEST_F(LocalServerTest, KeepAliveConnectionServesSeveralRequests) {
  Start(Options());
  auto client = Connect();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client->Send(Post("/k", "n" + std::to_string(i))));
    auto r = client->Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_FALSE(r->Header("Connection"));
    EXPECT_EQ(r->JsonBody()["body"], "n" + std::to_string(i));
  }
  EXPECT_EQ(server_->stats().connections, 1u);
  EXPECT_EQ(server_->stats().requests, 3u);
}

TEST_F(LocalServerTest, SeveralIoThreadsServeManyConnectionsAtOnce) {
  LocalServerOptions o = Options();
  o.io_threads = 3;
  o.worker_threads = 4;
  Start(o);
  constexpr int kClients = 8;
  constexpr int kRequests = 50;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto client = RawClient::Unix(path_);
      if (!client) return;
      for (int i = 0; i < kRequests; ++i) {
        const std::string body = std::to_string(c) + ":" + std::to_string(i);
        if (!client->Send(Post("/m", body))) return;
        auto r = client->Read();
        if (r && r->status == 200 && r->JsonBody()["body"] == body) ++ok;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
  EXPECT_EQ(server_->stats().requests, uint64_t{kClients * kRequests});
}

TEST_F(LocalServerTest, ConnectionCloseAndHttp10AreHonoured) {
  Start(Options());
  {
    auto client = Connect();
    ASSERT_TRUE(client->Send(Get("/", "Connection: close\r\n")));
    auto r = client->Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->Header("Connection"), "close");
    EXPECT_TRUE(client->WaitClosed());
  }
  {
    auto client = Connect();
    ASSERT_TRUE(client->Send("GET /old HTTP/1.0\r\n\r\n"));
    auto r = client->Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status_line, "HTTP/1.0 200 OK");
    EXPECT_EQ(r->Header("Connection"), "close");
    EXPECT_TRUE(client->WaitClosed());
  }
  {
    auto client = Connect();
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(client->Send("GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
      auto r = client->Read();
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200);
      EXPECT_EQ(r->Header("Connection"), "keep-alive");
    }
  }
}

TEST_F(LocalServerTest, ExpectContinueGetsAnInterimAnswerBeforeTheBody) {
  Start(Options());
  auto client = Connect();
  ASSERT_TRUE(client->Send(
      "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 100);
  ASSERT_TRUE(client->Send("12345"));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->JsonBody()["body"], "12345");
}

TEST_F(LocalServerTest, HeadGetsHeadersWithoutBody) {
  Start(Options());
  auto client = Connect();
  ASSERT_TRUE(client->Send("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r = client->Read(kWait, /*head=*/true);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->Header("Content-Length"), "0");
  // The next answer starts right after the header: no body bytes were sent.
  ASSERT_TRUE(client->Send(Get("/next")));
  r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->JsonBody()["target"], "/next");
}

TEST_F(LocalServerTest, MalformedRequestsGet400) {
  Start(Options());
  for (const char* request :
       {"NOT AN HTTP REQUEST\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"}) {
    auto client = Connect();
    ASSERT_TRUE(client->Send(request));
    auto r = client->Read();
    ASSERT_TRUE(r) << request;
    EXPECT_EQ(r->status, 400) << request;
    ExpectJsonError(*r, "");
    EXPECT_TRUE(client->WaitClosed());
  }
  auto r = RoundTrip(Get("/", "Expect: something\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 417);
  r = RoundTrip("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 501 || r->status == 400) << r->status;
}

TEST_F(LocalServerTest, StopLetsAnInFlightRequestFinishWithinGrace) {
  Gate gate;
  Start(Options(), [&](LocalRequest& request) {
    if (request.target == "/slow") gate.Pass();
    return EchoHandler(request);
  });
  auto idle = Connect();
  ASSERT_TRUE(idle->Send(Get("/idle")));
  ASSERT_TRUE(idle->Read());
  auto client = Connect();
  ASSERT_TRUE(client->Send(Post("/slow", "x")));
  ASSERT_TRUE(gate.WaitArrived(1));

  const auto started = Clock::now();
  std::thread stopper([&] { server_->Stop(30s); });
  // Stop has begun once the socket file is gone: nobody new can connect.
  EXPECT_TRUE(WaitUntil([&] { return !PathExists(path_); }));
  EXPECT_EQ(RawClient::Unix(path_), nullptr);
  EXPECT_TRUE(idle->WaitClosed());  // idle connections are closed at once

  gate.Open();
  auto r = client->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("Connection"), "close");
  EXPECT_EQ(r->JsonBody()["body"], "x");
  stopper.join();
  EXPECT_LT(Clock::now() - started, 10s);  // did not wait for the whole grace
  server_->Stop(0s);                       // idempotent
}

TEST_F(LocalServerTest, RequestCompletedDuringStopGets503) {
  Gate gate;
  std::atomic<bool> late_header_seen{false};
  Start(
      Options(),
      [&](LocalRequest& request) {
        gate.Pass();
        return EchoHandler(request);
      },
      [&](const PeerCredentials& peer, const LocalRequest& request) -> Result<std::string> {
        if (request.target == "/late") late_header_seen = true;
        return AllowAll(peer, request);
      });
  auto busy = Connect();
  ASSERT_TRUE(busy->Send(Post("/busy", "")));
  ASSERT_TRUE(gate.WaitArrived(1));
  auto late = Connect();
  ASSERT_TRUE(late->Send("POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"));
  ASSERT_TRUE(WaitUntil([&] { return late_header_seen.load(); }));

  std::thread stopper([&] { server_->Stop(30s); });
  ASSERT_TRUE(WaitUntil([&] { return !PathExists(path_); }));
  ASSERT_TRUE(late->Send("body"));
  auto r = late->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("Retry-After"), "1");
  ExpectJsonError(*r, "stopping");
  gate.Open();
  r = busy->Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  stopper.join();
}

TEST_F(LocalServerTest, StopAfterGraceClosesConnectionsOfUnfinishedHandlers) {
  Gate gate;
  Start(Options(), [&](LocalRequest& request) {
    gate.Pass(30s);
    return EchoHandler(request);
  });
  auto client = Connect();
  ASSERT_TRUE(client->Send(Post("/stuck", "")));
  ASSERT_TRUE(gate.WaitArrived(1));
  std::thread opener([&] {
    // The handler cannot be interrupted: Stop waits for it after closing the connection.
    EXPECT_TRUE(client->WaitClosed());
    gate.Open();
  });
  server_->Stop(100ms);
  opener.join();
}

TEST_F(LocalServerTest, SocketFileGetsModeAndGroupAndIsRemovedOnStop) {
  // A supplementary group if there is one, to see the group really change; else our own.
  gid_t group = ::getgid();
  std::vector<gid_t> groups(static_cast<size_t>(std::max(::getgroups(0, nullptr), 0)));
  if (!groups.empty() && ::getgroups(static_cast<int>(groups.size()), groups.data()) > 0) {
    for (gid_t g : groups) {
      if (g != group) {
        group = g;
        break;
      }
    }
  }
  LocalServerOptions o = Options();
  o.socket_mode = 0666;  // more than the usual umask lets through: the server sets it exactly
  o.socket_group = group;
  Start(o);
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0666u);
  EXPECT_EQ(st.st_gid, group);
  server_->Stop(1s);
  EXPECT_FALSE(PathExists(path_));

  o.socket_mode = 0600;
  o.socket_group.reset();
  Start(o);
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  server_.reset();  // the destructor stops too
  EXPECT_FALSE(PathExists(path_));
}

TEST_F(LocalServerTest, ForeignGroupIsPermissionDeniedAndLeavesNoSocket) {
  // Root may give a socket to any group: an ordinary user (nobody, when the suite runs as root)
  // starts the server, in a directory it may create the socket in.
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(dir_.c_str(), testing::kNobodyUid, testing::kNobodyGid), 0);
  }
  const std::string outcome = MUST(testing::AsUnprivilegedUser([&] {
    // A group this process is not a member of.
    std::vector<gid_t> groups(static_cast<size_t>(std::max(::getgroups(0, nullptr), 0)));
    if (!groups.empty()) {
      groups.resize(static_cast<size_t>(
          std::max(::getgroups(static_cast<int>(groups.size()), groups.data()), 0)));
    }
    gid_t foreign = 1;
    while (foreign == ::getgid() ||
           std::find(groups.begin(), groups.end(), foreign) != groups.end()) {
      ++foreign;
    }
    LocalServerOptions o = Options();
    o.socket_group = foreign;
    auto server = LocalServer::Start(o, AllowAll, EchoHandler);
    if (server.ok()) return std::string("started");
    return server.error().ToString() + (PathExists(path_) ? " [socket left behind]" : "");
  }));
  EXPECT_TRUE(outcome.starts_with("permission_denied: ")) << outcome;
  EXPECT_EQ(outcome.find("[socket left behind]"), std::string::npos) << outcome;
  EXPECT_FALSE(PathExists(path_));
}

TEST_F(LocalServerTest, PathWhereAnotherServerListensIsRefused) {
  Start(Options());
  auto second = LocalServer::Start(Options(), AllowAll, EchoHandler);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), StatusCode::kUnavailable);
  EXPECT_NE(second.error().message().find("another agent is serving on " + path_),
            std::string::npos)
      << second.error().ToString();
  // The first one still serves on its socket.
  auto r = RoundTrip(Get("/still"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(LocalServerTest, RegularFileAtThePathIsRefusedAndLeftUntouched) {
  { std::ofstream(path_) << "keep me"; }
  auto server = LocalServer::Start(Options(), AllowAll, EchoHandler);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.error().message().find(path_), std::string::npos);
  std::ifstream in(path_);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "keep me");
}

TEST_F(LocalServerTest, SymlinkAtThePathIsNotFollowed) {
  const std::string target = dir_ + "/elsewhere.sock";
  ASSERT_EQ(::symlink(target.c_str(), path_.c_str()), 0);
  auto server = LocalServer::Start(Options(), AllowAll, EchoHandler);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.error().message().find("symbolic link"), std::string::npos);
  EXPECT_FALSE(PathExists(target));
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(LocalServerTest, StaleSocketFileIsReplaced) {
  {
    // A socket file nobody listens on, as a crashed agent leaves it.
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  ASSERT_TRUE(PathExists(path_));
  Start(Options());
  auto r = RoundTrip(Get("/fresh"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(LocalServerTest, MissingDirectoryAndBadOptionsAreRefused) {
  LocalServerOptions o = Options();
  o.socket_path = dir_ + "/missing/agent.sock";
  auto server = LocalServer::Start(o, AllowAll, EchoHandler);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(server.error().message().find(dir_ + "/missing"), std::string::npos);

  o = Options();
  o.socket_path = dir_ + "/" + std::string(120, 'a');
  EXPECT_EQ(LocalServer::Start(o, AllowAll, EchoHandler).error().code(),
            StatusCode::kInvalidArgument);
  o = Options();
  o.socket_mode = 04777;
  EXPECT_EQ(LocalServer::Start(o, AllowAll, EchoHandler).error().code(),
            StatusCode::kInvalidArgument);
  o = Options();
  o.worker_threads = 0;
  EXPECT_EQ(LocalServer::Start(o, AllowAll, EchoHandler).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(LocalServer::Start(Options(), nullptr, EchoHandler).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(PathExists(path_));
}

TEST_F(LocalServerTest, LoopbackTcpListenerServesWithoutUnixCredentials) {
  std::atomic<int> tcp_peers{0};
  LocalServerOptions o = Options();
  o.tcp_port = 0;
  Start(o, EchoHandler,
        [&](const PeerCredentials& peer, const LocalRequest& request) -> Result<std::string> {
          if (!peer.unix_socket && !peer.uid && !peer.gid && !peer.pid) ++tcp_peers;
          return AllowAll(peer, request);
        });
  ASSERT_TRUE(server_->tcp_port());
  ASSERT_NE(*server_->tcp_port(), 0);
  auto client = RawClient::Tcp(*server_->tcp_port());
  ASSERT_NE(client, nullptr);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(client->Send(Post("/tcp", "over tcp")));
    auto r = client->Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->JsonBody()["peer"], Json({{"unix", false}}));
    EXPECT_EQ(r->JsonBody()["client"], "tcp");
  }
  EXPECT_EQ(tcp_peers.load(), 2);
  // A taken port is kUnavailable, and the failed start leaves no socket file behind.
  LocalServerOptions other = Options();
  other.socket_path = dir_ + "/other.sock";
  other.tcp_port = *server_->tcp_port();
  auto second = LocalServer::Start(other, AllowAll, EchoHandler);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code(), StatusCode::kUnavailable) << second.error().ToString();
  EXPECT_FALSE(PathExists(other.socket_path));
}

TEST_F(LocalServerTest, ConnectionsBeyondTheLimitAreClosed) {
  LocalServerOptions o = Options();
  o.max_connections = 1;
  Start(o);
  auto first = Connect();
  ASSERT_TRUE(first->Send(Get("/one")));
  ASSERT_TRUE(first->Read());
  auto second = Connect();
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(second->WaitClosed());
  first.reset();
  ASSERT_TRUE(WaitUntil([&] { return server_->stats().connections == 0; }));
  auto r = RoundTrip(Get("/again"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(LocalServerTest, CurlOverTheUnixSocket) {
  if (std::system("curl --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no curl";
  Start(Options());
  // 2 MiB: curl sends "Expect: 100-continue" for a body this large.
  const std::string body_path = dir_ + "/body";
  { std::ofstream(body_path) << std::string(2 << 20, 'z'); }
  for (const std::string& args :
       {std::string("http://localhost/v2/health/ready"),
        "-X POST --data-binary @" + body_path + " http://localhost/v2/models/m/infer",
        std::string("--http1.0 http://localhost/old")}) {
    const std::string command =
        "curl -sS --max-time 20 --unix-socket " + path_ + " -w '\\n%{http_code}' " + args;
    FILE* pipe = ::popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
    EXPECT_EQ(::pclose(pipe), 0) << command;
    const size_t nl = out.rfind('\n');
    ASSERT_NE(nl, std::string::npos) << out.substr(0, 200);
    EXPECT_EQ(out.substr(nl + 1), "200") << command;
    const Json j = Json::parse(out.substr(0, nl), nullptr, false);
    ASSERT_TRUE(j.is_object()) << out.substr(0, 200);
    if (args.find("--data-binary") != std::string::npos) {
      EXPECT_EQ(j["body"].get<std::string>().size(), size_t{2} << 20);
    }
  }
}

// Not a pass/fail test: prints what the server adds per request over calling the handler.
TEST_F(LocalServerTest, MeasuresAddedLatency) {
  LocalHandler handler = [](LocalRequest& request) {
    LocalResponse r;
    r.body = std::move(request.body);
    return r;
  };
  Start(Options(), handler);
  const std::string body = R"({"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32",)"
                           R"("data":[1,2,3,4]}]})";
  const std::string request = Post("/v2/models/tiny/infer", body);
  auto client = Connect();
  constexpr int kWarmup = 200;
  constexpr int kRounds = 3000;
  std::vector<double> server_us;
  server_us.reserve(kRounds);
  for (int i = 0; i < kWarmup + kRounds; ++i) {
    const auto t0 = Clock::now();
    ASSERT_TRUE(client->Send(request));
    auto r = client->Read();
    const auto t1 = Clock::now();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    if (i >= kWarmup)
      server_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::vector<double> direct_us;
  for (int i = 0; i < kRounds; ++i) {
    LocalRequest in;
    in.body = body;
    const auto t0 = Clock::now();
    LocalResponse out = handler(in);
    const auto t1 = Clock::now();
    direct_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  auto percentile = [](std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))];
  };
  std::printf(
      "[ latency  ] Unix socket round trip, keep-alive, %zu-byte body: p50 %.1f us, p90 %.1f us, "
      "p99 %.1f us; handler called directly: p50 %.2f us\n",
      body.size(), percentile(server_us, 0.5), percentile(server_us, 0.9),
      percentile(server_us, 0.99), percentile(direct_us, 0.5));
}

}  // namespace
}  // namespace custody::agent
