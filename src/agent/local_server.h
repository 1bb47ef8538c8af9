// The agent's local HTTP/1.1 server (DESIGN.md §8): the transport under the inference API. It
// listens on a Unix socket (and optionally on loopback TCP), authenticates each request by its
// peer's credentials before reading the body, reads the request within limits and deadlines, runs
// one handler on a bounded worker pool and writes the answer. It knows nothing of KServe or
// routes: the handler sees every authorised request.
//
// Request flow, per connection (keep-alive: repeated; pipelining is not supported):
//   header (first byte within idle_timeout on a kept-alive connection; the whole header within
//   header_timeout of its first byte, or of the connect for a new connection; at most
//   max_header_bytes) -> framing checks -> authorizer (on the I/O thread) -> body size check from
//   Content-Length -> busy check -> "100 Continue" if asked -> body (within body_timeout; at most
//   max_body_bytes, chunked too) -> handler on a worker -> response (within write_timeout).
//
// Security properties:
//  - An unauthorised peer never makes the server read or buffer a body: the authorizer runs
//    between header and body, and a refusal is answered and the connection closed without the
//    body (no "100 Continue" is sent either). The same holds for 413, 503 and framing errors.
//  - Peer credentials come from the kernel (SO_PEERCRED, taken at connect time), not from anything
//    the client sends. Loopback TCP peers have none (unix_socket=false, ids unset): an authorizer
//    that needs them must refuse TCP peers or authenticate them some other way (a token header).
//  - The socket file is created fresh in an existing directory: Start never follows a symlink at
//    socket_path, never removes anything but a socket nobody listens on, and refuses a path where
//    another server listens. The directory itself must be trusted (not writable by others).
//    The mode is applied to the socket before bind (Linux takes it from the socket's inode), so
//    the file is never more permissive than socket_mode, and set exactly after bind.
//  - The TCP listener binds 127.0.0.1 only.
//
// Answers: every response carries Content-Length (except 204/304, which carry no body), a
// Content-Type and "Cache-Control: no-store" (unless the handler set Cache-Control). Errors the
// server produces itself have the KServe error body {"error": "<message>"} (application/json):
//   400 malformed request (also both Content-Length and Transfer-Encoding)
//   401 / 403 the authorizer returned kUnauthenticated / kPermissionDenied (its message is sent;
//       other codes: kResourceExhausted 429, kUnavailable 503, anything else 500)
//   408 header or body not received in time (then the connection is closed)
//   413 body larger than max_body_bytes (from Content-Length before reading; chunked as it comes)
//   417 an Expect other than 100-continue;  431 header larger than max_header_bytes
//   500 the handler threw, or returned an invalid response (status outside 200..599, a header
//       name that is not a token, a value with CR, LF or NUL)
//   501 a Transfer-Encoding other than chunked;  505 an HTTP version other than 1.0 and 1.1
//   503 + "Retry-After: 1" the queue is full (answered at once, before the body is read), or the
//       server is stopping
// After an error the connection is closed unless the request was read entirely (a 401 for a GET
// keeps it). HTTP/1.0 (keep-alive only if asked), "Connection: close" and HEAD (no body is
// written) are honoured.
//
// Threading: `io_threads` threads run the sockets (one connection's work is serialised; with one
// I/O thread no strand is needed and none is used). The authorizer runs on an I/O thread and must
// be quick and not block. The handler runs on one of `worker_threads` threads; handlers for
// different connections run concurrently. A request counts against the queue bound from the moment
// it is handed to the workers until its handler returned: at most worker_threads + max_queue such
// requests exist; beyond that the answer is 503 at once.
//
// Latency: the request path makes no copy of the body (it is read into the string the handler
// gets, which it may move from), parses the header in place, and writes header and body in one
// gathered write. The per-connection deadline timer is re-armed only when a deadline moves earlier.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/status.h"

namespace custody::agent {

// Who is at the other end of a connection, as the kernel says.
struct PeerCredentials {
  bool unix_socket = true;  // false for loopback TCP: then the ids below are unset
  std::optional<pid_t> pid;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};

struct LocalRequest {
  std::string method;  // as sent, e.g. "POST"
  std::string target;  // as sent (origin-form, e.g. "/v2/models/m/infer?x=1"); not decoded
  std::vector<std::pair<std::string, std::string>> headers;  // in order, names as sent
  std::string body;                                          // decoded from chunked if it was
  PeerCredentials peer;
  std::string client;  // what the authorizer returned (e.g. "uid:1000" or an app name)

