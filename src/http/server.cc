#include "http/server.h"

#include <sys/resource.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "http/header_rules.h"
#include "http/rate_limiter.h"
#include "http/run_blocking.h"
#include "http/tls.h"
#include "http/url.h"

namespace custody::http {
namespace {

using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using SslStream = beast::ssl_stream<tcp::socket>;
using ErrorCode = boost::system::error_code;

// Bounded wait for the peer's close_notify when we close: enough for a well-behaved client, and
// it drains an unread request body so the kernel does not answer it with a reset that could
// destroy the response before the client read it.
constexpr std::chrono::milliseconds kCloseTimeout{1000};
// After accept() fails for lack of descriptors or memory, wait before retrying instead of spinning.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};
// How much to read while waiting for the first byte of a request.
constexpr size_t kFirstReadBytes = 4096;
// Descriptors kept free beyond max_connections (listening socket, logs, database, ...).
constexpr rlim_t kSpareDescriptors = 256;
// Handler statuses outside this range are bugs (answered 500); interim (1xx) answers are the
// server's business (100-continue).
constexpr int kMinStatus = 200;
constexpr int kMaxStatus = 599;
// Bounds on handler-supplied header fields (Beast throws beyond its own limits).

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t half = 0; half < 2; ++half) {
    uint64_t v = rng();
    for (size_t i = 0; i < 16; ++i, v >>= 4) out[half * 16 + i] = kHex[v & 0xF];
  }
  return out;
}

std::string Seconds(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

bool IEquals(std::string_view a, std::string_view b) { return beast::iequals(a, b); }

// Errors that mean the peer went away or we closed the connection: no answer is possible.
bool IsDisconnect(const ErrorCode& ec) {
  return ec == bhttp::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor ||
         ec == asio::ssl::error::stream_truncated || ec == bhttp::error::partial_message;
}

// A bearer credential per RFC 6750 §2.1: "Bearer" 1*SP token68.
enum class BearerKind { kAbsent, kMalformed, kPresent };
BearerKind ParseBearer(const bhttp::request_header<>& header, std::string* token) {
  const size_t count = header.count(bhttp::field::authorization);
  if (count == 0) return BearerKind::kAbsent;
  if (count > 1) return BearerKind::kMalformed;
  std::string_view value = header[bhttp::field::authorization];
  constexpr std::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() || !IEquals(value.substr(0, kScheme.size()), kScheme) ||
      value[kScheme.size()] != ' ') {
    return BearerKind::kMalformed;
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  size_t end = 0;
  while (end < value.size() &&
         (std::isalnum(static_cast<unsigned char>(value[end])) ||
          std::string_view("-._~+/").find(value[end]) != std::string_view::npos)) {
    ++end;
  }
  const size_t chars = end;
  while (end < value.size() && value[end] == '=') ++end;
  if (chars == 0 || end != value.size()) return BearerKind::kMalformed;
  *token = std::string(value);
  return BearerKind::kPresent;
}

struct RouteMetrics {
  std::array<Counter*, 5> by_class{};  // 1xx .. 5xx
  Histogram* latency = nullptr;
  Counter* rate_limited = nullptr;
};

class Session;

}  // namespace

struct Server::Core {
  ServerOptions options;
  Router router;
  TokenAuthenticator authenticator;
  std::unique_ptr<Metrics> own_metrics;  // when the caller passed none
  std::unique_ptr<Logger> own_logger;
  Metrics* metrics = nullptr;
  Logger* logger = nullptr;
  std::unique_ptr<RateLimiter> limiter;

  std::vector<RouteMetrics> route_metrics;  // parallel to router.routes()
  RouteMetrics unmatched_metrics;           // 4xx answers before a route was found
  Gauge* open_gauge = nullptr;
  Counter* accepted = nullptr;
  Counter* rejected_at_limit = nullptr;
  Counter* tls_failures = nullptr;
  Counter* handler_failures = nullptr;

  mutable std::mutex tls_mu;
  std::shared_ptr<asio::ssl::context> tls;  // for new connections

  std::atomic<bool> draining{false};
  std::atomic<size_t> open{0};
  std::mutex sessions_mu;
  std::condition_variable sessions_cv;  // signalled when a session ends
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions;
  uint64_t next_session_id = 0;

  std::mutex stop_mu;
  bool stopped = false;
  uint16_t port = 0;

  // Destroyed explicitly, in this order, by ~Core: see there.
  std::unique_ptr<asio::io_context> io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<asio::thread_pool> workers;
  std::vector<std::thread> io_threads;

  ~Core() {
    // Queued worker jobs hold suspended connection coroutines whose sockets belong to `io`:
    // destroy them while `io` still exists, then `io` (which destroys the coroutines still
    // suspended on I/O). Members declared above are still alive for their destructors.
    acceptor.reset();
    workers.reset();
    io.reset();
  }

  std::shared_ptr<asio::ssl::context> CurrentTls() const {
    std::lock_guard lock(tls_mu);
    return tls;
  }

  void InterruptSessions(bool force);
  asio::awaitable<void> AcceptLoop();
};

