// Requests, responses, access classes and routing of the custodian's HTTP API (DESIGN.md §11).
// The server (server.h) reads requests, authenticates them per the route's access class and hands
// them to the handlers registered here.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/status.h"
#include "http/asio.h"

namespace custody::http {

// Who may call a route.
//  kPublic:   anyone (health, enrollment with its one-time token, metrics).
//  kDevice:   a device: a client certificate that verified against the configured client CA
//             (mutual TLS); the principal's id is the certificate's subject CN (the device id).
//  kViewer, kOperator, kAdmin: a person or automation with `Authorization: Bearer <token>`
//             whose role is at least this one (admin may call operator and viewer routes).
enum class Access { kPublic, kDevice, kViewer, kOperator, kAdmin };
std::string_view AccessName(Access access);  // "public", "device", "viewer", ...

// Roles of bearer tokens, ordered: viewer < operator < admin.
enum class Role { kViewer = 0, kOperator = 1, kAdmin = 2 };
std::string_view RoleName(Role role);  // "viewer", "operator", "admin"

// The authenticated caller of a request.
struct Principal {
  enum class Kind { kAnonymous, kDevice, kToken };
  Kind kind = Kind::kAnonymous;  // kAnonymous on kPublic routes
  std::string id;                // device id (certificate CN) or token id (never the secret)
  std::string name;              // token holder's name; the device id for devices
  Role role = Role::kViewer;     // meaningful for kToken only
};

// One request as handlers see it. Everything is already bounded by the server's limits.
struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // as sent, without the query ("/v1/admin/models/ab%2Fcd")
  std::string target;  // as sent, path and query
  std::map<std::string, std::string> path_params;  // "{model_id}" -> percent-decoded value
  std::map<std::string, std::string> query;        // percent-decoded ('+' is a space)
  std::string body;
  std::string content_type;  // the Content-Type header, "" if absent
  std::string peer_address;  // client IP address, e.g. "192.0.2.7" or "2001:db8::1"
  // Subject CN of a client certificate that verified against the client CA (any route).
  std::optional<std::string> client_cert_subject_cn;
  // The bearer token, if one was sent in the proper form. Handlers rarely need it; never log it.
  std::optional<std::string> bearer_token;
  std::string request_id;  // also sent back as X-Request-Id
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  // Extra headers. The server owns Content-Length, Connection, Transfer-Encoding, Date and
  // X-Request-Id; handler values for those are ignored. Names must be tokens and values must not
  // contain CR, LF or NUL, or the server answers 500 instead.
  std::vector<std::pair<std::string, std::string>> headers;

  // `body` serialised compactly (invalid UTF-8 in strings is replaced, never thrown on).
  static Response Json(int status, const nlohmann::json& body);
  // The error answer for `status` (which must not be OK): HttpStatusFor(code) and
  // {"error":{"code":"<StatusCodeName>","message":"<message>"}}.
  static Response FromStatus(const Status& status);
  // An error answer with an explicit HTTP status (405, 408, 413, 431...) and the same body shape.
  static Response Error(int http_status, StatusCode code, std::string_view message);
};

// kInvalidArgument/kOutOfRange 400, kUnauthenticated 401, kPermissionDenied 403, kNotFound 404,
// kAlreadyExists/kFailedPrecondition 409, kResourceExhausted 429, kUnimplemented 501,
// kUnavailable 503, kDeadlineExceeded 504, kDataLoss/kInternal (and kOk, a bug) 500.
int HttpStatusFor(StatusCode code);

// A blocking handler: runs on the server's worker thread pool, so it may wait on the database.
// It should not throw; if it does, the server logs it and answers 500.
using Handler = std::function<Response(const Request&, const Principal&)>;
// A coroutine handler: runs on the I/O threads (on the connection's strand), so it must never
// block (use RunBlocking, run_blocking.h, for database calls); for long-polls (co_await
// LongPollHub::Wait). The references stay valid until it completes. Same rule on exceptions.
using AsyncHandler = std::function<asio::awaitable<Response>(const Request&, const Principal&)>;

struct RouteInfo {
  std::string method;
  std::string pattern;
  Access access = Access::kPublic;
  bool async = false;
};

// Routes: a method and a path pattern of literal segments and {name} parameters, e.g.
// "/v1/admin/models/{model_id}". A parameter matches one whole non-empty segment. When several
// patterns match a path, the one with a literal segment where the others have a parameter wins
// (leftmost difference first): "/v1/devices/self" beats "/v1/devices/{id}".
//
// Registering an invalid pattern or the same method and pattern twice is a programming error
// and aborts. A Router is filled before Server::Start and read-only afterwards.
class Router {
 public:
  void Add(std::string method, std::string pattern, Access access, Handler handler);
  void AddAsync(std::string method, std::string pattern, Access access, AsyncHandler handler);

  // Every route, in registration order (so a test can check the OpenAPI document).
  std::vector<RouteInfo> Routes() const;

  struct Route {
    RouteInfo info;
    std::vector<std::string> segments;  // pattern split at '/'; "{x}" for parameters
    Handler handler;
    AsyncHandler async_handler;
  };

  struct Match {
    enum class Kind { kFound, kNoPath, kWrongMethod, kBadPath };
    Kind kind = Kind::kNoPath;
    size_t route_index = 0;  // kFound: index into routes()
    std::map<std::string, std::string> path_params;
    std::vector<std::string> allowed_methods;  // kWrongMethod: sorted, for the Allow header
    Status error;                              // kBadPath: a parameter failed to decode
  };
  // Resolves `path` (without query) for `method`.
  Match Resolve(std::string_view method, std::string_view path) const;

  const std::vector<Route>& routes() const { return routes_; }

 private:
  void AddRoute(Route route);

  std::vector<Route> routes_;
};

}  // namespace custody::http
