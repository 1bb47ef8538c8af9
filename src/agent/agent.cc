#include "agent/agent.h"

#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>

#include "agent/custodian_link.h"
#include "agent/inference_api.h"
#include "agent/lease_manager.h"
#include "agent/local_server.h"
#include "agent/meter.h"
#include "agent/models.h"
#include "agent/shared_tpm.h"
#include "agent/state.h"
#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/format/sealed.h"
#include "http/client.h"

namespace custody::agent {
namespace {

using http::Client;
using http::ClientOptions;
using http::ClientResponse;

constexpr std::string_view kVersion = "0.1.0";

Result<Bytes> SubjectPublicKeyInfo(const crypto::P256PrivateKey& key) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key.get(), &der);
  if (len <= 0) return Internal("i2d_PUBKEY failed");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

Result<std::string> ReadText(const std::string& path, std::string_view what) {
  Result<Bytes> bytes = ReadFile(path, 1 << 20);
  if (!bytes) return bytes.error().WithContext(std::string(what));
  return std::string(AsChars(*bytes));
}

// The custodian's refusal as a Status (its error body names what was wrong).
Status CustodianAnswer(const Result<ClientResponse>& r, std::string_view what) {
  if (!r) return r.error().WithContext(what);
  if (r->status / 100 == 2) return OkStatus();
  std::string message = r->body.substr(0, 500);
  Result<nlohmann::json> j = r->Json(1 << 20);
  if (j && j->contains("error") && (*j)["error"].is_object() &&
      (*j)["error"].value("message", "") != "") {
    message = (*j)["error"]["message"].get<std::string>();
  }
  const StatusCode code = r->status == 401 || r->status == 403 ? StatusCode::kPermissionDenied
                          : r->status == 409                   ? StatusCode::kFailedPrecondition
                          : r->status / 100 == 4               ? StatusCode::kInvalidArgument
                                                               : StatusCode::kUnavailable;
  return Status(code, std::string(what) + ": the custodian answered HTTP " +
                          std::to_string(r->status) + ": " + message);
}

ClientOptions CustodianClientOptions(const AgentConfig& config, std::string ca_pem) {
  ClientOptions o;
  o.host = config.custodian.host;
  o.port = config.custodian.port;
  o.ca_pem = std::move(ca_pem);
  o.expected_name = config.custodian.server_name;
  o.connect_timeout = std::chrono::seconds(10);
  o.request_timeout = std::chrono::seconds(30);
  return o;
}

}  // namespace

// ----- enrollment ---------------------------------------------------------------------------

Result<std::string> Enroll(const AgentConfig& config, const EnrollOptions& options, Logger& log) {
  if (options.token.empty()) return InvalidArgument("an enrollment token is required (--token)");
  if (config.custodian.ca_file.empty()) {
    return InvalidArgument(
        "config key 'custodian.ca' is required to enroll: the custodian's CA certificate, which "
        "the vendor ships with the device (it is pinned from then on)");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string ca_pem, ReadText(config.custodian.ca_file, "custodian.ca"));
  CUSTODY_ASSIGN_OR_RETURN(StateDir dir, StateDir::Create(config.state_dir));
  // A journal without an identity is left by an enrollment that did not finish.
  if (PathExists(dir.journal_path())) unlink(dir.journal_path().c_str());
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> opened, tpm::Tpm::Open(config.tcti));
  SharedTpm tpm(std::move(opened));
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<Client> client,
                           Client::Create(CustodianClientOptions(config, ca_pem)));

  CUSTODY_ASSIGN_OR_RETURN(EnrollmentInProgress e, tpm.Run(TpmOp::kEnroll, [&](tpm::Tpm& t) {
    return BeginEnrollment(t, options.token, tpm::EkType::kEcc, tpm::kDefaultCounterIndex,
                           config.metering.unit);
  }));
  Result<ClientResponse> begun = client->PostJson("/v1/enroll/begin", protocol::ToJson(e.request));
  CUSTODY_RETURN_IF_ERROR(CustodianAnswer(begun, "enrollment (round 1)"));
  CUSTODY_ASSIGN_OR_RETURN(protocol::EnrollBeginResponse challenge,
                           protocol::ParseEnrollBeginResponse(begun->body));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey tls_key, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(Bytes spki, SubjectPublicKeyInfo(tls_key));
  CUSTODY_ASSIGN_OR_RETURN(protocol::EnrollCompleteRequest complete,
                           tpm.Run(TpmOp::kEnroll, [&](tpm::Tpm& t) {
                             return ContinueEnrollment(t, e, challenge, spki);
                           }));
  Result<ClientResponse> done = client->PostJson("/v1/enroll/complete", protocol::ToJson(complete));
  CUSTODY_RETURN_IF_ERROR(CustodianAnswer(done, "enrollment (round 2)"));
  CUSTODY_ASSIGN_OR_RETURN(protocol::EnrollCompleteResponse result,
                           protocol::ParseEnrollCompleteResponse(done->body));
  CUSTODY_RETURN_IF_ERROR(FinishEnrollment(e, result));

  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer tls_pem, tls_key.ToPem());
  CUSTODY_ASSIGN_OR_RETURN(SealedTlsKey sealed_tls, tpm.Run(TpmOp::kEnroll, [&](tpm::Tpm& t) {
    return SealTlsKey(t, e.identity.device_id, tls_pem.span());
  }));
  CUSTODY_RETURN_IF_ERROR(dir.SaveTlsKey(sealed_tls));
  CUSTODY_RETURN_IF_ERROR(Meter::CreateJournal(dir.journal_path(), tpm, e.identity));
  // Last: the identity is what makes the directory an enrolled device.
  CUSTODY_RETURN_IF_ERROR(dir.SaveIdentity(e.identity));
  log.Info("enrolled", {{"device_id", e.identity.device_id},
                        {"counter_unit", e.identity.counter_unit},
                        {"state_dir", config.state_dir}});
  return e.identity.device_id;
}