namespace {

// One request/response exchange, for the answer, the log line and the metrics.
struct Exchange {
  Clock::time_point started;
  std::string request_id;
  std::string method = "-";
  unsigned version = 11;
  bool client_keep_alive = false;
  bool body_consumed = false;  // nothing of this request is left unread on the connection
  const Router::Route* route = nullptr;
  RouteMetrics* metrics = nullptr;
  Principal principal;
};

// What to do with the connection after an exchange.
struct Outcome {
  bool keep_alive = false;
  bool tls_close = true;  // false: the peer is slow or gone, just drop the socket
};

std::string PrincipalLabel(const Principal& p) {
  switch (p.kind) {
    case Principal::Kind::kDevice:
      return "device:" + p.id;
    case Principal::Kind::kToken:
      return "token:" + p.id;
    case Principal::Kind::kAnonymous:
      break;
  }
  return "-";
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Server::Core& core, uint64_t id, tcp::socket socket,
          std::shared_ptr<asio::ssl::context> tls)
      : core_(core),
        id_(id),
        tls_(std::move(tls)),
        stream_(std::move(socket), *tls_),
        deadline_(stream_.get_executor()) {
    ErrorCode ec;
    const tcp::endpoint peer = Socket().remote_endpoint(ec);
    if (!ec) {
      asio::ip::address address = peer.address();
      if (address.is_v6() && address.to_v6().is_v4_mapped()) {
        address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
      }
      peer_address_ = address.to_string();
    } else {
      peer_address_ = "unknown";
    }
  }

  ~Session() {
    {
      std::lock_guard lock(core_.sessions_mu);
      core_.sessions.erase(id_);
      core_.open.fetch_sub(1);
      core_.open_gauge->Set(static_cast<double>(core_.open.load()));
    }
    core_.sessions_cv.notify_all();
  }

  asio::awaitable<void> Run();

  asio::any_io_executor executor() { return stream_.get_executor(); }

  // Any thread. Graceful: close the connection if it is between requests. Force: close it now.
  void Interrupt(bool force) {
    asio::post(stream_.get_executor(), [weak = weak_from_this(), force] {
      auto self = weak.lock();
      if (!self) return;
      if (force || self->state_ == State::kHandshake || self->state_ == State::kIdle) {
        ErrorCode ignored;
        if (force) {
          self->Socket().close(ignored);
        } else {
          self->Socket().cancel(ignored);
        }
      }
    });
  }

 private:
  enum class State { kHandshake, kIdle, kBusy, kClosing };

  tcp::socket& Socket() { return beast::get_lowest_layer(stream_); }

  // A deadline for the next operation(s): when it passes, pending socket operations are
  // cancelled (not the socket closed, so a 408 can still be written).
  void ArmDeadline(std::chrono::milliseconds d) {
    timed_out_ = false;
    deadline_.expires_after(d);
    deadline_.async_wait([weak = weak_from_this()](const ErrorCode& ec) {
      if (ec) return;
      auto self = weak.lock();
      if (!self) return;
      self->timed_out_ = true;
      ErrorCode ignored;
      self->Socket().cancel(ignored);
    });
  }
  // Returns whether the deadline had passed.
  bool DisarmDeadline() {
    deadline_.cancel();
    return std::exchange(timed_out_, false);
  }

  asio::awaitable<Outcome> ServeOne(beast::flat_buffer& buffer, bool first);
  asio::awaitable<Outcome> Process(bhttp::request_parser<bhttp::string_body>& parser,
                                   beast::flat_buffer& buffer, Exchange& ex);
  asio::awaitable<Outcome> Finish(Exchange& ex, Response response, bool tls_close = true);
  asio::awaitable<void> Close(bool tls_close);
  asio::awaitable<Response> CallAsync(const Router::Route& route, Request request,
                                      Principal principal);
  Response CallBlocking(const Router::Route& route, const Request& request,
                        const Principal& principal);
  Response HandlerFailed(const Exchange& ex, std::string_view what);
  Response ReadError(const ErrorCode& ec, bool timed_out, std::string_view part);
  std::optional<Response> Authorize(Exchange& ex, const bhttp::request_header<>& header,
                                    Access access, std::optional<std::string>* bearer);
  asio::awaitable<std::optional<Response>> AuthorizeToken(Exchange& ex, Access access,
                                                          const std::string& token);
  std::optional<Response> RateLimit(Exchange& ex);

  Server::Core& core_;
  const uint64_t id_;
  std::shared_ptr<asio::ssl::context> tls_;  // keeps the context of this connection alive
  SslStream stream_;
  asio::steady_timer deadline_;
  bool timed_out_ = false;
  State state_ = State::kHandshake;
  std::string peer_address_;
  PeerCertificate peer_cert_;
};

asio::awaitable<void> Session::Run() {
  ErrorCode ec;
  // One budget for the handshake and the first request header: a client that connects and
  // dawdles costs a descriptor for header_timeout, not idle_timeout.
  ArmDeadline(core_.options.header_timeout);
  co_await stream_.async_handshake(asio::ssl::stream_base::server,
                                   asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    const bool timed_out = DisarmDeadline();
    core_.tls_failures->Increment();
    core_.logger->Debug("tls handshake failed",
                        {{"peer", peer_address_},
                         {"reason", timed_out ? std::string("timed out")
                                              : DescribeTlsError(stream_.native_handle(), ec)}});
    co_await Close(false);
    co_return;
  }
  peer_cert_ = InspectPeerCertificate(stream_.native_handle());
  beast::flat_buffer buffer(core_.options.max_header_bytes + kFirstReadBytes);
  Outcome outcome;
  for (bool first = true;; first = false) {
    if (core_.draining.load()) break;
    outcome = co_await ServeOne(buffer, first);
    if (!outcome.keep_alive) break;
  }
  co_await Close(outcome.tls_close);
}

