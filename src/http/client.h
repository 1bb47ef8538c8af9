// HTTPS client for the custodian's API: used by the CLI, the agent and tests (Client, blocking)
// and by load generators (AsyncConnection, coroutines: thousands of connections from one
// process).
//
// Security: HTTPS only, TLS 1.2 minimum. The server certificate must chain to `ca_pem` and name
// `expected_name` (default: `host`), a DNS name or IP literal; a pinned name lets a client reach
// the custodian by address while still checking the name it was issued for. An optional client
// certificate and key give mutual TLS (device routes).
//
// Connections are kept alive and reused. If a reused connection turns out to have been closed
// by the server (it times out idle connections), the request is sent once more on a new
// connection when that cannot make it happen twice: when the request could not be written, or
// when no byte of the answer arrived and the request is idempotent (GET, HEAD, or marked so by
// the caller, e.g. a usage report with its report id). A server killed after committing a POST
// but before answering looks exactly like an idle close, so other POSTs are not resent: the
// caller gets kUnavailable and decides.
//
// Errors: transport failures (resolve, connect, TLS, timeouts, connection lost, malformed answer)
// are kUnavailable with a message naming the server and the cause ("custodian 10.0.0.5:8443: TLS
// handshake failed: certificate verify failed (certificate verification: certificate has
// expired)"); an answer larger than max_response_body_bytes is kResourceExhausted; a bad request
// (target not starting with '/', CR/LF in a header) is kInvalidArgument. HTTP error statuses are
// NOT errors: the ClientResponse carries them.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/status.h"
#include "http/asio.h"

namespace custody::http {

struct ClientOptions {
  std::string host;  // DNS name or IP literal to connect to
  uint16_t port = 443;
  std::string ca_pem;         // trust anchors for the server certificate (required)
  std::string expected_name;  // name the server certificate must carry; "" = host
  // Mutual TLS: both or neither.
  std::optional<std::string> client_certificate_pem;
  std::optional<std::string> client_key_pem;
  // Sent as "Authorization: Bearer <token>" unless a request overrides it.
  std::optional<std::string> bearer_token;
  std::chrono::milliseconds connect_timeout{10'000};
  // resolve + TCP connect + TLS handshake
  std::chrono::milliseconds request_timeout{60'000};  // write request + read whole answer
  size_t max_response_body_bytes = 64 << 20;
};

// Overwrites and drops options.client_key_pem. Clients keep only the TLS context made from it;
// callers that keep options after making clients wipe their copies with this.
void WipeClientKey(ClientOptions& options);

struct ClientRequest {
  std::string method = "GET";
  std::string target;  // origin-form: "/v1/devices?limit=10"
  std::string body;
  std::string content_type = "application/json";  // sent only with a body
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<std::string> bearer_token;           // overrides ClientOptions'
  std::optional<std::chrono::milliseconds> timeout;  // overrides request_timeout (long-polls)
  bool idempotent = false;  // safe to process twice (GET and HEAD always are): may be resent
};

struct ClientResponse {
  int status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  // The first header named `name` (case-insensitive).
  std::optional<std::string> Header(std::string_view name) const;
  // The body parsed as a JSON object (protocol::ParseJsonObject rules, at most `max_bytes`).
  Result<nlohmann::json> Json(size_t max_bytes = 16 << 20) const;
};

// Immutable TLS configuration and options shared by connections. Thread-safe.
class ClientContext {
 public:
  // kInvalidArgument for bad PEM material or options.
  static Result<std::shared_ptr<const ClientContext>> Create(ClientOptions options);

  const ClientOptions& options() const { return options_; }
  asio::ssl::context& tls() const { return *tls_; }
  // "custodian host:port", the prefix of every transport error.
  const std::string& server_label() const { return label_; }

 private:
  ClientContext() = default;
  ClientOptions options_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::string label_;
};

// One keep-alive connection, driven by coroutines on `executor`. One request at a time (a
// second Send while one is in progress is a programming error and aborts). Not thread-safe:
// use it from its executor (give each connection a strand when the io_context has several
// threads).
class AsyncConnection {
 public:
  AsyncConnection(asio::any_io_executor executor, std::shared_ptr<const ClientContext> context);
  ~AsyncConnection();
  AsyncConnection(const AsyncConnection&) = delete;
  AsyncConnection& operator=(const AsyncConnection&) = delete;

  asio::awaitable<Result<ClientResponse>> Send(ClientRequest request);

  // Drops the connection (the next Send connects again).
  void Close();

  // TLS connections established so far (a test of keep-alive reuse counts them).
  uint64_t connects() const { return connects_; }
  // "custodian host:port", the prefix of its errors.
  const std::string& label() const { return context_->server_label(); }

 private:
  struct Stream;
  asio::awaitable<Status> Connect();
  asio::awaitable<Result<ClientResponse>> Exchange(const ClientRequest& request, bool* retryable);

  asio::any_io_executor executor_;
  std::shared_ptr<const ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  bool busy_ = false;
  uint64_t connects_ = 0;
};

// Blocking client: each call runs an AsyncConnection on a private io_context until it finishes.
// One thread at a time (give each thread its own Client), except for Interrupt.
class Client {
 public:
  static Result<std::unique_ptr<Client>> Create(ClientOptions options);
  ~Client();

  Result<ClientResponse> Send(const ClientRequest& request);
  Result<ClientResponse> Get(std::string target);
  Result<ClientResponse> PostJson(std::string target, const nlohmann::json& body);

  uint64_t connects() const { return connection_->connects(); }
  void Close() { connection_->Close(); }

  // Ends the request in progress (a long-poll, say) and every later one with kUnavailable
  // "interrupted": for shutdown. The only method that may be called from another thread; the
  // client can then only be destroyed.
  void Interrupt();

 private:
  explicit Client(std::shared_ptr<const ClientContext> context);
  asio::io_context io_;
  std::unique_ptr<AsyncConnection> connection_;
  std::mutex interrupt_mu_;  // orders Interrupt against the io_context's restart in Send
  bool interrupted_ = false;
  std::string Interrupted() const;
};

}  // namespace custody::http
