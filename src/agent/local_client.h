// A small blocking HTTP/1.1 client for the agent's local server (local_server.h): the transport
// under `custody infer` / `custody status`, the end-to-end tests and the benchmarks.
//
// One connection, kept alive and reused: each Send writes one request (header and body in one
// gathered write, the body never copied) and reads one answer. The answer may be framed by
// Content-Length, chunked, or end with the connection; a HEAD answer has no body; an interim 1xx
// answer is skipped. "Connection: close" from the server (or HTTP/1.0 without keep-alive) closes
// the connection after the answer, and the next Send connects again. Pipelining is not used.
//
// Reconnection: a kept-alive connection that the server closed while idle (its idle_timeout, a
// restart) is noticed before the request is written (the socket reads as closed) and replaced
// transparently. If the server closes it while the request is in flight, before any byte of the
// answer arrived, the request is sent once more on a new connection only when that cannot do
// anything twice: nothing of it had been written, or it is a GET or HEAD. A POST (an inference,
// which is metered) is never resent once a byte of it left; the caller gets kUnavailable.
//
// Deadlines: `timeout` bounds a whole Send (connect, write, and read of the answer) and a Connect.
// Every wait is a poll() with what is left of it; nothing blocks beyond it.
//
// Errors (Result, never exceptions):
//   kUnavailable       cannot connect ("cannot connect to the agent at PATH: <why> (is
//                      custody-agent running? is your user allowed on the socket?)"); the
//                      connection closed or reset before the answer was complete
//   kPermissionDenied  the socket exists but this user may not connect to it (EACCES), same hint
//   kDeadlineExceeded  `timeout` passed; the connection is closed (its state is unknown)
//   kResourceExhausted the answer is larger than max_response_bytes, or its header than 16 KiB
//   kInvalidArgument   bad options, method, target or header field (CR/LF, not a token, or one of
//                      the fields the client sets itself)
//   kInternal          the server's answer is not valid HTTP/1.1
// After any error the connection is closed; the next Send connects again. HTTP statuses other
// than 2xx are not errors here: the caller reads LocalAnswer::status and the body.
//
// Security: the bearer token is sent only in the Authorization header, to the socket named (or
// 127.0.0.1); it is never put into a message. The client trusts the socket's path: who may create
// it is the directory's business (local_server.h).
//
// Threading: a LocalClient is used by one thread at a time (it holds one connection and its
// buffer). Give each thread its own.
//
// Overhead: a Send allocates the answer's body (once for a Content-Length answer, which is read
// straight into it), its header fields, and nothing else: the request header is assembled in a
// buffer reused from call to call, as is the read buffer.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/status.h"

namespace custody::agent {

struct LocalClientOptions {
  std::string socket_path;           // the agent's Unix socket (serve.socket)
  std::optional<uint16_t> tcp_port;  // if set: 127.0.0.1:port instead of the socket
  // Sent as "Authorization: Bearer <token>" with every request (an application token).
  std::optional<std::string> bearer_token;
  std::chrono::milliseconds timeout{60'000};      // per Connect, per Send
  size_t max_response_bytes = size_t{256} << 20;  // body of one answer
};

struct LocalAnswer {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // in order, names as sent
  std::string body;                                          // decoded from chunked if it was

  // The value of the first header field named `name` (ASCII case-insensitive), if any. The view
  // points into `headers`.
  std::optional<std::string_view> Header(std::string_view name) const;
};

class LocalClient {
 public:
  // Connects at once (so that a missing agent is reported before any work is done).
  static Result<std::unique_ptr<LocalClient>> Connect(LocalClientOptions options);
  ~LocalClient();
  LocalClient(const LocalClient&) = delete;
  LocalClient& operator=(const LocalClient&) = delete;

  // Sends one request and reads its answer. `target` is origin-form ("/v2/models/m/infer").
  // Content-Length is sent when there is a body or the method is POST or PUT. `headers` are extra
  // fields; Host, Content-Length, Transfer-Encoding, Connection and (with a bearer token)
  // Authorization are the client's and refused here.
  Result<LocalAnswer> Send(std::string_view method, std::string_view target,
                           std::string_view body = {},
                           const std::vector<std::pair<std::string, std::string>>& headers = {});

  // "the agent at /run/custody-agent/agent.sock" or "the agent at 127.0.0.1:8080", for messages.
  const std::string& peer() const;

  struct Impl;  // implementation, public only so the .cc's helpers can name it

 private:
  explicit LocalClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace custody::agent