asio::awaitable<void> Session::Close(bool tls_close) {
  state_ = State::kClosing;
  if (tls_close) {
    ErrorCode ec;
    ArmDeadline(kCloseTimeout);
    co_await stream_.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
  }
  DisarmDeadline();
  ErrorCode ignored;
  Socket().shutdown(tcp::socket::shutdown_both, ignored);
  Socket().close(ignored);
}

asio::awaitable<Outcome> Session::ServeOne(beast::flat_buffer& buffer, bool first) {
  ErrorCode ec;
  if (!first && buffer.size() == 0) {
    // Between requests: wait for the first byte of the next one.
    state_ = State::kIdle;
    ArmDeadline(core_.options.idle_timeout);
    const size_t n = co_await stream_.async_read_some(
        buffer.prepare(kFirstReadBytes), asio::redirect_error(asio::use_awaitable, ec));
    DisarmDeadline();
    if (ec) co_return Outcome{false, false};  // idle timeout, the client left, or Stop
    buffer.commit(n);
  }
  if (!first) ArmDeadline(core_.options.header_timeout);
  // On a new connection nothing has arrived yet: Stop may close it like an idle one.
  state_ = buffer.size() == 0 ? State::kIdle : State::kBusy;

  Exchange ex;
  ex.started = Clock::now();
  ex.request_id = NewRequestId();
  bhttp::request_parser<bhttp::string_body> parser;
  parser.header_limit(static_cast<uint32_t>(core_.options.max_header_bytes));
  parser.body_limit(core_.options.max_body_bytes);
  co_await bhttp::async_read_header(stream_, buffer, parser,
                                    asio::redirect_error(asio::use_awaitable, ec));
  const bool timed_out = DisarmDeadline();
  state_ = State::kBusy;
  if (ec) {
    if (!timed_out && (IsDisconnect(ec) || !parser.got_some())) co_return Outcome{false, false};
    co_return co_await Finish(ex, ReadError(ec, timed_out, "header"), false);
  }
  co_return co_await Process(parser, buffer, ex);
}

Response Session::ReadError(const ErrorCode& ec, bool timed_out, std::string_view part) {
  if (timed_out) {
    const auto limit = part == "header" ? core_.options.header_timeout : core_.options.body_timeout;
    return Response::Error(408, StatusCode::kDeadlineExceeded,
                           "the request " + std::string(part) + " did not arrive within " +
                               Seconds(limit) + "; send the whole request promptly");
  }
  if (ec == bhttp::error::header_limit) {
    return Response::Error(431, StatusCode::kResourceExhausted,
                           "request header exceeds the limit of " +
                               std::to_string(core_.options.max_header_bytes) +
                               " bytes; send fewer or shorter header fields");
  }
  if (ec == bhttp::error::body_limit) {
    return Response::Error(413, StatusCode::kResourceExhausted,
                           "request body exceeds the limit of " +
                               std::to_string(core_.options.max_body_bytes) +
                               " bytes; send a smaller body");
  }
  return Response::Error(
      400, StatusCode::kInvalidArgument,
      "malformed HTTP request (" + ec.message() + "); send a valid HTTP/1.1 request");
}

