#include "custodian/api.h"

#include <mutex>
#include <optional>
#include <unordered_map>

#include "custodian/admin_requests.h"
#include "http/run_blocking.h"

namespace custody::custodian {
namespace {

using http::Access;
using http::Principal;
using http::Request;
using http::Response;

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

Response Answer(const Result<nlohmann::json>& r, int ok_status = 200) {
  if (!r) return Response::FromStatus(r.error());
  return Response::Json(ok_status, *r);
}

Response Answer(const Status& s) {
  if (!s.ok()) return Response::FromStatus(s);
  return Response::Json(200, {{"ok", true}});
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
  r.AddAsync(
      "GET", "/v1/events", Access::kDevice,
      [this](const Request& req, const Principal& p) -> http::asio::awaitable<Response> {
        Result<uint64_t> after = QueryUint(req.query, "after", 0, UINT64_MAX);
        Result<uint64_t> wait = QueryUint(req.query, "wait_ms", options_.default_poll_wait.count(),
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
          Result<protocol::EventsResponse> events =
              co_await http::RunBlocking(*pool_, [&] { return service_.Events(device, *after); });
          if (events && events->events.empty()) {
            cache_->MarkClean(device, *after, read_began);
          }
          co_return events;
        };
        const http::LongPollHub::Sequence since = hub_.Now();
        Result<protocol::EventsResponse> events = co_await read();
        if (events && events->events.empty() && *wait > 0) {
          const bool woken = co_await hub_.Wait(device, std::chrono::milliseconds(*wait), since);
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
          Result<std::optional<ExtensionStatus>> status = ParseExtensionStatusFilter(req.query);
          if (!status) return Response::FromStatus(status.error());
          return Answer(svc.ListExtensions(*status));
        });
  // The audit trail as JSON lines (protocol/audit.h), from `after`, at most `limit` entries.
  r.Add("GET", "/v1/admin/audit", Access::kViewer, [this](const Request& req, const Principal&) {
    Result<uint64_t> after = QueryUint(req.query, "after", 0, UINT64_MAX);
    Result<uint64_t> limit = QueryUint(req.query, "limit", 1000, 10000);
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
          Result<EnrollmentTokenSpec> spec = ParseEnrollmentTokenRequest(req.body);
          if (!spec) return Response::FromStatus(spec.error());
          return Answer(svc.CreateEnrollmentToken(ActorOf(p), spec->group, spec->ttl), 201);
        });
  r.Add("POST", "/v1/admin/licences", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          Result<LicenceSpec> spec = ParseLicenceRequest(req.body);
          if (!spec) return Response::FromStatus(spec.error());
          return Answer(svc.CreateLicence(ActorOf(p), *spec), 201);
        });
  r.Add(
      "POST", "/v1/admin/extensions/{request_id}/approve", Access::kOperator,
      [&svc](const Request& req, const Principal& p) {
        Result<uint64_t> granted = ParseExtensionApproval(req.body);
        if (!granted) return Response::FromStatus(granted.error());
        return Answer(svc.ApproveExtension(ActorOf(p), req.path_params.at("request_id"), *granted));
      });
  r.Add("POST", "/v1/admin/extensions/{request_id}/deny", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          Result<std::string> reason = ParseExtensionDenial(req.body);
          if (!reason) return Response::FromStatus(reason.error());
          return Answer(svc.DenyExtension(ActorOf(p), req.path_params.at("request_id"), *reason));
        });
  r.Add("POST", "/v1/admin/revocations", Access::kOperator,
        [&svc](const Request& req, const Principal& p) {
          Result<RevocationSpec> spec = ParseRevocationRequest(req.body);
          if (!spec) return Response::FromStatus(spec.error());
          return Answer(svc.Revoke(ActorOf(p), spec->scope, spec->id, spec->reason));
        });

  // ----- admin: configuration (admin) ---------------------------------------------------------
  r.Add("POST", "/v1/admin/models", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    Result<ModelRegistration> m = ParseModelRegistration(req.body);
    if (!m) return Response::FromStatus(m.error());
    return Answer(svc.RegisterModel(ActorOf(p), std::move(m).value()), 201);
  });
  r.Add("POST", "/v1/admin/models/{model_id}/retire", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          Result<std::string> reason = ParseModelRetirement(req.body);
          if (!reason) return Response::FromStatus(reason.error());
          return Answer(svc.RetireModel(ActorOf(p), req.path_params.at("model_id"), *reason));
        });
  r.Add("POST", "/v1/admin/groups", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    Result<GroupSpec> spec = ParseGroupRequest(req.body);
    if (!spec) return Response::FromStatus(spec.error());
    return Answer(svc.CreateGroup(ActorOf(p), *spec), 201);
  });
  r.Add("POST", "/v1/admin/groups/{group}/golden-sets", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          Result<GoldenSetSpec> spec = ParseGoldenSetRequest(req.body);
          if (!spec) return Response::FromStatus(spec.error());
          return Answer(
              svc.AddGoldenSet(ActorOf(p), req.path_params.at("group"), spec->name, spec->pcrs),
              201);
        });
  r.Add("GET", "/v1/admin/tokens", Access::kAdmin,
        [&svc](const Request&, const Principal&) { return Answer(svc.ListTokens()); });
  r.Add("POST", "/v1/admin/tokens", Access::kAdmin, [&svc](const Request& req, const Principal& p) {
    Result<TokenSpec> spec = ParseTokenRequest(req.body);
    if (!spec) return Response::FromStatus(spec.error());
    return Answer(svc.CreateToken(ActorOf(p), spec->name, spec->role), 201);
  });
  r.Add("POST", "/v1/admin/tokens/{token_id}/revoke", Access::kAdmin,
        [&svc](const Request& req, const Principal& p) {
          return Answer(svc.RevokeToken(ActorOf(p), req.path_params.at("token_id")));
        });
  return r;
}

}  // namespace custody::custodian