Result<std::vector<AppToken>> LoadAppTokens(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(std::string text, ReadText(path, "serve.tokens_file"));
  std::vector<AppToken> out;
  size_t line_no = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.find(' ');
    const std::string where = path + ":" + std::to_string(line_no);
    if (space == std::string::npos) {
      return InvalidArgument(where + ": expected 'NAME SHA256-HEX-OF-TOKEN'");
    }
    AppToken t;
    t.name = line.substr(0, space);
    Result<Bytes> hash = HexDecode(line.substr(space + 1));
    if (t.name.empty() || t.name.size() > 64 || !hash || hash->size() != 32) {
      return InvalidArgument(where +
                             ": expected a name (1-64 characters) and the 64 hex digits "
                             "of the token's SHA-256 (printf %s TOKEN | sha256sum)");
    }
    for (char c : t.name) {
      if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
        return InvalidArgument(where + ": token names are [A-Za-z0-9_.-]");
      }
    }
    t.sha256 = std::move(hash).value();
    out.push_back(std::move(t));
  }
  return out;
}

// ----- the running agent ----------------------------------------------------------------------

struct Agent::Parts {
  AgentConfig config;
  HardeningReport hardening;
  Logger* log = nullptr;
  std::optional<StateDir> dir;
  DeviceIdentity identity;
  std::unique_ptr<SharedTpm> tpm;
  std::unique_ptr<Meter> meter;
  std::unique_ptr<ModelCatalog> catalog;
  std::unique_ptr<PersistentState> state;
  std::unique_ptr<LeaseManager> leases;
  std::unique_ptr<InferenceApi> api;
  std::vector<AppToken> tokens;
  std::unique_ptr<LocalServer> server;
  std::unique_ptr<CustodianLink> link;
  std::mutex stop_mu;
  bool stopped = false;
  mutable std::mutex seccomp_mu;
  std::string seccomp = "not installed yet";

  Result<std::string> Authorize(const PeerCredentials& peer, const LocalRequest& request) const;
};

Result<std::string> Agent::Parts::Authorize(const PeerCredentials& peer,
                                            const LocalRequest& request) const {
  std::optional<std::string> app;
  if (std::optional<std::string_view> auth = request.Header("Authorization")) {
    constexpr std::string_view kBearer = "Bearer ";
    if (tokens.empty() || auth->substr(0, kBearer.size()) != kBearer) {
      return Unauthenticated(tokens.empty()
                                 ? "this agent has no application tokens configured; send no "
                                   "Authorization header"
                                 : "expected 'Authorization: Bearer <application token>'");
    }
    Result<crypto::Sha256Digest> hash = crypto::Sha256(AsBytes(auth->substr(kBearer.size())));
    if (!hash) return Internal("hash: " + hash.error().message());
    for (const AppToken& t : tokens) {
      if (ConstantTimeEquals(*hash, t.sha256)) app = t.name;
    }
    if (!app) return Unauthenticated("unknown application token");
  }
  if (!peer.unix_socket) {
    if (!app)
      return Unauthenticated("the TCP listener serves only callers with an application token");
    return "app:" + *app;
  }
  if (!peer.uid) return PermissionDenied("the caller's credentials are unknown");
  const uid_t uid = *peer.uid;
  const bool allowed =
      uid == geteuid() ||
      std::find(config.serve.allow_uids.begin(), config.serve.allow_uids.end(), uid) !=
          config.serve.allow_uids.end() ||
      (peer.gid && std::find(config.serve.allow_gids.begin(), config.serve.allow_gids.end(),
                             *peer.gid) != config.serve.allow_gids.end());
  if (!allowed) {
    return PermissionDenied("uid " + std::to_string(uid) +
                            " may not use this agent (add it to serve.allow_uids, or its group to "
                            "serve.allow_gids)");
  }
  if (config.serve.require_token && !app) {
    return Unauthenticated(
        "this agent requires an application token: send 'Authorization: "
        "Bearer <token>'");
  }
  return app ? "app:" + *app : "uid:" + std::to_string(uid);
}