asio::awaitable<Outcome> Session::Process(bhttp::request_parser<bhttp::string_body>& parser,
                                          beast::flat_buffer& buffer, Exchange& ex) {
  const auto& header = parser.get();
  ex.method = std::string(header.method_string());
  ex.version = header.version() == 10 ? 10 : 11;
  ex.client_keep_alive = header.keep_alive();
  ex.body_consumed = parser.is_done();

  // Beast enforces body_limit on Content-Length while reading the header; checked again here
  // because Boost 1.74 loses that error in eager parsing (see client.cc), and one request
  // smuggling defence: a body is framed by exactly one of Content-Length and "chunked".
  if (parser.content_length() && *parser.content_length() > core_.options.max_body_bytes) {
    co_return co_await Finish(ex, ReadError(bhttp::error::body_limit, false, "body"));
  }
  if (header.count(bhttp::field::transfer_encoding) > 0) {
    if (header.count(bhttp::field::content_length) > 0) {
      co_return co_await Finish(ex,
                                Response::Error(400, StatusCode::kInvalidArgument,
                                                "a request may not carry both Content-Length and "
                                                "Transfer-Encoding; send one of them"));
    }
    if (header.count(bhttp::field::transfer_encoding) > 1 ||
        !IEquals(header[bhttp::field::transfer_encoding], "chunked")) {
      co_return co_await Finish(
          ex, Response::Error(501, StatusCode::kUnimplemented,
                              "the only supported Transfer-Encoding is chunked; send the body "
                              "with Content-Length or chunked"));
    }
  }
  if (header.version() != 10 && header.version() != 11) {
    co_return co_await Finish(
        ex, Response::Error(505, StatusCode::kUnimplemented,
                            "only HTTP/1.1 (and 1.0) is served; send an HTTP/1.1 request"));
  }
  const bool expect_continue = IEquals(header[bhttp::field::expect], "100-continue");
  if (header.count(bhttp::field::expect) > 0 && !expect_continue) {
    co_return co_await Finish(ex, Response::Error(417, StatusCode::kInvalidArgument,
                                                  "the only supported Expect value is "
                                                  "100-continue; remove the Expect header"));
  }
  Result<Target> target = SplitTarget(header.target());
  if (!target) co_return co_await Finish(ex, Response::FromStatus(target.error()));

  const Router::Match match = core_.router.Resolve(ex.method, target->path);
  switch (match.kind) {
    case Router::Match::Kind::kNoPath:
      co_return co_await Finish(
          ex, Response::Error(404, StatusCode::kNotFound,
                              "no route " + ex.method + " " + target->path +
                                  "; check the path against the custodian's API description"));
    case Router::Match::Kind::kWrongMethod: {
      std::string allow;
      for (const std::string& m : match.allowed_methods) allow += (allow.empty() ? "" : ", ") + m;
      Response r = Response::Error(
          405, StatusCode::kInvalidArgument,
          "method " + ex.method + " is not allowed on " + target->path + "; use " + allow);
      r.headers.emplace_back("Allow", allow);
      co_return co_await Finish(ex, std::move(r));
    }
    case Router::Match::Kind::kBadPath:
      co_return co_await Finish(ex, Response::FromStatus(match.error));
    case Router::Match::Kind::kFound:
      break;
  }
  const Router::Route& route = core_.router.routes()[match.route_index];
  ex.route = &route;
  ex.metrics = &core_.route_metrics[match.route_index];

  Result<std::map<std::string, std::string>> query = ParseQuery(target->query);
  if (!query) co_return co_await Finish(ex, Response::FromStatus(query.error()));

  std::optional<std::string> bearer;
  std::optional<Response> refusal = Authorize(ex, header, route.info.access, &bearer);
  if (!refusal && route.info.access >= Access::kViewer) {
    refusal = co_await AuthorizeToken(ex, route.info.access, *bearer);
  }
  // Refused or not, the request counts against its client's bucket (credential guessing too).
  if (std::optional<Response> limited = RateLimit(ex)) refusal = std::move(limited);
  if (refusal) co_return co_await Finish(ex, std::move(*refusal));

  ErrorCode ec;
  if (!parser.is_done()) {
    if (expect_continue) {
      bhttp::response<bhttp::empty_body> cont{bhttp::status::continue_, ex.version};
      ArmDeadline(core_.options.write_timeout);
      co_await bhttp::async_write(stream_, cont, asio::redirect_error(asio::use_awaitable, ec));
      DisarmDeadline();
      if (ec) co_return Outcome{false, false};
    }
    ArmDeadline(core_.options.body_timeout);
    co_await bhttp::async_read(stream_, buffer, parser,
                               asio::redirect_error(asio::use_awaitable, ec));
    const bool timed_out = DisarmDeadline();
    if (ec) {
      if (!timed_out && IsDisconnect(ec)) co_return Outcome{false, false};
      co_return co_await Finish(ex, ReadError(ec, timed_out, "body"), !timed_out);
    }
    ex.body_consumed = true;
  }

  Request request;
  request.method = ex.method;
  request.path = std::move(target->path);
  request.target = std::string(header.target());
  request.path_params = match.path_params;
  request.query = std::move(*query);
  request.content_type = std::string(header[bhttp::field::content_type]);
  request.peer_address = peer_address_;
  request.client_cert_subject_cn = peer_cert_.subject_cn;
  request.bearer_token = std::move(bearer);
  request.request_id = ex.request_id;
  request.body = std::move(parser.get().body());

  Response response;
  if (route.info.async) {
    response = co_await CallAsync(route, std::move(request), ex.principal);
  } else {
    response = co_await RunBlocking(*core_.workers, [this, &route, &request, &ex] {
      return CallBlocking(route, request, ex.principal);
    });
  }
  co_return co_await Finish(ex, std::move(response));
}

std::optional<Response> Session::Authorize(Exchange& ex, const bhttp::request_header<>& header,
                                           Access access, std::optional<std::string>* bearer) {
  std::string token;
  const BearerKind kind = ParseBearer(header, &token);
  if (kind == BearerKind::kPresent) *bearer = std::move(token);
  switch (access) {
    case Access::kPublic:
      return std::nullopt;
    case Access::kDevice:
      if (!peer_cert_.subject_cn) {
        return Response::Error(401, StatusCode::kUnauthenticated,
                               peer_cert_.problem +
                                   "; device routes need mutual TLS with the device certificate "
                                   "the custodian issued at enrollment");
      }
      ex.principal = {Principal::Kind::kDevice, *peer_cert_.subject_cn, *peer_cert_.subject_cn,
                      Role::kViewer};
      return std::nullopt;
    case Access::kViewer:
    case Access::kOperator:
    case Access::kAdmin:
      break;
  }
  if (kind == BearerKind::kPresent) return std::nullopt;
  const std::string needed(AccessName(access));
  Response r = Response::Error(
      401, StatusCode::kUnauthenticated,
      kind == BearerKind::kAbsent
          ? "this route needs 'Authorization: Bearer <token>' with the " + needed +
                " role or higher"
          : "the Authorization header is malformed; send exactly one 'Authorization: Bearer "
            "<token>'");
  r.headers.emplace_back("WWW-Authenticate",
                         kind == BearerKind::kAbsent
                             ? "Bearer realm=\"custody\""
                             : "Bearer realm=\"custody\", error=\"invalid_request\"");
  return r;
}

