#include "http/router.h"

#include <algorithm>
#include <set>

#include "http/url.h"

namespace custody::http {
namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  for (;;) {
    const size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

bool IsParam(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// True if `a` is more specific than `b`: at the leftmost segment where one has a literal and
// the other a parameter, the literal wins.
bool MoreSpecific(const Router::Route& a, const Router::Route& b) {
  for (size_t i = 0; i < a.segments.size() && i < b.segments.size(); ++i) {
    const bool pa = IsParam(a.segments[i]);
    const bool pb = IsParam(b.segments[i]);
    if (pa != pb) return !pa;
  }
  return false;
}

bool Matches(const Router::Route& route, const std::vector<std::string_view>& segments) {
  if (route.segments.size() != segments.size()) return false;
  for (size_t i = 0; i < segments.size(); ++i) {
    if (IsParam(route.segments[i])) {
      if (segments[i].empty()) return false;
    } else if (route.segments[i] != segments[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string_view AccessName(Access access) {
  switch (access) {
    case Access::kPublic:
      return "public";
    case Access::kDevice:
      return "device";
    case Access::kViewer:
      return "viewer";
    case Access::kOperator:
      return "operator";
    case Access::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kViewer:
      return "viewer";
    case Role::kOperator:
      return "operator";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

int HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return 400;
    case StatusCode::kUnauthenticated:
      return 401;
    case StatusCode::kPermissionDenied:
      return 403;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
    case StatusCode::kFailedPrecondition:
      return 409;
    case StatusCode::kResourceExhausted:
      return 429;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kDeadlineExceeded:
      return 504;
    case StatusCode::kOk:
    case StatusCode::kDataLoss:
    case StatusCode::kInternal:
      return 500;
  }
  return 500;
}

Response Response::Json(int status, const nlohmann::json& body) {
  Response r;
  r.status = status;
  // Handlers put peer-supplied strings into answers; replacing bad UTF-8 beats throwing.
  r.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

Response Response::Error(int http_status, StatusCode code, std::string_view message) {
  nlohmann::json body;
  body["error"]["code"] = std::string(StatusCodeName(code));
  body["error"]["message"] = std::string(message);
  return Json(http_status, body);
}

Response Response::FromStatus(const Status& status) {
  const StatusCode code = status.ok() ? StatusCode::kInternal : status.code();
  const std::string message = status.ok()
                                  ? "internal error: an error answer was built from an OK status"
                                  : status.message();
  return Error(HttpStatusFor(code), code, message);
}

void Router::Add(std::string method, std::string pattern, Access access, Handler handler) {
  if (!handler) Panic("Router::Add " + pattern + ": empty handler");
  Route route;
  route.info = {std::move(method), std::move(pattern), access, false};
  route.handler = std::move(handler);
  AddRoute(std::move(route));
}

void Router::AddAsync(std::string method, std::string pattern, Access access,
                      AsyncHandler handler) {
  if (!handler) Panic("Router::AddAsync " + pattern + ": empty handler");
  Route route;
  route.info = {std::move(method), std::move(pattern), access, true};
  route.async_handler = std::move(handler);
  AddRoute(std::move(route));
}

void Router::AddRoute(Route route) {
  const std::string where = route.info.method + " " + route.info.pattern;
  if (!IsToken(route.info.method) ||
      !std::all_of(route.info.method.begin(), route.info.method.end(),
                   [](char c) { return c >= 'A' && c <= 'Z'; })) {
    Panic("route " + where + ": method must be upper-case letters");
  }
  if (route.info.pattern.empty() || route.info.pattern.front() != '/') {
    Panic("route " + where + ": pattern must start with '/'");
  }
  std::set<std::string_view> params;
  for (std::string_view segment : SplitPath(route.info.pattern)) {
    if (IsParam(segment)) {
      const std::string_view name = segment.substr(1, segment.size() - 2);
      if (!IsToken(name) || !params.insert(name).second) {
        Panic("route " + where + ": bad or repeated parameter name '" + std::string(name) + "'");
      }
    } else if (segment.find_first_of("{}?%#") != std::string_view::npos) {
      Panic("route " + where + ": literal segment '" + std::string(segment) +
            "' contains a reserved character");
    }
    route.segments.emplace_back(segment);
  }
  // Two patterns that differ only in parameter names would match the same paths.
  const auto same_shape = [](const std::vector<std::string>& a, const std::vector<std::string>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](const std::string& x, const std::string& y) {
                        return IsParam(x) ? IsParam(y) : x == y;
                      });
  };
  for (const Route& other : routes_) {
    if (other.info.method == route.info.method && same_shape(other.segments, route.segments)) {
      Panic("route " + where + " registered twice (as " + other.info.pattern + ")");
    }
  }
  routes_.push_back(std::move(route));
}

std::vector<RouteInfo> Router::Routes() const {
  std::vector<RouteInfo> out;
  out.reserve(routes_.size());
  for (const Route& route : routes_) out.push_back(route.info);
  return out;
}

Router::Match Router::Resolve(std::string_view method, std::string_view path) const {
  const std::vector<std::string_view> segments = SplitPath(path);
  Match match;
  const Route* best = nullptr;
  std::set<std::string> allowed;
  for (size_t i = 0; i < routes_.size(); ++i) {
    const Route& route = routes_[i];
    if (!Matches(route, segments)) continue;
    if (route.info.method != method) {
      allowed.insert(route.info.method);
      continue;
    }
    if (best == nullptr || MoreSpecific(route, *best)) {
      best = &route;
      match.route_index = i;
    }
  }
  if (best == nullptr) {
    match.kind = allowed.empty() ? Match::Kind::kNoPath : Match::Kind::kWrongMethod;
    match.allowed_methods.assign(allowed.begin(), allowed.end());
    return match;
  }
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::string& pattern = best->segments[i];
    if (!IsParam(pattern)) continue;
    const std::string name = pattern.substr(1, pattern.size() - 2);
    Result<std::string> value = PercentDecode(segments[i], false, "path parameter '" + name + "'");
    if (!value) {
      match.kind = Match::Kind::kBadPath;
      match.error = value.error();
      return match;
    }
    match.path_params[name] = std::move(*value);
  }
  match.kind = Match::Kind::kFound;
  return match;
}

}  // namespace custody::http
