#include "http/client.h"

#include <algorithm>

#include "core/base/secret_buffer.h"
#include "core/protocol/json.h"
#include "http/tls.h"

namespace custody::http {
namespace {

using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr uint32_t kMaxResponseHeaderBytes = 64 << 10;
constexpr char kUserAgent[] = "custody";

std::string Seconds(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

bool HasCrLfOrNul(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return c == '\r' || c == '\n' || c == 0; });
}

Status ValidateRequest(const ClientRequest& r) {
  if (r.target.empty() || r.target.front() != '/' ||
      std::any_of(r.target.begin(), r.target.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7F;
      })) {
    return InvalidArgument("request target '" + r.target +
                           "' must start with '/' and be percent-encoded (no spaces or controls)");
  }
  if (r.method.empty() ||
      !std::all_of(r.method.begin(), r.method.end(), [](char c) { return c >= 'A' && c <= 'Z'; })) {
    return InvalidArgument("request method must be upper-case letters");
  }
  for (const auto& [name, value] : r.headers) {
    if (name.empty() || HasCrLfOrNul(name) || name.find(':') != std::string::npos ||
        HasCrLfOrNul(value)) {
      return InvalidArgument("request header '" + name + "' has an invalid name or value");
    }
  }
  if (HasCrLfOrNul(r.content_type) || (r.bearer_token && HasCrLfOrNul(*r.bearer_token))) {
    return InvalidArgument("content type or bearer token contains CR, LF or NUL");
  }
  return OkStatus();
}

// The peer closed (or reset) the connection: on a reused connection, before any byte of an
// answer, this is the server having closed it while idle.
bool IsConnectionLost(const ErrorCode& ec) {
  return ec == asio::error::eof || ec == bhttp::error::end_of_stream ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::ssl::error::stream_truncated || ec == bhttp::error::partial_message;
}

}  // namespace

std::optional<std::string> ClientResponse::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (beast::iequals(n, name)) return v;
  }
  return std::nullopt;
}

Result<nlohmann::json> ClientResponse::Json(size_t max_bytes) const {
  return protocol::ParseJsonObject(body, max_bytes, "response body");
}

void WipeClientKey(ClientOptions& options) {
  if (!options.client_key_pem) return;
  SecureWipe(options.client_key_pem->data(), options.client_key_pem->size());
  options.client_key_pem.reset();
}

Result<std::shared_ptr<const ClientContext>> ClientContext::Create(ClientOptions options) {
  if (options.host.empty() || options.port == 0) {
    return InvalidArgument("client options need a host and a non-zero port");
  }
  if (options.connect_timeout.count() <= 0 || options.request_timeout.count() <= 0) {
    return InvalidArgument("client timeouts must be positive");
  }
  if (options.expected_name.empty()) options.expected_name = options.host;
  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<asio::ssl::context> tls,
                           MakeClientTlsContext({options.ca_pem, options.client_certificate_pem,
                                                 options.client_key_pem}));
  // The TLS context holds the key from here on; its PEM is not kept.
  WipeClientKey(options);
  std::shared_ptr<ClientContext> out(new ClientContext());
  out->label_ = "custodian " + options.host + ":" + std::to_string(options.port);
  out->options_ = std::move(options);
  out->tls_ = std::move(tls);
  return std::shared_ptr<const ClientContext>(std::move(out));
}

struct AsyncConnection::Stream {
  Stream(const asio::any_io_executor& executor, asio::ssl::context& context)
      : tls(executor, context) {}
  beast::ssl_stream<beast::tcp_stream> tls;
  beast::flat_buffer buffer;
};

AsyncConnection::AsyncConnection(asio::any_io_executor executor,
                                 std::shared_ptr<const ClientContext> context)
    : executor_(std::move(executor)), context_(std::move(context)) {}

AsyncConnection::~AsyncConnection() = default;

void AsyncConnection::Close() { stream_.reset(); }