asio::awaitable<std::optional<Response>> Session::AuthorizeToken(Exchange& ex, Access access,
                                                                 const std::string& token) {
  const TokenAuthenticator& authenticate = core_.authenticator;
  Result<Principal> principal =
      co_await RunBlocking(*core_.workers, [&authenticate, &token]() -> Result<Principal> {
        try {
          return authenticate(token);
        } catch (const std::exception& e) {
          return Internal(std::string("token authenticator threw: ") + e.what());
        } catch (...) {
          return Internal("token authenticator threw a non-standard exception");
        }
      });
  if (!principal) {
    const StatusCode code = principal.error().code();
    if (code != StatusCode::kUnauthenticated && code != StatusCode::kNotFound) {
      core_.logger->Error("token authentication failed",
                          {{"request_id", ex.request_id}, {"error", principal.error().ToString()}});
      co_return Response::FromStatus(principal.error());
    }
    Response r = Response::Error(401, StatusCode::kUnauthenticated,
                                 "the bearer token is not valid (unknown, revoked or expired); "
                                 "ask an administrator for a new token");
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"custody\", error=\"invalid_token\"");
    co_return r;
  }
  principal->kind = Principal::Kind::kToken;
  ex.principal = *principal;
  const auto needed =
      static_cast<Role>(static_cast<int>(access) - static_cast<int>(Access::kViewer));
  if (principal->role < needed) {
    Response r = Response::Error(403, StatusCode::kPermissionDenied,
                                 "this route needs the " + std::string(RoleName(needed)) +
                                     " role; token '" + principal->id + "' has the " +
                                     std::string(RoleName(principal->role)) + " role");
    r.headers.emplace_back("WWW-Authenticate",
                           "Bearer realm=\"custody\", error=\"insufficient_scope\"");
    co_return r;
  }
  co_return std::nullopt;
}

std::optional<Response> Session::RateLimit(Exchange& ex) {
  std::string key;
  switch (ex.principal.kind) {
    case Principal::Kind::kDevice:
      key = "device:" + ex.principal.id;
      break;
    case Principal::Kind::kToken:
      key = "token:" + ex.principal.id;
      break;
    case Principal::Kind::kAnonymous:
      key = "ip:" + peer_address_;
      break;
  }
  const RateLimiter::Decision decision = core_.limiter->Take(key, Clock::now());
  if (decision.allowed) return std::nullopt;
  if (ex.metrics != nullptr) ex.metrics->rate_limited->Increment();
  const auto retry_s = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(static_cast<double>(decision.retry_after.count()) / 1000)));
  Response r = Response::Error(
      429, StatusCode::kResourceExhausted,
      "too many requests from " + key + " (limit " + std::to_string(core_.options.rate_per_second) +
          " per second, bursts of " + std::to_string(core_.options.rate_burst) + "); retry after " +
          std::to_string(retry_s) + " s");
  r.headers.emplace_back("Retry-After", std::to_string(retry_s));
  return r;
}

Response Session::HandlerFailed(const Exchange& ex, std::string_view what) {
  core_.handler_failures->Increment();
  core_.logger->Error("handler threw",
                      {{"route", ex.route != nullptr ? ex.route->info.pattern : "-"},
                       {"request_id", ex.request_id},
                       {"exception", what}});
  return Response::Error(500, StatusCode::kInternal,
                         "internal error while handling the request; the custodian logged it "
                         "under request id " +
                             ex.request_id);
}

Response Session::CallBlocking(const Router::Route& route, const Request& request,
                               const Principal& principal) {
  Exchange ex;
  ex.route = &route;
  ex.request_id = request.request_id;
  try {
    return route.handler(request, principal);
  } catch (const std::exception& e) {
    return HandlerFailed(ex, e.what());
  } catch (...) {
    return HandlerFailed(ex, "a non-standard exception");
  }
}

