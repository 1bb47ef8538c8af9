#include "custodian/api.h"

#include <charconv>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "core/format/sealed.h"
#include "core/protocol/json.h"
#include "custodian/http/run_blocking.h"

namespace custody::custodian {
namespace {

using http::Access;
using http::Principal;
using http::Request;
using http::Response;
using protocol::JsonObject;

constexpr size_t kMaxAdminBody = 64 * 1024;

Actor ActorOf(const Principal& p) {
  switch (p.kind) {
    case Principal::Kind::kToken:
      return Actor{"token", p.id, p.name};
    case Principal::Kind::kDevice:
      return Actor{"device", p.id, p.id};
    case Principal::Kind::kAnonymous:
      break;
  }
  return Actor{"anonymous", "", ""};
}

http::Role ToHttpRole(Role r) {
  switch (r) {
    case Role::kAdmin:
      return http::Role::kAdmin;
    case Role::kOperator:
      return http::Role::kOperator;
    case Role::kViewer:
      break;
  }
  return http::Role::kViewer;
}

Result<Role> ParseRole(std::string_view name) {
  if (name == "admin") return Role::kAdmin;
  if (name == "operator") return Role::kOperator;
  if (name == "viewer") return Role::kViewer;
  return InvalidArgument("field 'role': expected admin, operator or viewer");
}

Response Answer(const Result<nlohmann::json>& r, int ok_status = 200) {
  if (!r) return Response::FromStatus(r.error());
  return Response::Json(ok_status, *r);
}

Response Answer(const Status& s) {
  if (!s.ok()) return Response::FromStatus(s);
  return Response::Json(200, {{"ok", true}});
}

// Parses the body of an admin request and runs `fn` on it.
template <typename Fn>
Response WithBody(const Request& req, std::string_view what, Fn&& fn) {
  Result<nlohmann::json> body = protocol::ParseJsonObject(req.body, kMaxAdminBody, what);
  if (!body) return Response::FromStatus(body.error());
  return fn(JsonObject(*body, ""));
}

Result<TimePoint> ParseTime(const JsonObject& o, std::string_view key) {
  CUSTODY_ASSIGN_OR_RETURN(std::string text, o.String(key, 32));
  Result<std::chrono::sys_seconds> t = format::ParseTimestamp(text);
  if (!t) {
    return o.FieldError(key,
                        "expected a date (YYYY-MM-DD) or RFC 3339 UTC time "
                        "(YYYY-MM-DDTHH:MM:SSZ)");
  }
  return *t;
}

Result<uint64_t> QueryUint(const Request& req, const std::string& key, uint64_t fallback,
                           uint64_t max) {
  auto it = req.query.find(key);
  if (it == req.query.end()) return fallback;
  uint64_t v = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v > max) {
    return InvalidArgument("query parameter '" + key + "' must be an integer from 0 to " +
                           std::to_string(max));
  }
  return v;
}

}  // namespace

// Which devices have had no event since we last looked, so that a heartbeat (a poll with
// nothing new) costs no database read. Entries are "clean" after a read found nothing newer
// than `after`, and become dirty on every notification for the device.
// Remembers, per device, that the database holds no event after a given sequence, so an idle
// heartbeat costs no database read. A notification between a read and MarkClean must win: each
// MarkDirty bumps a generation and MarkClean is ignored if the device was dirtied after the read
// began.
struct Api::EventCache {
  struct Entry {
    std::optional<uint64_t> clean_after;
    uint64_t dirtied = 0;
  };
  std::mutex mu;
  uint64_t generation = 0;
  std::unordered_map<std::string, Entry> devices;

  bool NothingAfter(const std::string& device, uint64_t after) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = devices.find(device);
    return it != devices.end() && it->second.clean_after && after >= *it->second.clean_after;
  }
  uint64_t Generation() {
    std::lock_guard<std::mutex> lock(mu);
    return generation;
  }
  void MarkClean(const std::string& device, uint64_t last, uint64_t read_began) {
    std::lock_guard<std::mutex> lock(mu);
    Entry& e = devices[device];
    if (e.dirtied <= read_began) e.clean_after = last;
  }
  void MarkDirty(const std::string& device) {
    std::lock_guard<std::mutex> lock(mu);
    Entry& e = devices[device];
    e.dirtied = ++generation;
    e.clean_after.reset();
  }
};