namespace {

nlohmann::json DescribeAgent(const Agent::Parts& p) {
  const uint64_t position = p.meter->position();
  nlohmann::json out = p.leases->Describe(position);
  out["agent"] = {{"version", kVersion},
                  {"device_id", p.identity.device_id},
                  {"socket", p.config.serve.socket}};
  out["metering"] = {{"tpm_counter", p.meter->counter()},
                     {"unit", p.meter->unit()},
                     {"position", position},
                     {"journal", p.dir->journal_path()},
                     {"anomaly", p.meter->anomaly()}};
  const HardeningReport& h = p.hardening;
  std::string seccomp;
  {
    std::lock_guard lock(p.seccomp_mu);
    seccomp = p.seccomp;
  }
  out["process_protection"] = {{"non_dumpable", h.non_dumpable},
                               {"core_dumps_off", h.core_limit_zero},
                               {"memory_locked", h.memory_locked},
                               {"no_new_privileges", h.no_new_privs},
                               {"seccomp", seccomp},
                               {"summary", h.ToString()}};
  out["custodian"] = p.link->Describe();
  nlohmann::json ops = nlohmann::json::object();
  for (size_t i = 0; i < kTpmOpNames.size(); ++i) {
    ops[std::string(kTpmOpNames[i])] = p.tpm->count(static_cast<TpmOp>(i));
  }
  out["tpm_operations"] = std::move(ops);
  return out;
}

}  // namespace