asio::awaitable<Response> Session::CallAsync(const Router::Route& route, Request request,
                                             Principal principal) {
  // The handler runs as its own coroutine on this strand, raced against max_long_poll: a handler
  // that never answers cannot hold the connection forever. Its state is shared so that a late
  // handler still has valid arguments after we answered without it.
  struct Call {
    Call(asio::any_io_executor ex, Request r, Principal p)
        : request(std::move(r)), principal(std::move(p)), timer(std::move(ex)) {}
    Request request;
    Principal principal;
    std::optional<Response> response;
    asio::steady_timer timer;
  };
  const auto executor = co_await asio::this_coro::executor;
  auto call = std::make_shared<Call>(executor, std::move(request), std::move(principal));
  call->timer.expires_after(core_.options.max_long_poll);
  const AsyncHandler* handler = &route.async_handler;
  asio::co_spawn(
      executor,
      [call, handler, self = shared_from_this(), &route]() -> asio::awaitable<void> {
        Response response;
        std::string failure;
        try {
          response = co_await (*handler)(call->request, call->principal);
        } catch (const std::exception& e) {
          failure = e.what();
        } catch (...) {
          failure = "a non-standard exception";
        }
        if (!failure.empty()) {
          Exchange ex;
          ex.route = &route;
          ex.request_id = call->request.request_id;
          response = self->HandlerFailed(ex, failure);
        }
        call->response = std::move(response);
        call->timer.cancel();
      },
      asio::detached);
  if (!call->response) {
    ErrorCode ec;
    co_await call->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  if (call->response) co_return std::move(*call->response);
  core_.logger->Error("async handler exceeded max_long_poll",
                      {{"route", route.info.pattern}, {"request_id", call->request.request_id}});
  co_return Response::Error(
      503, StatusCode::kUnavailable,
      "the custodian did not answer within " + Seconds(core_.options.max_long_poll) + "; retry");
}

asio::awaitable<Outcome> Session::Finish(Exchange& ex, Response response, bool tls_close) {
  // A bad answer from a handler is our bug, not the client's: it becomes a 500 (and a log line).
  std::string invalid;
  if (response.status < kMinStatus || response.status > kMaxStatus) {
    invalid = "status " + std::to_string(response.status);
  } else if (!IsHeaderValue(response.content_type)) {
    invalid = "content type";
  }
  for (const auto& [name, value] : response.headers) {
    if (!IsHeaderName(name) || !IsHeaderValue(value)) invalid = "header '" + name + "'";
  }
  if (!invalid.empty()) response = HandlerFailed(ex, "invalid response: " + invalid);
  if (response.status == 204 || response.status == 304) {
    response.body.clear();  // these carry no body (Beast refuses to frame one)
    response.content_type.clear();
  }

  const bool keep_alive = ex.client_keep_alive && ex.body_consumed && !core_.draining.load();
  bhttp::response<bhttp::string_body> msg{static_cast<bhttp::status>(response.status), ex.version};
  for (const auto& [name, value] : response.headers) {
    if (IEquals(name, "Content-Length") || IEquals(name, "Connection") ||
        IEquals(name, "Transfer-Encoding") || IEquals(name, "Date") ||
        IEquals(name, "X-Request-Id")) {
      continue;
    }
    msg.insert(name, value);
  }
  if (!response.body.empty() || !response.content_type.empty()) {
    msg.set(bhttp::field::content_type, response.content_type);
  }
  msg.set("X-Request-Id", ex.request_id);
  if (msg.count(bhttp::field::cache_control) == 0) msg.set(bhttp::field::cache_control, "no-store");
  msg.set("X-Content-Type-Options", "nosniff");
  msg.keep_alive(keep_alive);
  msg.body() = std::move(response.body);
  msg.prepare_payload();

  ErrorCode ec;
  ArmDeadline(core_.options.write_timeout);
  co_await bhttp::async_write(stream_, msg, asio::redirect_error(asio::use_awaitable, ec));
  DisarmDeadline();

  const double seconds = std::chrono::duration<double>(Clock::now() - ex.started).count();
  RouteMetrics& metrics = ex.metrics != nullptr ? *ex.metrics : core_.unmatched_metrics;
  metrics.by_class[static_cast<size_t>(response.status / 100 - 1)]->Increment();
  metrics.latency->Observe(seconds);
  // The principal's label is built only for a line that is written.
  const LogLevel level = response.status >= 500 ? LogLevel::kWarn : LogLevel::kInfo;
  if (core_.logger->Enabled(level)) {
    core_.logger->Log(level, "request",
                      {{"method", ex.method},
                       {"route", ex.route != nullptr ? ex.route->info.pattern : "-"},
                       {"status", response.status},
                       {"duration_ms", seconds * 1000},
                       {"principal", PrincipalLabel(ex.principal)},
                       {"request_id", ex.request_id},
                       {"peer", peer_address_},
                       {"written", !ec}});
  }
  if (ec) co_return Outcome{false, false};
  co_return Outcome{keep_alive, tls_close};
}

}  // namespace

void Server::Core::InterruptSessions(bool force) {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(sessions_mu);
    for (auto& [id, weak] : sessions) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (const auto& s : live) s->Interrupt(force);
}

asio::awaitable<void> Server::Core::AcceptLoop() {
  for (;;) {
    tcp::socket socket(asio::make_strand(*io));
    ErrorCode ec;
    co_await acceptor->async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
    if (draining.load() || !acceptor->is_open()) co_return;
    if (ec) {
      logger->Warn("accept failed", {{"error", ec.message()}});
      asio::steady_timer pause(*io, kAcceptRetryDelay);
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    accepted->Increment();
    uint64_t id = 0;
    {
      std::lock_guard lock(sessions_mu);
      if (open.load() >= options.max_connections) {
        rejected_at_limit->Increment();
        socket.close(ec);
        continue;
      }
      open.fetch_add(1);
      open_gauge->Set(static_cast<double>(open.load()));
      id = next_session_id++;
    }
    socket.set_option(tcp::no_delay(true), ec);
    // Dead peers of long-polls are noticed by the kernel instead of lingering until timeout.
    socket.set_option(asio::socket_base::keep_alive(true), ec);
    std::shared_ptr<Session> session;
    try {
      session = std::make_shared<Session>(*this, id, std::move(socket), CurrentTls());
    } catch (const std::exception& e) {
      // SSL_new can fail (memory): drop this connection, keep accepting.
      logger->Error("cannot set up a connection", {{"exception", e.what()}});
      std::lock_guard lock(sessions_mu);
      open.fetch_sub(1);
      open_gauge->Set(static_cast<double>(open.load()));
      continue;
    }
    {
      std::lock_guard lock(sessions_mu);
      sessions.emplace(id, session);
    }
    asio::co_spawn(
        session->executor(), [session]() { return session->Run(); },
        [this](std::exception_ptr e) {
          if (!e) return;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            logger->Error("connection ended by an exception", {{"exception", ex.what()}});
          } catch (...) {
            logger->Error("connection ended by a non-standard exception");
          }
        });
  }
}

