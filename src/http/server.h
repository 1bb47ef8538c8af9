// The custodian's HTTPS server (DESIGN.md §6, §11): HTTP/1.1 over TLS on Boost.Beast/Asio,
// mutual TLS for device routes, bearer tokens with roles for people and automation, per-client
// rate limits, Prometheus metrics and one JSON log line per request.
//
// Threading model: `io_threads` threads run one io_context; every connection is a coroutine on
// its own strand, so an idle keep-alive or long-poll connection costs memory (its TLS state and
// buffers, tens of KiB) but no thread. Blocking handlers (Handler) and the token authenticator run
// on a pool of `worker_threads`; coroutine handlers (AsyncHandler) run on the connection's strand.
//
// Request flow: TLS handshake -> header (within header_timeout, at most max_header_bytes) ->
// route (404/405) -> access check (401/403) -> rate limit (429) -> body (within body_timeout,
// at most max_body_bytes; 100-continue honoured) -> handler -> response. Authentication happens
// before the body is read, so unauthenticated clients cannot make the server buffer bodies.
//
// Every answer carries X-Request-Id. Every error the server produces itself has the body
// {"error":{"code":"<StatusCodeName>","message":"..."}} saying what was wrong and what to do.
// Request log lines hold method, route pattern, status, duration, principal, request id and peer;
// never bodies, tokens or the raw path (which may carry identifiers an operator did not expect in
// logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/log.h"
#include "core/base/status.h"
#include "http/asio.h"
#include "http/long_poll.h"
#include "http/metrics.h"
#include "http/router.h"

namespace custody::http {

// Resolves a bearer token (the secret text after "Bearer ") to its principal. Runs on a worker
// thread (it may query the database). Return kUnauthenticated or kNotFound for unknown, revoked
// or expired tokens (the server answers 401); any other error is answered as FromStatus (e.g.
// kUnavailable -> 503 when the database is down).
using TokenAuthenticator = std::function<Result<Principal>(std::string_view token)>;

struct ServerOptions {
  std::string listen_address = "127.0.0.1";  // IPv4 or IPv6 literal; "::" for all interfaces
  uint16_t port = 0;                         // 0: an ephemeral port (see Server::port())

  // TLS identity (PEM text): the server certificate first, then intermediates; and its key.
  std::string certificate_chain_pem;
  std::string private_key_pem;
  // Trust anchors for device client certificates. Required if any route is kDevice.
  std::optional<std::string> client_ca_pem;

  unsigned io_threads = 2;
  unsigned worker_threads = 8;

  // Limits. The defaults suit the Custody protocol; all must be positive.
  size_t max_body_bytes = 1 << 20;     // larger bodies: 413 (before reading them)
  size_t max_header_bytes = 16 << 10;  // request line and header fields; beyond: 431
  size_t max_connections = 20000;      // beyond: new connections are closed at once
  // Time to receive a whole request header from its first byte (slowloris): 408 and close. On a
  // new connection the clock starts with the TLS handshake.
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_timeout{30'000};   // whole body, after the header: 408
  std::chrono::milliseconds write_timeout{30'000};  // whole response
  std::chrono::milliseconds idle_timeout{75'000};   // keep-alive: wait for the next request
  // An AsyncHandler that has not answered within this is answered 503 for it (the handler's
  // result, if it comes later, is dropped). Long-polls should wait less than this.
  std::chrono::milliseconds max_long_poll{120'000};

  // Per-client token bucket (device id for mTLS clients, token id for bearer clients, else peer
  // address). rate_per_second <= 0 disables it. Refusals are 429 with Retry-After.
  double rate_per_second = 50;
  double rate_burst = 100;

  // Hubs whose waits Stop() ends (so long-polls answer at once instead of holding the stop).
  // Not owned; must outlive the server.
  std::vector<LongPollHub*> long_poll_hubs;
};

class Server {
 public:
  // Validates the options and routes, binds, and starts serving. `metrics` and `logger` may be
  // null (nothing is recorded); if given they must outlive the server. Errors: kInvalidArgument
  // (bad options or TLS material; kDevice routes without client_ca_pem; bearer routes without an
  // authenticator), kUnavailable (cannot bind or listen, e.g. the port is taken).
  static Result<std::unique_ptr<Server>> Start(ServerOptions options, Router router,
                                               TokenAuthenticator authenticator, Metrics* metrics,
                                               Logger* logger);
  // Stops (as Stop with no grace) if still running.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (the ephemeral one if options.port was 0).
  uint16_t port() const;

  // Stops accepting, closes idle connections, ends long-poll waits, lets requests in progress
  // finish for up to `grace`, then closes every connection and joins all threads. Handlers
  // already running on worker threads are waited for (they cannot be interrupted). Safe from
  // any thread that is not one of the server's own (e.g. a signal-handling thread; calling it
  // from a handler aborts), idempotent, and returns only once the server has stopped.
  void Stop(std::chrono::milliseconds grace);

  // Replaces the TLS identity and client CA for new connections (certificate renewal without a
  // restart). Connections already open keep theirs. Errors as for Start.
  Status ReloadTls(std::string certificate_chain_pem, std::string private_key_pem,
                   std::optional<std::string> client_ca_pem);

  // The I/O context (for timers or work that belongs with the server's I/O threads).
  asio::io_context& io();

  // Connections currently open.
  size_t open_connections() const;

  struct Core;  // implementation, public only so the .cc's helpers can name it

 private:
  explicit Server(std::unique_ptr<Core> core);
  std::unique_ptr<Core> core_;
};

// A kPublic handler serving `metrics` in the Prometheus text format.
Handler MetricsHandler(const Metrics& metrics);

}  // namespace custody::http