Agent::Agent(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

Agent::~Agent() { Stop(std::chrono::milliseconds(0)); }

Result<std::unique_ptr<Agent>> Agent::Start(const AgentConfig& config,
                                            const HardeningReport& hardening, Logger& log) {
  auto p = std::make_unique<Parts>();
  p->config = config;
  p->hardening = hardening;
  p->log = &log;
  CUSTODY_ASSIGN_OR_RETURN(StateDir dir, StateDir::Open(config.state_dir));
  p->dir.emplace(std::move(dir));
  CUSTODY_ASSIGN_OR_RETURN(p->identity, p->dir->LoadIdentity());
  if (p->identity.counter_unit != config.metering.unit) {
    log.Warn("metering.unit differs from the unit fixed at enrollment; the enrolled one is used",
             {{"configured", config.metering.unit}, {"enrolled", p->identity.counter_unit}});
  }
  CUSTODY_ASSIGN_OR_RETURN(SealedTlsKey sealed_tls, p->dir->LoadTlsKey());
  CUSTODY_ASSIGN_OR_RETURN(std::string vendor_pem,
                           ReadText(config.vendor_public_key, "vendor_public_key"));
  Result<crypto::Ed25519PublicKey> vendor = crypto::Ed25519PublicKey::FromPem(vendor_pem);
  if (!vendor) {
    return InvalidArgument(
        config.vendor_public_key +
        " is not an Ed25519 public key in PEM form: " + vendor.error().message());
  }
  if (!config.serve.tokens_file.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(p->tokens, LoadAppTokens(config.serve.tokens_file));
  }

  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> tpm, tpm::Tpm::Open(config.tcti));
  p->tpm = std::make_unique<SharedTpm>(std::move(tpm));
  CUSTODY_ASSIGN_OR_RETURN(p->meter, Meter::Open(p->dir->journal_path(), *p->tpm, p->identity));
  const Reconciliation& r = p->meter->reconciliation();
  if (!p->meter->anomaly().empty()) {
    log.Warn("metering: " + p->meter->anomaly(),
             {{"tpm_counter", p->meter->counter()}, {"journal_served", r.served_total}});
  }
  if (!p->meter->recovery().empty()) log.Info("metering: " + p->meter->recovery());
  log.Info("meter ready", {{"tpm_counter", p->meter->counter()},
                           {"unit", p->meter->unit()},
                           {"position", p->meter->position()}});

  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer tls_key, p->tpm->Run(TpmOp::kUnwrap, [&](tpm::Tpm& t) {
    return OpenTlsKey(t, p->identity.device_id, sealed_tls);
  }));

  // The TPM clock, and the constant the AK's quotes add to its reset count (the leases' terms).
  Result<tpm::TimeInfo> clock =
      p->tpm->Run(TpmOp::kClockRead, [](tpm::Tpm& t) { return t.ReadClock(); });
  if (!clock) return clock.error().WithContext("read the TPM clock");
  Result<uint32_t> offset = p->tpm->Run(TpmOp::kAttest, [&](tpm::Tpm& t) {
    return QuotedResetOffset(t, p->identity, clock->reset_count);
  });
  if (!offset) return offset.error().WithContext("read the TPM's reset count as the AK quotes it");

  CUSTODY_ASSIGN_OR_RETURN(AgentState state, p->dir->LoadState());
  p->state = std::make_unique<PersistentState>(*p->dir, std::move(state));
  p->catalog = std::make_unique<ModelCatalog>(config.models_dir, std::move(vendor).value());
  engine::LoadOptions load;
  load.plugin_dirs = config.engine.plugin_dirs;
  load.threads = config.engine.threads;
  p->leases = std::make_unique<LeaseManager>(
      p->identity, *p->tpm, *p->catalog, *p->dir, *p->state, load,
      [] { return std::chrono::system_clock::now(); }, *offset);

  LinkOptions link;
  link.client = CustodianClientOptions(config, p->identity.ca_certificate_pem);
  link.client.client_certificate_pem = p->identity.certificate_pem;
  link.client.client_key_pem = std::string(AsChars(tls_key.span()));
  link.report_interval_ms = config.metering.report_interval_ms;
  link.renew_interval_ms = config.renew_interval_ms;
  link.extension_threshold = config.metering.extension_threshold;
  link.extension_amount = config.metering.extension_amount;
  p->link = std::make_unique<CustodianLink>(std::move(link), p->identity, *p->tpm, *p->meter,
                                            *p->leases, *p->state, log);
  // The TPM clock first, then the stored leases: a restart while offline serves at once if the
  // grace allows.
  p->leases->UpdateTpmClock(*clock);
  for (const std::string& problem : p->leases->Restore()) {
    log.Warn("stored lease not restored", {{"why", problem}});
  }

  Parts* parts = p.get();
  p->api = std::make_unique<InferenceApi>(*p->leases, *p->meter,
                                          [parts] { return DescribeAgent(*parts); });
  LocalServerOptions server;
  server.socket_path = config.serve.socket;
  server.socket_mode = config.serve.socket_mode;
  server.socket_group = config.serve.socket_group;
  server.tcp_port = config.serve.tcp_port;
  server.worker_threads = config.serve.workers;
  server.max_queue = config.serve.max_queue;
  CUSTODY_ASSIGN_OR_RETURN(
      p->server, LocalServer::Start(
                     server,
                     [parts](const PeerCredentials& peer, const LocalRequest& request) {
                       return parts->Authorize(peer, request);
                     },
                     [parts](LocalRequest& request) { return parts->api->Handle(request); }));
  CUSTODY_RETURN_IF_ERROR(p->link->Start());
  log.Info("serving", {{"socket", config.serve.socket},
                       {"device_id", p->identity.device_id},
                       {"hardening", hardening.ToString()}});
  return std::unique_ptr<Agent>(new Agent(std::move(p)));
}

void Agent::Stop(std::chrono::milliseconds grace) {
  std::lock_guard lock(parts_->stop_mu);
  if (parts_->stopped) return;
  parts_->stopped = true;
  parts_->link->Stop();
  parts_->server->Stop(grace);
  parts_->leases.reset();  // models unloaded: their protected memory is wiped
  const custody::Status synced = parts_->meter->Sync();
  if (!synced.ok())
    parts_->log->Error("journal sync at stop failed", {{"error", synced.ToString()}});
  parts_->log->Info("stopped", {});
}

std::optional<uint16_t> Agent::tcp_port() const { return parts_->server->tcp_port(); }

nlohmann::json Agent::Describe() const { return DescribeAgent(*parts_); }

void Agent::SetSeccompState(std::string state) {
  std::lock_guard lock(parts_->seccomp_mu);
  parts_->seccomp = std::move(state);
}

}  // namespace custody::agent