namespace {

Status ValidateOptions(const ServerOptions& o, const Router& router, bool have_authenticator) {
  if (o.io_threads == 0 || o.io_threads > 256 || o.worker_threads == 0 || o.worker_threads > 1024) {
    return InvalidArgument("io_threads must be 1..256 and worker_threads 1..1024");
  }
  if (o.max_body_bytes == 0 || o.max_header_bytes < 256 || o.max_header_bytes > (64u << 20) ||
      o.max_connections == 0) {
    return InvalidArgument(
        "limits must be positive (max_header_bytes 256 B .. 64 MiB, max_body_bytes > 0, "
        "max_connections > 0)");
  }
  using std::chrono::milliseconds;
  for (milliseconds t :
       {o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout, o.max_long_poll}) {
    if (t <= milliseconds(0)) return InvalidArgument("every timeout must be positive");
  }
  if (o.rate_per_second > 0 && o.rate_burst < 1) {
    return InvalidArgument("rate_burst must be at least 1 when rate limiting is on");
  }
  for (const RouteInfo& route : router.Routes()) {
    if (route.access == Access::kDevice && !o.client_ca_pem) {
      return InvalidArgument("route " + route.method + " " + route.pattern +
                             " is for devices but no client CA is configured (client_ca_pem)");
    }
    if (route.access >= Access::kViewer && !have_authenticator) {
      return InvalidArgument("route " + route.method + " " + route.pattern +
                             " needs bearer tokens but no token authenticator was given");
    }
  }
  for (const LongPollHub* hub : o.long_poll_hubs) {
    if (hub == nullptr) return InvalidArgument("long_poll_hubs holds a null hub");
  }
  return OkStatus();
}

// A descriptor per connection: lift the soft limit towards the hard one (systemd's default soft
// limit is 1024) and warn if max_connections still cannot be reached.
void RaiseDescriptorLimit(size_t max_connections, Logger& logger) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t wanted = static_cast<rlim_t>(max_connections) + kSpareDescriptors;
  if (limit.rlim_cur >= wanted) return;
  const rlim_t old_soft = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) limit.rlim_cur = old_soft;
  if (limit.rlim_cur < wanted) {
    logger.Warn("open file limit is below max_connections; raise LimitNOFILE",
                {{"limit", static_cast<uint64_t>(limit.rlim_cur)},
                 {"max_connections", static_cast<uint64_t>(max_connections)}});
  }
}

// Every connection authenticates with a full handshake: no TLS session is resumed. Clients keep
// their connections alive and do not resume sessions (http::Client starts each connection afresh),
// so session state would cost without ever being used, and a lot: in TLS 1.3 OpenSSL sends two
// session tickets after each handshake, each an encrypted copy of the session with the client's
// certificate, which it copies by encoding and decoding it again (through OpenSSL 3's slow key
// decoders that was about a fifth of the custodian's CPU per mutual-TLS handshake, and the client
// decodes both tickets too); in TLS 1.2 the server session cache would hold up to 20480 sessions
// with their certificates. A reconnecting device also proves its key again this way.
Status DisableSessionResumption(asio::ssl::context& tls) {
  SSL_CTX* ctx = tls.native_handle();
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (SSL_CTX_set_num_tickets(ctx, 0) != 1) {
    return Internal("SSL_CTX_set_num_tickets: cannot turn TLS 1.3 session tickets off");
  }
  return OkStatus();
}

RouteMetrics MakeRouteMetrics(Metrics& m, const std::string& method, const std::string& route) {
  RouteMetrics out;
  static constexpr std::array<const char*, 5> kClasses = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  for (size_t i = 0; i < kClasses.size(); ++i) {
    out.by_class[i] = &m.GetCounter("custody_http_requests_total",
                                    "HTTP requests answered, by route and status class",
                                    {{"method", method}, {"route", route}, {"code", kClasses[i]}});
  }
  out.latency =
      &m.GetHistogram("custody_http_request_duration_seconds",
                      "Time from the first byte of a request to the end of its answer",
                      DefaultLatencyBucketsSeconds(), {{"method", method}, {"route", route}});
  out.rate_limited = &m.GetCounter("custody_http_rate_limited_total",
                                   "Requests refused with 429 by the per-client rate limit",
                                   {{"method", method}, {"route", route}});
  return out;
}

}  // namespace

Server::Server(std::unique_ptr<Core> core) : core_(std::move(core)) {}