asio::awaitable<Status> AsyncConnection::Connect() {
  const ClientOptions& options = context_->options();
  const std::string& label = context_->server_label();
  stream_.reset();
  auto stream = std::make_unique<Stream>(executor_, context_->tls());
  Status prepared = PrepareClientSsl(stream->tls.native_handle(), options.expected_name);
  if (!prepared.ok()) co_return prepared;
  const auto deadline = std::chrono::steady_clock::now() + options.connect_timeout;

  ErrorCode ec;
  // The resolver has no deadline of its own: a timer cancels it. The timer's handler may run
  // after the resolve finished, so it holds the resolver weakly.
  auto resolver = std::make_shared<tcp::resolver>(executor_);
  asio::steady_timer resolve_deadline(executor_, deadline);
  resolve_deadline.async_wait([weak = std::weak_ptr<tcp::resolver>(resolver)](const ErrorCode& e) {
    if (auto r = weak.lock(); r && !e) r->cancel();
  });
  const auto endpoints = co_await resolver->async_resolve(
      options.host, std::to_string(options.port), asio::redirect_error(asio::use_awaitable, ec));
  resolve_deadline.cancel();
  if (ec) {
    co_return Unavailable(label + ": cannot resolve host: " +
                          (ec == asio::error::operation_aborted
                               ? "timed out after " + Seconds(options.connect_timeout)
                               : ec.message()));
  }

  beast::tcp_stream& tcp_stream = stream->tls.next_layer();
  tcp_stream.expires_at(deadline);
  co_await tcp_stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return Unavailable(label + ": cannot connect: " +
                          (ec == beast::error::timeout
                               ? "timed out after " + Seconds(options.connect_timeout)
                               : ec.message()));
  }
  tcp_stream.socket().set_option(tcp::no_delay(true), ec);
  tcp_stream.expires_at(deadline);
  co_await stream->tls.async_handshake(asio::ssl::stream_base::client,
                                       asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return Unavailable(label + ": TLS handshake failed: " +
                          (ec == beast::error::timeout
                               ? "timed out after " + Seconds(options.connect_timeout)
                               : DescribeTlsError(stream->tls.native_handle(), ec)));
  }
  tcp_stream.expires_never();
  stream_ = std::move(stream);
  ++connects_;
  co_return OkStatus();
}

asio::awaitable<Result<ClientResponse>> AsyncConnection::Exchange(const ClientRequest& request,
                                                                  bool* retryable) {
  const ClientOptions& options = context_->options();
  const std::string& label = context_->server_label();
  const auto timeout = request.timeout.value_or(options.request_timeout);
  *retryable = false;

  bhttp::request<bhttp::string_body> req;
  req.version(11);
  req.method_string(request.method);
  req.target(request.target);
  req.set(bhttp::field::host, options.host + ":" + std::to_string(options.port));
  req.set(bhttp::field::user_agent, kUserAgent);
  const std::optional<std::string>& token =
      request.bearer_token ? request.bearer_token : options.bearer_token;
  if (token) req.set(bhttp::field::authorization, "Bearer " + *token);
  for (const auto& [name, value] : request.headers) req.insert(name, value);
  if (!request.body.empty()) req.set(bhttp::field::content_type, request.content_type);
  req.body() = request.body;
  req.keep_alive(true);
  req.prepare_payload();

  Stream& s = *stream_;
  ErrorCode ec;
  s.tls.next_layer().expires_after(timeout);
  co_await bhttp::async_write(s.tls, req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    *retryable = IsConnectionLost(ec);
    co_return Unavailable(
        label + ": sending the request failed: " +
        (ec == beast::error::timeout ? "timed out after " + Seconds(timeout) : ec.message()));
  }
  bhttp::response_parser<bhttp::string_body> parser;
  parser.header_limit(kMaxResponseHeaderBytes);
  parser.body_limit(options.max_response_body_bytes);
  // Header first: Boost 1.74's parser drops the body_limit error for a Content-Length that is
  // too large when header and body arrive in one buffer in eager mode (http::async_read).
  co_await bhttp::async_read_header(s.tls, s.buffer, parser,
                                    asio::redirect_error(asio::use_awaitable, ec));
  if (!ec && !parser.is_done()) {
    co_await bhttp::async_read(s.tls, s.buffer, parser,
                               asio::redirect_error(asio::use_awaitable, ec));
  }
  if (ec) {
    // Nothing came back: the server may have closed an idle connection before reading the
    // request, or it may have processed it and died before answering. Only a request that is
    // safe to process twice may be sent again.
    *retryable = !parser.got_some() && IsConnectionLost(ec) &&
                 (request.idempotent || request.method == "GET" || request.method == "HEAD");
    if (ec == bhttp::error::body_limit) {
      co_return ResourceExhausted(label + ": answer body exceeds the limit of " +
                                  std::to_string(options.max_response_body_bytes) + " bytes");
    }
    co_return Unavailable(label + ": reading the answer failed: " +
                          (ec == beast::error::timeout
                               ? "no complete answer within " + Seconds(timeout)
                               : ec.message()));
  }
  s.tls.next_layer().expires_never();
  auto& res = parser.get();
  ClientResponse out;
  out.status = static_cast<int>(res.result_int());
  for (const auto& field : res) {
    out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  }
  const bool keep_alive = res.keep_alive();
  out.body = std::move(res.body());
  if (!keep_alive) Close();
  co_return out;
}