  // The value of the first header field named `name` (ASCII case-insensitive), if any. The view
  // points into `headers`.
  std::optional<std::string_view> Header(std::string_view name) const;
};

struct LocalResponse {
  int status = 200;                               // 200..599
  std::string content_type = "application/json";  // empty: application/octet-stream
  // Extra header fields. Content-Length, Content-Type, Transfer-Encoding, Connection and
  // Keep-Alive are the server's and are dropped from here.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // may be binary
};

// Decides whether a request may be served. Called on an I/O thread once the header is read and
// BEFORE the body is read; `header_only` has method, target, headers and peer set, body and client
// empty. Returns the client identity (put into LocalRequest::client), or kUnauthenticated (401) /
// kPermissionDenied (403) with a message the caller may read (it must not hold secrets). Must not
// block; exceptions are answered 500.
using LocalAuthorizer = std::function<Result<std::string>(const PeerCredentials& peer,
                                                          const LocalRequest& header_only)>;

// Serves one authorised request. Runs on a worker thread, concurrently with other requests; may
// move from `request`. Should not throw; if it does the answer is 500 and the server goes on.
using LocalHandler = std::function<LocalResponse(LocalRequest& request)>;

struct LocalServerOptions {
  // Required. The directory must exist. An existing socket nobody listens on (a stale one from a
  // crash) is replaced; a socket someone listens on is kUnavailable ("another agent is serving
  // on ..."); anything else (file, directory, symlink) is kFailedPrecondition and left untouched.
  std::string socket_path;
  uint32_t socket_mode = 0660;        // permission bits of the socket file (at most 0777)
  std::optional<gid_t> socket_group;  // group of the socket file (so an app's group can connect)
  // An additional listener on 127.0.0.1 (never another address); 0 picks an ephemeral port.
  std::optional<uint16_t> tcp_port;

  unsigned io_threads = 1;      // 1..64
  unsigned worker_threads = 2;  // 1..1024
  // Requests handed to the workers and waiting for one (beyond the worker_threads running).
  size_t max_queue = 64;

  // 64 MiB of tensor data plus 64 KiB for the JSON (header) around it.
  size_t max_body_bytes = (size_t{64} << 20) + (size_t{64} << 10);
  size_t max_header_bytes = 16 << 10;  // request line and fields; 256 B .. 1 MiB
  size_t max_connections = 256;        // beyond: new connections are closed at once

  std::chrono::milliseconds header_timeout{10'000};  // whole header, from its first byte: 408
  std::chrono::milliseconds body_timeout{30'000};    // whole body, from the end of the header: 408
  std::chrono::milliseconds write_timeout{30'000};   // whole response; then the connection closes
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive: wait for the next request
};

class LocalServer {
 public:
  // Validates the options, creates the socket file (and the TCP listener), and starts serving.
  // Errors: kInvalidArgument (bad options, a socket path longer than sun_path, no authorizer or
  // handler), kFailedPrecondition (the directory does not exist, or a non-socket is at the path,
  // naming it), kUnavailable (another server listens at the path; the TCP port is taken),
  // kPermissionDenied (cannot create the socket, or cannot give it socket_group), or an
  // ErrnoStatus for other system call failures. On error nothing is left behind.
  static Result<std::unique_ptr<LocalServer>> Start(LocalServerOptions options,
                                                    LocalAuthorizer authorizer,
                                                    LocalHandler handler);
  // Stop(0) if still running.
  ~LocalServer();
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  // The bound loopback TCP port (the ephemeral one if tcp_port was 0), if there is a listener.
  std::optional<uint16_t> tcp_port() const;

  // Stops accepting and removes the socket file (if it is still ours) at once, closes idle
  // connections, answers requests not yet handed to a handler with 503, lets handlers in progress
  // (and queued ones) finish and their answers be written for up to `grace`, then closes every
  // connection and joins all threads. Handlers still running then are waited for (they cannot be
  // interrupted). Idempotent; callable from any thread but the server's own (from a handler or
  // the authorizer it aborts); returns once the server has stopped.
  void Stop(std::chrono::milliseconds grace);

  struct Stats {
    uint64_t requests = 0;          // request headers read (every request answered, any status)
    uint64_t rejected_busy = 0;     // 503 because the queue was full
    uint64_t rejected_auth = 0;     // refused by the authorizer
    uint64_t handler_failures = 0;  // the handler threw or returned an invalid response (500)
    size_t in_flight = 0;           // handlers running now
    size_t queued = 0;              // handed to the workers, waiting for one
    size_t connections = 0;         // open now
  };
  // A snapshot (each field read atomically, not all together). Any thread.
  Stats stats() const;

  struct Core;  // implementation, public only so the .cc's helpers can name it

 private:
  explicit LocalServer(std::unique_ptr<Core> core);
  std::unique_ptr<Core> core_;
};

}  // namespace custody::agent