Result<std::unique_ptr<Server>> Server::Start(ServerOptions options, Router router,
                                              TokenAuthenticator authenticator, Metrics* metrics,
                                              Logger* logger) {
  CUSTODY_RETURN_IF_ERROR(ValidateOptions(options, router, static_cast<bool>(authenticator)));
  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<asio::ssl::context> tls,
                           MakeServerTlsContext({options.certificate_chain_pem,
                                                 options.private_key_pem, options.client_ca_pem}));
  CUSTODY_RETURN_IF_ERROR(DisableSessionResumption(*tls));

  auto core = std::make_unique<Core>();
  if (metrics == nullptr) {
    core->own_metrics = std::make_unique<Metrics>();
    metrics = core->own_metrics.get();
  }
  if (logger == nullptr) {
    core->own_logger = std::make_unique<Logger>([](std::string_view) {}, LogLevel::kError);
    logger = core->own_logger.get();
  }
  core->metrics = metrics;
  core->logger = logger;
  core->limiter = std::make_unique<RateLimiter>(options.rate_per_second, options.rate_burst);
  core->tls = std::move(tls);
  core->authenticator = std::move(authenticator);
  core->router = std::move(router);
  for (const Router::Route& route : core->router.routes()) {
    core->route_metrics.push_back(
        MakeRouteMetrics(*metrics, route.info.method, route.info.pattern));
  }
  core->unmatched_metrics = MakeRouteMetrics(*metrics, "-", "unmatched");
  core->open_gauge =
      &metrics->GetGauge("custody_http_open_connections", "TLS connections currently open");
  core->accepted =
      &metrics->GetCounter("custody_http_connections_accepted_total", "TCP connections accepted");
  core->rejected_at_limit = &metrics->GetCounter(
      "custody_http_connections_rejected_total",
      "Connections closed at once because max_connections were open", {{"reason", "limit"}});
  core->tls_failures = &metrics->GetCounter("custody_http_tls_handshake_failures_total",
                                            "TLS handshakes that failed or timed out");
  core->handler_failures =
      &metrics->GetCounter("custody_http_handler_failures_total",
                           "Handlers that threw or returned an invalid response (answered 500)");

  core->io = std::make_unique<asio::io_context>(static_cast<int>(options.io_threads));
  ErrorCode ec;
  const asio::ip::address address = asio::ip::make_address(options.listen_address, ec);
  if (ec) {
    return InvalidArgument("listen address '" + options.listen_address +
                           "' is not an IP address literal");
  }
  const tcp::endpoint endpoint(address, options.port);
  const std::string where =
      "cannot listen on " + options.listen_address + " port " + std::to_string(options.port) + ": ";
  core->acceptor = std::make_unique<tcp::acceptor>(*core->io);
  core->acceptor->open(endpoint.protocol(), ec);
  if (!ec) core->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) core->acceptor->bind(endpoint, ec);
  if (!ec) core->acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Unavailable(where + ec.message());
  core->port = core->acceptor->local_endpoint(ec).port();
  if (ec) return Unavailable(where + ec.message());
  RaiseDescriptorLimit(options.max_connections, *logger);
  core->options = std::move(options);

  core->workers = std::make_unique<asio::thread_pool>(core->options.worker_threads);
  core->work.emplace(core->io->get_executor());
  Core* raw = core.get();
  asio::co_spawn(
      *core->io, [raw]() { return raw->AcceptLoop(); },
      [raw](std::exception_ptr e) {
        if (e) raw->logger->Error("accept loop ended by an exception");
      });
  for (unsigned i = 0; i < core->options.io_threads; ++i) {
    core->io_threads.emplace_back([raw] {
      // Handlers do not throw (every coroutine catches); keep serving if one ever does.
      for (;;) {
        try {
          raw->io->run();
          return;
        } catch (const std::exception& e) {
          raw->logger->Error("I/O thread caught an exception", {{"exception", e.what()}});
        }
      }
    });
  }
  logger->Info("custodian HTTP server listening",
               {{"address", core->options.listen_address},
                {"port", static_cast<uint64_t>(core->port)},
                {"routes", static_cast<uint64_t>(core->router.routes().size())}});
  return std::unique_ptr<Server>(new Server(std::move(core)));
}

Server::~Server() { Stop(std::chrono::milliseconds(0)); }

uint16_t Server::port() const { return core_->port; }

asio::io_context& Server::io() { return *core_->io; }

size_t Server::open_connections() const { return core_->open.load(); }

void Server::Stop(std::chrono::milliseconds grace) {
  Core& core = *core_;
  std::lock_guard stop_lock(core.stop_mu);
  if (core.stopped) return;
  if (core.io->get_executor().running_in_this_thread() ||
      core.workers->get_executor().running_in_this_thread()) {
    Panic("Server::Stop called from one of the server's own threads (it would join itself)");
  }
  core.logger->Info("custodian HTTP server stopping",
                    {{"open_connections", static_cast<uint64_t>(core.open.load())},
                     {"grace_ms", static_cast<int64_t>(grace.count())}});
  core.draining.store(true);
  for (LongPollHub* hub : core.options.long_poll_hubs) hub->Shutdown();
  // The acceptor belongs to the I/O threads; close it there and wait, so that no connection is
  // accepted once Stop has begun (bounded, in case the I/O threads are wedged).
  std::promise<void> closed;
  asio::post(*core.io, [&core, &closed] {
    ErrorCode ignored;
    core.acceptor->close(ignored);
    closed.set_value();
  });
  const bool acceptor_closed =
      closed.get_future().wait_for(kCloseTimeout) == std::future_status::ready;
  core.InterruptSessions(false);
  {
    std::unique_lock lock(core.sessions_mu);
    core.sessions_cv.wait_for(lock, grace, [&core] { return core.sessions.empty(); });
  }
  if (core.open.load() > 0) {
    core.InterruptSessions(true);
    // Closed sockets end their coroutines at once; bound the wait regardless.
    std::unique_lock lock(core.sessions_mu);
    core.sessions_cv.wait_for(lock, kCloseTimeout, [&core] { return core.sessions.empty(); });
  }
  core.work.reset();
  core.io->stop();
  for (std::thread& t : core.io_threads) t.join();
  core.io_threads.clear();
  if (!acceptor_closed) {
    ErrorCode ignored;
    core.acceptor->close(ignored);
  }
  core.workers->stop();
  core.workers->join();
  core.stopped = true;
  core.logger->Info("custodian HTTP server stopped");
}

Status Server::ReloadTls(std::string certificate_chain_pem, std::string private_key_pem,
                         std::optional<std::string> client_ca_pem) {
  if (client_ca_pem.has_value() != core_->options.client_ca_pem.has_value()) {
    return InvalidArgument("a reload must keep the client CA configured (or absent) as at start");
  }
  CUSTODY_ASSIGN_OR_RETURN(
      std::shared_ptr<asio::ssl::context> tls,
      MakeServerTlsContext({std::move(certificate_chain_pem), std::move(private_key_pem),
                            std::move(client_ca_pem)}));
  CUSTODY_RETURN_IF_ERROR(DisableSessionResumption(*tls));
  std::lock_guard lock(core_->tls_mu);
  core_->tls = std::move(tls);
  return OkStatus();
}

Handler MetricsHandler(const Metrics& metrics) {
  return [&metrics](const Request&, const Principal&) {
    Response r;
    r.content_type = std::string(Metrics::kContentType);
    r.body = metrics.Render();
    return r;
  };
}

}  // namespace custody::http