asio::awaitable<Result<ClientResponse>> AsyncConnection::Send(ClientRequest request) {
  if (busy_) Panic("AsyncConnection::Send while another request is in progress");
  Status valid = ValidateRequest(request);
  if (!valid.ok()) co_return valid;
  busy_ = true;
  struct Release {
    bool& busy;
    ~Release() { busy = false; }
  } release{busy_};

  for (int attempt = 0;; ++attempt) {
    const bool reused = stream_ != nullptr;
    if (!reused) {
      Status connected = co_await Connect();
      if (!connected.ok()) co_return connected;
    }
    bool retryable = false;
    Result<ClientResponse> response = co_await Exchange(request, &retryable);
    if (response.ok()) co_return response;
    Close();
    if (!(reused && retryable && attempt == 0)) co_return response;
  }
}

Result<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<const ClientContext> context,
                           ClientContext::Create(std::move(options)));
  return std::unique_ptr<Client>(new Client(std::move(context)));
}

Client::Client(std::shared_ptr<const ClientContext> context)
    : io_(1),
      connection_(std::make_unique<AsyncConnection>(io_.get_executor(), std::move(context))) {}

Client::~Client() {
  // The connection's socket belongs to io_: destroy it first.
  connection_.reset();
}

Result<ClientResponse> Client::Send(const ClientRequest& request) {
  std::optional<Result<ClientResponse>> result;
  {
    std::lock_guard lock(interrupt_mu_);
    if (interrupted_) return Unavailable(Interrupted());
  }
  asio::co_spawn(
      io_,
      [this, &request, &result]() -> asio::awaitable<void> {
        result.emplace(co_await connection_->Send(request));
      },
      [&result](std::exception_ptr e) {
        if (e && !result) result.emplace(Internal("HTTP client coroutine ended by an exception"));
      });
  {
    std::lock_guard lock(interrupt_mu_);
    if (interrupted_) return Unavailable(Interrupted());
    io_.restart();
  }
  io_.run();
  if (!result) {
    std::lock_guard lock(interrupt_mu_);
    if (interrupted_) return Unavailable(Interrupted());
    return Internal("HTTP client finished without an answer");
  }
  return std::move(*result);
}

void Client::Interrupt() {
  std::lock_guard lock(interrupt_mu_);
  interrupted_ = true;
  // The request's coroutine stays suspended in io_ and is destroyed with it.
  io_.stop();
}

std::string Client::Interrupted() const {
  return connection_->label() + ": interrupted (the client is shutting down)";
}

Result<ClientResponse> Client::Get(std::string target) {
  ClientRequest request;
  request.target = std::move(target);
  return Send(request);
}

Result<ClientResponse> Client::PostJson(std::string target, const nlohmann::json& body) {
  ClientRequest request;
  request.method = "POST";
  request.target = std::move(target);
  request.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return Send(request);
}

}  // namespace custody::http