Api::Api(CustodianService& service, Store& store, const http::Metrics* metrics, ApiOptions options)
    : service_(service),
      store_(store),
      metrics_(metrics),
      options_(options),
      cache_(std::make_unique<EventCache>()),
      pool_(std::make_unique<http::asio::thread_pool>(options.event_threads)) {
  service_.set_on_event([this](const std::string& device_id) {
    cache_->MarkDirty(device_id);
    hub_.Notify(device_id);
  });
}

Api::~Api() {
  service_.set_on_event(nullptr);
  hub_.Shutdown();
  pool_->join();
}

http::TokenAuthenticator Api::Authenticator() {
  return [this](std::string_view token) -> Result<Principal> {
    CUSTODY_ASSIGN_OR_RETURN(ApiToken t, service_.Authenticate(token));
    Principal p;
    p.kind = Principal::Kind::kToken;
    p.id = t.id;
    p.name = t.name;
    p.role = ToHttpRole(t.role);
    return p;
  };
}

http::Router Api::BuildRouter() {
  http::Router r;
  CustodianService& svc = service_;

  // ----- health and metrics ---------------------------------------------------------------------
  r.Add("GET", "/healthz", Access::kPublic, [](const Request&, const Principal&) {
    return Response::Json(200, {{"status", "ok"}});
  });
  r.Add("GET", "/readyz", Access::kPublic, [this](const Request&, const Principal&) {
    Status ping = store_.Ping();
    if (!ping.ok()) return Response::FromStatus(Unavailable("database: " + ping.message()));
    return Response::Json(200, {{"status", "ready"}});
  });
  if (metrics_ != nullptr)
    r.Add("GET", "/metrics", Access::kViewer, http::MetricsHandler(*metrics_));

  // ----- enrollment (no client certificate yet) ------------------------------------------------
  r.Add("POST", "/v1/enroll/begin", Access::kPublic, [&svc](const Request& req, const Principal&) {
    Result<protocol::EnrollBeginRequest> m = protocol::ParseEnrollBeginRequest(req.body);
    if (!m) return Response::FromStatus(m.error());
    Result<protocol::EnrollBeginResponse> out = svc.EnrollBegin(*m);
    if (!out) return Response::FromStatus(out.error());
    return Response::Json(200, protocol::ToJson(*out));
  });
  r.Add(
      "POST", "/v1/enroll/complete", Access::kPublic, [&svc](const Request& req, const Principal&) {
        Result<protocol::EnrollCompleteRequest> m = protocol::ParseEnrollCompleteRequest(req.body);
        if (!m) return Response::FromStatus(m.error());
        Result<protocol::EnrollCompleteResponse> out = svc.EnrollComplete(*m);
        if (!out) return Response::FromStatus(out.error());
        return Response::Json(200, protocol::ToJson(*out));
      });

  // ----- devices (mutual TLS) -------------------------------------------------------------------
  r.Add("POST", "/v1/nonce", Access::kDevice, [&svc](const Request&, const Principal& p) {
    Result<protocol::NonceResponse> out = svc.IssueNonce(p.id);
    if (!out) return Response::FromStatus(out.error());
    return Response::Json(200, protocol::ToJson(*out));
  });
  r.Add("POST", "/v1/attest", Access::kDevice, [&svc](const Request& req, const Principal& p) {
    Result<protocol::AttestRequest> m = protocol::ParseAttestRequest(req.body);
    if (!m) return Response::FromStatus(m.error());
    Result<protocol::AttestResponse> out = svc.Attest(p.id, *m);
    if (!out) return Response::FromStatus(out.error());
    return Response::Json(200, protocol::ToJson(*out));
  });
  r.Add("POST", "/v1/usage", Access::kDevice, [&svc](const Request& req, const Principal& p) {
    Result<protocol::UsageRequest> m = protocol::ParseUsageRequest(req.body);
    if (!m) return Response::FromStatus(m.error());
    return Answer(svc.ReportUsage(p.id, *m));
  });
  r.Add("POST", "/v1/extensions", Access::kDevice, [&svc](const Request& req, const Principal& p) {
    Result<protocol::ExtensionRequestMessage> m = protocol::ParseExtensionRequest(req.body);
    if (!m) return Response::FromStatus(m.error());
    return Answer(svc.RequestExtension(p.id, *m));
  });
  // The long-poll: answers at once when there are events after `after`, else when one arrives
  // or `wait_ms` passes. wait_ms=0 is a plain heartbeat.
  r.AddAsync("GET", "/v1/events", Access::kDevice,
             [this](const Request& req, const Principal& p) -> http::asio::awaitable<Response> {
               Result<uint64_t> after = QueryUint(req, "after", 0, UINT64_MAX);
               Result<uint64_t> wait = QueryUint(req, "wait_ms", options_.default_poll_wait.count(),
                                                 options_.max_poll_wait.count());
               if (!after) co_return Response::FromStatus(after.error());
               if (!wait) co_return Response::FromStatus(wait.error());
               const std::string device = p.id;
               auto read = [&]() -> http::asio::awaitable<Result<protocol::EventsResponse>> {
                 if (cache_->NothingAfter(device, *after)) {
                   co_return protocol::EventsResponse{{}, *after};
                 }
                 // Database reads run on the event pool, never on an I/O thread.
                 const uint64_t read_began = cache_->Generation();
                 Result<protocol::EventsResponse> events = co_await http::RunBlocking(
                     *pool_, [&] { return service_.Events(device, *after); });
                 if (events && events->events.empty()) {
                   cache_->MarkClean(device, *after, read_began);
                 }
                 co_return events;
               };
               const http::LongPollHub::Sequence since = hub_.Now();
               Result<protocol::EventsResponse> events = co_await read();
               if (events && events->events.empty() && *wait > 0) {
                 const bool woken =
                     co_await hub_.Wait(device, std::chrono::milliseconds(*wait), since);
                 if (woken) events = co_await read();
               }
               if (!events) co_return Response::FromStatus(events.error());
               co_return Response::Json(200, protocol::ToJson(*events));
             });

  // ----- admin: reads (viewer) ------------------------------------------------------------------
  r.Add("GET", "/v1/admin/models", Access::kViewer,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListModels()); });
  r.Add("GET", "/v1/admin/groups", Access::kViewer,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListGroups()); });
  r.Add("GET", "/v1/admin/devices", Access::kViewer,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListDevices()); });
  r.Add("GET", "/v1/admin/devices/{device_id}", Access::kViewer,
        [&svc](const Request& req, const Principal&) {
          return Answer(svc.GetDevice(req.path_params.at("device_id")));
        });
  r.Add("GET", "/v1/admin/licences", Access::kViewer,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListLicences()); });
  r.Add("GET", "/v1/admin/extensions", Access::kViewer,
        [&svc](const Request& req, const Principal&) {
          std::optional<ExtensionStatus> status;
          auto it = req.query.find("status");
          if (it != req.query.end()) {
            if (it->second == "pending") {
              status = ExtensionStatus::kPending;
            } else if (it->second == "approved") {
              status = ExtensionStatus::kApproved;
            } else if (it->second == "denied") {
              status = ExtensionStatus::kDenied;
            } else {
              return Response::FromStatus(
                  InvalidArgument("query parameter 'status' must be pending, approved or denied"));
            }
          }
          return Answer(svc.ListExtensions(status));
        });
  // The audit trail as JSON lines (protocol/audit.h), from `after`, at most `limit` entries.
  r.Add("GET", "/v1/admin/audit", Access::kViewer, [this](const Request& req, const Principal&) {
    Result<uint64_t> after = QueryUint(req, "after", 0, UINT64_MAX);
    Result<uint64_t> limit = QueryUint(req, "limit", 1000, 10000);
    if (!after) return Response::FromStatus(after.error());
    if (!limit) return Response::FromStatus(limit.error());
    Result<std::vector<protocol::AuditEntry>> entries =
        store_.AuditAfter(*after, static_cast<size_t>(*limit));
    if (!entries) return Response::FromStatus(entries.error());
    Response out;
    out.content_type = "application/x-ndjson";
    for (const protocol::AuditEntry& e : *entries) {
      out.body += protocol::AuditEntryToJsonLine(e);
      out.body += '\n';
    }
    return out;
  });

  // ----- admin: operations (operator) ---------------------------------------------------------
  r.Add("POST", "/v1/admin/enrollment-tokens", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          return WithBody(req, "enrollment token request", [&](const JsonObject& o) {
            Status known = o.RejectUnknown({"group", "ttl_seconds"});
            if (!known.ok()) return Response::FromStatus(known);
            Result<std::string> group = o.String("group", 64);
            Result<std::optional<uint64_t>> ttl = o.OptionalUint("ttl_seconds", 30 * 24 * 3600);
            if (!group) return Response::FromStatus(group.error());
            if (!ttl) return Response::FromStatus(ttl.error());
            return Answer(svc.CreateEnrollmentToken(ActorOf(p), *group,
                                                    std::chrono::seconds(ttl->value_or(24 * 3600))),
                          201);
          });
        });
  r.Add(
      "POST", "/v1/admin/licences", Access::kOperator,
      [&svc](const Request& req, const Principal& p) {
        return WithBody(req, "licence", [&](const JsonObject& o) -> Response {
          Status known = o.RejectUnknown({"model_id", "device_id", "group", "budget", "not_after",
                                          "offline_grace_seconds", "extension"});
          if (!known.ok()) return Response::FromStatus(known);
          LicenceSpec spec;
          auto fill = [&]() -> Status {
            CUSTODY_ASSIGN_OR_RETURN(spec.model_id, o.String("model_id", 64));
            CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> device,
                                     o.OptionalString("device_id", 64));
            CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> group,
                                     o.OptionalString("group", 64));
            spec.device_id = device.value_or("");
            spec.group = group.value_or("");
            CUSTODY_ASSIGN_OR_RETURN(spec.budget, o.Uint("budget", uint64_t{1} << 48));
            CUSTODY_ASSIGN_OR_RETURN(spec.not_after, ParseTime(o, "not_after"));
            CUSTODY_ASSIGN_OR_RETURN(uint64_t grace,
                                     o.Uint("offline_grace_seconds", 365ull * 24 * 3600));
            spec.offline_grace_ms = grace * 1000;
            CUSTODY_ASSIGN_OR_RETURN(std::optional<JsonObject> ext, o.OptionalObject("extension"));
            if (ext) {
              CUSTODY_RETURN_IF_ERROR(
                  ext->RejectUnknown({"manual", "auto_approve_up_to", "period_seconds"}));
              if (ext->Has("manual")) {
                CUSTODY_ASSIGN_OR_RETURN(spec.extension.manual, ext->Bool("manual"));
              }
              CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> up_to,
                                       ext->OptionalUint("auto_approve_up_to", uint64_t{1} << 48));
              CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> period,
                                       ext->OptionalUint("period_seconds", 366ull * 24 * 3600));
              spec.extension.auto_approve_up_to = up_to.value_or(0);
              spec.extension.period_seconds = period.value_or(0);
              if (!ext->Has("manual")) spec.extension.manual = !up_to.has_value();
            }
            return OkStatus();
          };
          Status filled = fill();
          if (!filled.ok()) return Response::FromStatus(filled);
          return Answer(svc.CreateLicence(ActorOf(p), spec), 201);
        });
      });
  r.Add(
      "POST", "/v1/admin/extensions/{request_id}/approve", Access::kOperator,
      [&svc](const Request& req, const Principal& p) {
        uint64_t granted = 0;
        if (!req.body.empty()) {
          Result<nlohmann::json> body =
              protocol::ParseJsonObject(req.body, kMaxAdminBody, "approval");
          if (!body) return Response::FromStatus(body.error());
          JsonObject o(*body, "");
          Status known = o.RejectUnknown({"granted"});
          if (!known.ok()) return Response::FromStatus(known);
          Result<std::optional<uint64_t>> g = o.OptionalUint("granted", uint64_t{1} << 40);
          if (!g) return Response::FromStatus(g.error());
          granted = g->value_or(0);
        }
        return Answer(svc.ApproveExtension(ActorOf(p), req.path_params.at("request_id"), granted));
      });
  r.Add("POST", "/v1/admin/extensions/{request_id}/deny", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          return WithBody(req, "denial", [&](const JsonObject& o) {
            Status known = o.RejectUnknown({"reason"});
            if (!known.ok()) return Response::FromStatus(known);
            Result<std::string> reason = o.String("reason", 512);
            if (!reason) return Response::FromStatus(reason.error());
            return Answer(svc.DenyExtension(ActorOf(p), req.path_params.at("request_id"), *reason));
          });
        });
  r.Add("POST", "/v1/admin/revocations", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          return WithBody(req, "revocation", [&](const JsonObject& o) {
            Status known = o.RejectUnknown({"scope", "id", "reason"});
            if (!known.ok()) return Response::FromStatus(known);
            Result<std::string> scope = o.String("scope", 16);
            Result<std::string> id = o.String("id", 64);
            Result<std::string> reason = o.String("reason", 512);
            for (const Status& s : {scope.status(), id.status(), reason.status()}) {
              if (!s.ok()) return Response::FromStatus(s);
            }
            return Answer(svc.Revoke(ActorOf(p), *scope, *id, *reason));
          });
        });

  // ----- admin: configuration (admin) ---------------------------------------------------------
  r.Add("POST", "/v1/admin/models", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    return WithBody(req, "model registration", [&](const JsonObject& o) -> Response {
      Status known = o.RejectUnknown({"model_id", "name", "version", "dek", "sealed_sha256"});
      if (!known.ok()) return Response::FromStatus(known);
      ModelRegistration m;
      auto fill = [&]() -> Status {
        CUSTODY_ASSIGN_OR_RETURN(m.model_id, o.String("model_id", 32));
        CUSTODY_ASSIGN_OR_RETURN(m.name, o.String("name", 128));
        CUSTODY_ASSIGN_OR_RETURN(m.version, o.String("version", 64));
        CUSTODY_ASSIGN_OR_RETURN(Bytes dek, o.Hex("dek", format::kDekBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.dek, SecretBuffer::CopyFrom(dek));
        SecureWipe(dek.data(), dek.size());
        CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> sha,
                                 o.OptionalString("sealed_sha256", 64));
        m.sealed_sha256 = sha.value_or("");
        return OkStatus();
      };
      Status filled = fill();
      if (!filled.ok()) return Response::FromStatus(filled);
      return Answer(svc.RegisterModel(ActorOf(p), std::move(m)), 201);
    });
  });
  r.Add("POST", "/v1/admin/models/{model_id}/retire", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          std::string reason = "retired";
          if (!req.body.empty()) {
            Result<nlohmann::json> body =
                protocol::ParseJsonObject(req.body, kMaxAdminBody, "retirement");
            if (!body) return Response::FromStatus(body.error());
            JsonObject o(*body, "");
            Status known = o.RejectUnknown({"reason"});
            if (!known.ok()) return Response::FromStatus(known);
            Result<std::string> r2 = o.String("reason", 512);
            if (!r2) return Response::FromStatus(r2.error());
            reason = *r2;
          }
          return Answer(svc.RetireModel(ActorOf(p), req.path_params.at("model_id"), reason));
        });
  r.Add("POST", "/v1/admin/groups", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    return WithBody(req, "group", [&](const JsonObject& o) -> Response {
      Status known = o.RejectUnknown({"name", "pcrs", "allow_tofu", "require_ek_certificate"});
      if (!known.ok()) return Response::FromStatus(known);
      GroupSpec spec;
      auto fill = [&]() -> Status {
        CUSTODY_ASSIGN_OR_RETURN(spec.name, o.String("name", 64));
        CUSTODY_ASSIGN_OR_RETURN(std::vector<uint64_t> pcrs, o.Uints("pcrs", 24, 23));
        spec.pcrs.assign(pcrs.begin(), pcrs.end());
        if (o.Has("allow_tofu")) {
          CUSTODY_ASSIGN_OR_RETURN(spec.allow_tofu, o.Bool("allow_tofu"));
        }
        if (o.Has("require_ek_certificate")) {
          CUSTODY_ASSIGN_OR_RETURN(spec.require_ek_certificate, o.Bool("require_ek_certificate"));
        }
        return OkStatus();
      };
      Status filled = fill();
      if (!filled.ok()) return Response::FromStatus(filled);
      return Answer(svc.CreateGroup(ActorOf(p), spec), 201);
    });
  });
  r.Add("POST", "/v1/admin/groups/{group}/golden-sets", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          return WithBody(req, "golden set", [&](const JsonObject& o) -> Response {
            Status known = o.RejectUnknown({"name", "pcrs"});
            if (!known.ok()) return Response::FromStatus(known);
            Result<std::string> name = o.String("name", 64);
            if (!name) return Response::FromStatus(name.error());
            Result<tpm::PcrValues> pcrs = protocol::PcrValuesFromJson(o, "pcrs");
            if (!pcrs) return Response::FromStatus(pcrs.error());
            return Answer(svc.AddGoldenSet(ActorOf(p), req.path_params.at("group"), *name, *pcrs),
                          201);
          });
        });
  r.Add("GET", "/v1/admin/tokens", Access::kAdmin,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListTokens()); });
  r.Add("POST", "/v1/admin/tokens", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    return WithBody(req, "token request", [&](const JsonObject& o) {
      Status known = o.RejectUnknown({"name", "role"});
      if (!known.ok()) return Response::FromStatus(known);
      Result<std::string> name = o.String("name", 64);
      Result<std::string> role_name = o.String("role", 16);
      if (!name) return Response::FromStatus(name.error());
      if (!role_name) return Response::FromStatus(role_name.error());
      Result<Role> role = ParseRole(*role_name);
      if (!role) return Response::FromStatus(role.error());
      return Answer(svc.CreateToken(ActorOf(p), *name, *role), 201);
    });
  });
  r.Add("POST", "/v1/admin/tokens/{token_id}/revoke", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          return Answer(svc.RevokeToken(ActorOf(p), req.path_params.at("token_id")));
        });
  return r;
}

}  // namespace custody::custodian
