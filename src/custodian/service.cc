#include "custodian/service.h"

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "core/format/sealed.h"
#include "core/protocol/envelope.h"
#include "core/tpm/credential.h"
#include "core/tpm/ek_cert.h"
#include "core/tpm/objects.h"
#include "core/tpm/policy.h"
#include "core/tpm/verifier.h"

namespace custody::custodian {
namespace {

constexpr size_t kNonceRandomBytes = 16;
constexpr size_t kNonceMacBytes = 16;
constexpr size_t kNonceBytes = kNonceRandomBytes + 8 + kNonceMacBytes;

std::string RandomId(std::string_view prefix, size_t bytes) {
  Result<Bytes> r = crypto::RandomBytes(bytes);
  if (!r) Panic("the system random number generator failed: " + r.error().ToString());
  return std::string(prefix) + HexEncode(*r);
}

Bytes TokenHash(std::string_view token) {
  crypto::Sha256Digest d = crypto::Sha256(AsBytes(token));
  return Bytes(d.begin(), d.end());
}

std::string RoleName(Role role) {
  switch (role) {
    case Role::kAdmin:
      return "admin";
    case Role::kOperator:
      return "operator";
    case Role::kViewer:
      return "viewer";
  }
  return "unknown";
}

std::string StatusName(ExtensionStatus s) {
  switch (s) {
    case ExtensionStatus::kPending:
      return "pending";
    case ExtensionStatus::kApproved:
      return "approved";
    case ExtensionStatus::kDenied:
      return "denied";
  }
  return "unknown";
}

std::string Time(TimePoint t) { return format::FormatTimestamp(t); }

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

// The requests a certified counter value has paid for (counter x unit), or kInvalidArgument when
// that does not fit in 64 bits: no real TPM counter gets there, so such a value is refused rather
// than clamped into a budget.
Result<uint64_t> PaidRequests(uint64_t counter, uint64_t counter_unit) {
  uint64_t paid = 0;
  if (__builtin_mul_overflow(counter, counter_unit, &paid)) {
    return InvalidArgument("certified usage counter " + std::to_string(counter) + " x unit " +
                           std::to_string(counter_unit) + " does not fit in 64 bits");
  }
  return paid;
}

tpm::PcrValues ToPcrValues(const std::map<uint32_t, Bytes>& pcrs) {
  tpm::PcrValues out;
  for (const auto& [index, value] : pcrs) {
    if (value.size() == 32) std::copy(value.begin(), value.end(), out[index].begin());
  }
  return out;
}

std::map<uint32_t, Bytes> FromPcrValues(const tpm::PcrValues& pcrs) {
  std::map<uint32_t, Bytes> out;
  for (const auto& [index, value] : pcrs) out[index] = Bytes(value.begin(), value.end());
  return out;
}

nlohmann::json ModelJson(const ModelRecord& m) {
  nlohmann::json j{{"model_id", m.model_id},
                   {"name", m.name},
                   {"version", m.version},
                   {"created", Time(m.created)},
                   {"retired", nullptr}};
  if (!m.sealed_sha256.empty()) j["sealed_sha256"] = m.sealed_sha256;
  if (m.retired) j["retired"] = Time(*m.retired);
  return j;
}

nlohmann::json LicenceJson(const LicenceRecord& l) {
  nlohmann::json j{{"licence_id", l.licence_id},
                   {"model_id", l.model_id},
                   {"budget", l.budget},
                   {"not_after", Time(l.not_after)},
                   {"offline_grace_ms", l.offline_grace_ms},
                   {"extension",
                    {{"manual", l.extension.manual},
                     {"auto_approve_up_to", l.extension.auto_approve_up_to},
                     {"period_seconds", l.extension.period_seconds}}},
                   {"created", Time(l.created)},
                   {"revoked", nullptr}};
  if (!l.device_id.empty()) j["device_id"] = l.device_id;
  if (!l.group.empty()) j["group"] = l.group;
  if (l.revoked) {
    j["revoked"] = Time(*l.revoked);
    j["revoked_reason"] = l.revoked_reason;
  }
  return j;
}

nlohmann::json ExtensionJson(const ExtensionRequest& e) {
  nlohmann::json j{{"request_id", e.request_id}, {"device_id", e.device_id},
                   {"licence_id", e.licence_id}, {"requested", e.requested},
                   {"reason", e.reason},         {"status", StatusName(e.status)},
                   {"granted", e.granted},       {"created", Time(e.created)}};
  if (e.decided) {
    j["decided"] = Time(*e.decided);
    j["decided_by"] = e.decided_by;
  }
  return j;
}

nlohmann::json DeviceJson(const DeviceRecord& d) {
  nlohmann::json j{{"device_id", d.device_id},
                   {"group", d.group},
                   {"ek_name", HexEncode(d.ek_name)},
                   {"enrolled", Time(d.enrolled)},
                   {"counter_index", d.counter_index},
                   {"counter_unit", d.counter_unit},
                   {"meter_position", d.meter_position},
                   {"lease_sequence", d.lease_sequence},
                   {"revocation_epoch", d.revocation_epoch},
                   {"revoked", nullptr},
                   {"last_seen", nullptr},
                   {"last_counter", nullptr}};
  if (d.revoked) {
    j["revoked"] = Time(*d.revoked);
    j["revoked_reason"] = d.revoked_reason;
  }
  if (d.last_seen) j["last_seen"] = Time(*d.last_seen);
  if (d.last_counter) j["last_counter"] = *d.last_counter;
  return j;
}

bool LicenceActive(const LicenceRecord& l, TimePoint now) {
  return !l.revoked && now <= l.not_after;
}

// The change is committed; only telling running devices failed. They get the new leases at
// their next attestation; the operator sees why in the answer.
std::string PushError(const Status& s) {
  return "saved, but devices could not be sent new leases now (they get them at their next "
         "attestation): " +
         s.message();
}

}  // namespace

std::string Actor::AuditName() const {
  if (kind == "token") return "token:" + name + " (" + id + ")";
  if (id.empty()) return kind;
  return kind + ":" + id;
}

TimePoint SystemNow() {
  return std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
}

CustodianService::CustodianService(Store& store, const CustodianKeys& keys, ServiceOptions options,
                                   Clock clock)
    : store_(store), keys_(keys), options_(std::move(options)), clock_(std::move(clock)) {
  Result<SecretBuffer> key = keys_.dek_sealer->DeriveKey("nonce-mac");
  if (!key) Panic("cannot derive the nonce key: " + key.error().ToString());
  nonce_key_ = std::move(key).value();
  Result<crypto::Sha256Digest> auth_policy =
      tpm::BindingKeyAuthPolicy(keys_.policy_key.public_key());
  if (!auth_policy) {
    Panic("cannot compute the binding key policy: " + auth_policy.error().ToString());
  }
  binding_auth_policy_ = *auth_policy;
}

std::string CustodianService::Now() const { return Time(clock_()); }

void CustodianService::Notify(const std::vector<std::string>& device_ids) const {
  if (!on_event_) return;
  for (const std::string& id : device_ids) on_event_(id);
}

// ----- tokens ----------------------------------------------------------------------------------

Result<nlohmann::json> CustodianService::CreateToken(const Actor& actor, const std::string& name,
                                                     Role role) {
  if (name.empty() || name.size() > 64) return InvalidArgument("token name must be 1..64 bytes");
  CUSTODY_ASSIGN_OR_RETURN(Bytes secret, crypto::RandomBytes(32));
  const std::string token = "cust_" + HexEncode(secret);
  ApiToken t;
  t.id = RandomId("tok_", 8);
  t.name = name;
  t.role = role;
  t.token_hash = TokenHash(token);
  t.created = clock_();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutToken(t));
    return tx.Audit(actor.AuditName(), "token.create", t.id,
                    {{"name", name}, {"role", RoleName(role)}});
  }));
  return nlohmann::json{{"id", t.id}, {"name", name}, {"role", RoleName(role)}, {"token", token}};
}

Status CustodianService::RevokeToken(const Actor& actor, const std::string& token_id) {
  return store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.RevokeToken(token_id, clock_()));
    return tx.Audit(actor.AuditName(), "token.revoke", token_id, nlohmann::json::object());
  });
}

Result<nlohmann::json> CustodianService::ListTokens() const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<ApiToken> tokens, store_.ListTokens());
  nlohmann::json out = nlohmann::json::array();
  for (const ApiToken& t : tokens) {
    out.push_back({{"id", t.id},
                   {"name", t.name},
                   {"role", RoleName(t.role)},
                   {"created", Time(t.created)},
                   {"revoked", t.revoked ? nlohmann::json(Time(*t.revoked)) : nullptr}});
  }
  return out;
}

Result<ApiToken> CustodianService::Authenticate(std::string_view token) const {
  if (token.empty() || token.size() > 128) return Unauthenticated("malformed bearer token");
  CUSTODY_ASSIGN_OR_RETURN(std::optional<ApiToken> t, store_.FindTokenByHash(TokenHash(token)));
  if (!t) return Unauthenticated("unknown bearer token");
  if (t->revoked) return Unauthenticated("bearer token " + t->id + " was revoked");
  return *t;
}

// ----- models, groups, tokens, licences -----------------------------------------------------

Result<nlohmann::json> CustodianService::RegisterModel(const Actor& actor,
                                                       ModelRegistration model) {
  if (model.model_id.size() != 32 || !HexDecode(model.model_id).has_value()) {
    return InvalidArgument(
        "model_id must be the 32 hex digits of the sealed header (custody "
        "inspect shows it)");
  }
  std::transform(model.model_id.begin(), model.model_id.end(), model.model_id.begin(),
                 [](char c) { return static_cast<char>(std::tolower(c)); });
  if (model.dek.size() != format::kDekBytes) {
    return InvalidArgument("the model key must be 32 bytes (the .dek file: 64 hex digits)");
  }
  CUSTODY_ASSIGN_OR_RETURN(Bytes sealed, keys_.dek_sealer->Seal(model.dek.span(), model.model_id));
  ModelRecord m;
  m.model_id = model.model_id;
  m.name = model.name;
  m.version = model.version;
  m.dek_sealed = std::move(sealed);
  m.sealed_sha256 = model.sealed_sha256;
  m.created = clock_();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutModel(m));
    return tx.Audit(actor.AuditName(), "model.register", m.model_id,
                    {{"name", m.name}, {"version", m.version}});
  }));
  return ModelJson(m);
}

Result<nlohmann::json> CustodianService::ListModels() const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<ModelRecord> models, store_.ListModels());
  nlohmann::json out = nlohmann::json::array();
  for (const ModelRecord& m : models) out.push_back(ModelJson(m));
  return out;
}

Result<nlohmann::json> CustodianService::CreateGroup(const Actor& actor, const GroupSpec& spec) {
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection, tpm::PcrSelection::Of(spec.pcrs));
  if (selection.empty()) return InvalidArgument("a group must quote at least one PCR");
  if (spec.name.empty() || spec.name.size() > 64) {
    return InvalidArgument("group name must be 1..64 bytes");
  }
  if (store_.GetGroup(spec.name).has_value()) {
    return AlreadyExists("group '" + spec.name + "' already exists");
  }
  GroupRecord g;
  g.name = spec.name;
  g.pcr_selection = selection.pcrs;
  g.allow_tofu = spec.allow_tofu;
  g.require_ek_certificate = spec.require_ek_certificate;
  g.created = clock_();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(g));
    return tx.Audit(actor.AuditName(), "group.create", g.name,
                    {{"pcrs", selection.ToString()},
                     {"allow_tofu", g.allow_tofu},
                     {"require_ek_certificate", g.require_ek_certificate}});
  }));
  return nlohmann::json{{"name", g.name},
                        {"pcrs", g.pcr_selection},
                        {"allow_tofu", g.allow_tofu},
                        {"require_ek_certificate", g.require_ek_certificate}};
}

Result<nlohmann::json> CustodianService::AddGoldenSet(const Actor& actor, const std::string& group,
                                                      const std::string& set_name,
                                                      const tpm::PcrValues& pcrs) {
  if (set_name.empty() || set_name.size() > 64) {
    return InvalidArgument("golden set name must be 1..64 bytes");
  }
  CUSTODY_ASSIGN_OR_RETURN(GroupRecord g, store_.GetGroup(group));
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection, tpm::PcrSelection::Of(g.pcr_selection));
  for (uint32_t pcr : selection.pcrs) {
    if (!pcrs.contains(pcr)) {
      return InvalidArgument("golden set '" + set_name + "' has no value for PCR " +
                             std::to_string(pcr) + ", which group '" + group + "' quotes");
    }
  }
  // The approval is the custodian's signature on this state: devices of the group can use their
  // binding key in it from now on, without re-enrollment (PROTOCOL.md §4).
  CUSTODY_ASSIGN_OR_RETURN(tpm::ApprovedPolicy approval,
                           tpm::ApprovePcrPolicy(keys_.policy_key, selection, pcrs, {}));
  GoldenSetRecord set{set_name, FromPcrValues(pcrs)};
  std::erase_if(g.golden, [&](const GoldenSetRecord& s) { return s.name == set_name; });
  g.golden.push_back(set);
  // Approvals are kept in golden-set order.
  g.approvals_json.clear();
  for (const GoldenSetRecord& s : g.golden) {
    CUSTODY_ASSIGN_OR_RETURN(
        tpm::ApprovedPolicy a,
        tpm::ApprovePcrPolicy(keys_.policy_key, selection, ToPcrValues(s.pcrs), {}));
    g.approvals_json.push_back(protocol::ApprovedPolicyToJson(a).dump());
  }
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(g));
    return tx.Audit(actor.AuditName(), "group.golden_set", group,
                    {{"set", set_name},
                     {"pcrs", protocol::PcrValuesToJson(pcrs)},
                     {"approved_digest", HexEncode(approval.approved_digest)}});
  }));
  // Devices of the group get the new approvals now, before they reboot into the new state.
  CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceRecord> devices, store_.ListDevices());
  std::erase_if(devices, [&](const DeviceRecord& d) { return d.group != group; });
  nlohmann::json out{{"group", group},
                     {"set", set_name},
                     {"approved_digest", HexEncode(approval.approved_digest)}};
  Status pushed = PushLeases(actor, devices, "", "policy update: golden set " + set_name);
  if (!pushed.ok()) out["push_error"] = PushError(pushed);
  return out;
}

Result<nlohmann::json> CustodianService::ListGroups() const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<GroupRecord> groups, store_.ListGroups());
  nlohmann::json out = nlohmann::json::array();
  for (const GroupRecord& g : groups) {
    nlohmann::json golden = nlohmann::json::array();
    for (const GoldenSetRecord& s : g.golden) {
      golden.push_back(
          {{"name", s.name}, {"pcrs", protocol::PcrValuesToJson(ToPcrValues(s.pcrs))}});
    }
    out.push_back({{"name", g.name},
                   {"pcrs", g.pcr_selection},
                   {"allow_tofu", g.allow_tofu},
                   {"require_ek_certificate", g.require_ek_certificate},
                   {"golden_sets", golden},
                   {"created", Time(g.created)}});
  }
  return out;
}

Result<nlohmann::json> CustodianService::CreateEnrollmentToken(const Actor& actor,
                                                               const std::string& group,
                                                               std::chrono::seconds ttl) {
  if (ttl.count() < 60 || ttl > std::chrono::hours(24 * 30)) {
    return InvalidArgument("an enrollment token lives 60 s to 30 days");
  }
  CUSTODY_RETURN_IF_ERROR(store_.GetGroup(group).status());
  CUSTODY_ASSIGN_OR_RETURN(Bytes secret, crypto::RandomBytes(24));
  const std::string token = "enr_" + HexEncode(secret);
  EnrollmentTokenRecord t;
  t.token_hash = TokenHash(token);
  t.group = group;
  t.created = clock_();
  t.expires = t.created + ttl;
  t.created_by = actor.AuditName();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutEnrollmentToken(t));
    return tx.Audit(actor.AuditName(), "enrollment_token.create",
                    HexEncode(t.token_hash).substr(0, 16),
                    {{"group", group}, {"expires", Time(t.expires)}});
  }));
  return nlohmann::json{{"token", token}, {"group", group}, {"expires", Time(t.expires)}};
}

Result<nlohmann::json> CustodianService::CreateLicence(const Actor& actor,
                                                       const LicenceSpec& spec) {
  if (spec.device_id.empty() == spec.group.empty()) {
    return InvalidArgument("a licence is for exactly one of: a device (device_id) or a group");
  }
  CUSTODY_ASSIGN_OR_RETURN(ModelRecord model, store_.GetModel(spec.model_id));
  if (model.retired) return FailedPrecondition("model " + spec.model_id + " is retired");
  if (!spec.device_id.empty()) CUSTODY_RETURN_IF_ERROR(store_.GetDevice(spec.device_id).status());
  if (!spec.group.empty()) CUSTODY_RETURN_IF_ERROR(store_.GetGroup(spec.group).status());
  if (spec.not_after <= clock_()) return InvalidArgument("the licence's end is in the past");
  if (!spec.extension.manual && spec.extension.period_seconds == 0) {
    return InvalidArgument("automatic extension approval needs a period (period_seconds > 0)");
  }
  LicenceRecord l;
  l.licence_id = RandomId("lic_", 8);
  l.model_id = spec.model_id;
  l.device_id = spec.device_id;
  l.group = spec.group;
  l.budget = spec.budget;
  l.not_after = spec.not_after;
  l.offline_grace_ms = spec.offline_grace_ms;
  l.extension = spec.extension;
  l.created = clock_();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutLicence(l));
    return tx.Audit(actor.AuditName(), "licence.create", l.licence_id, LicenceJson(l));
  }));
  // Devices it covers that are already running get its lease on their event stream.
  CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceRecord> devices, store_.ListDevices());
  std::erase_if(devices, [&](const DeviceRecord& d) {
    return d.device_id != l.device_id && (l.group.empty() || d.group != l.group);
  });
  nlohmann::json out = LicenceJson(l);
  Status pushed = PushLeases(actor, devices, l.licence_id, "new licence");
  if (!pushed.ok()) out["push_error"] = PushError(pushed);
  return out;
}

Result<nlohmann::json> CustodianService::ListLicences() const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<LicenceRecord> licences, store_.ListLicences());
  nlohmann::json out = nlohmann::json::array();
  for (const LicenceRecord& l : licences) out.push_back(LicenceJson(l));
  return out;
}

Result<nlohmann::json> CustodianService::ListDevices() const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceRecord> devices, store_.ListDevices());
  nlohmann::json out = nlohmann::json::array();
  for (const DeviceRecord& d : devices) out.push_back(DeviceJson(d));
  return out;
}

Result<nlohmann::json> CustodianService::GetDevice(const std::string& device_id) const {
  CUSTODY_ASSIGN_OR_RETURN(DeviceRecord d, store_.GetDevice(device_id));
  nlohmann::json j = DeviceJson(d);
  CUSTODY_ASSIGN_OR_RETURN(std::vector<UsageCount> usage, store_.UsageForDevice(device_id));
  nlohmann::json u = nlohmann::json::array();
  for (const UsageCount& c : usage) {
    u.push_back({{"model_id", c.model_id}, {"client", c.client}, {"count", c.count}});
  }
  j["usage"] = u;
  CUSTODY_ASSIGN_OR_RETURN(std::vector<LicenceRecord> licences,
                           store_.LicencesForDevice(device_id, d.group));
  nlohmann::json ls = nlohmann::json::array();
  for (const LicenceRecord& l : licences) {
    nlohmann::json lj = LicenceJson(l);
    Result<uint64_t> remaining = Remaining(d, l);
    lj["remaining"] = remaining ? nlohmann::json(*remaining) : nullptr;
    ls.push_back(lj);
  }
  j["licences"] = ls;
  return j;
}

// ----- budget ----------------------------------------------------------------------------------

// A licence grants each device it applies to `budget` inferences of its model, plus whatever
// extensions were approved for that device on it; what the device has reported (certified by
// its TPM counter) is used.
Result<uint64_t> CustodianService::Remaining(const DeviceRecord& device,
                                             const LicenceRecord& licence) const {
  CUSTODY_ASSIGN_OR_RETURN(uint64_t granted,
                           store_.GrantedToDevice(licence.licence_id, device.device_id));
  const uint64_t allowance =
      licence.budget > UINT64_MAX - granted ? UINT64_MAX : licence.budget + granted;
  CUSTODY_ASSIGN_OR_RETURN(std::vector<UsageCount> usage, store_.UsageForDevice(device.device_id));
  uint64_t used = 0;
  for (const UsageCount& c : usage) {
    if (c.model_id == licence.model_id) used += c.count;
  }
  return allowance > used ? allowance - used : 0;
}

// ----- devices: shared checks
// ---------------------------------------------------------------------

Result<DeviceRecord> CustodianService::ActiveDevice(const std::string& device_id) const {
  Result<DeviceRecord> d = store_.GetDevice(device_id);
  if (!d) {
    if (d.error().code() == StatusCode::kNotFound) {
      return Unauthenticated("no enrolled device has the id in this client certificate");
    }
    return d.error();
  }
  if (d->revoked) {
    return PermissionDenied("device " + device_id + " was revoked (" + d->revoked_reason +
                            "); it gets no leases");
  }
  return d;
}

// Nonces are stateless until used: random ‖ expiry ‖ MAC(device, random, expiry), so issuing
// one costs no database write and any custodian instance can check it; its single use is
// recorded (Transaction::ConsumeNonce) in the transaction that acts on it.
Result<Bytes> CustodianService::MakeNonce(const std::string& device_id) const {
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, crypto::RandomBytes(kNonceRandomBytes));
  const auto expires =
      static_cast<uint64_t>((clock_() + options_.nonce_ttl).time_since_epoch().count());
  AppendBigEndian64(nonce, expires);
  Bytes mac_input(device_id.begin(), device_id.end());
  mac_input.push_back(0);
  mac_input.insert(mac_input.end(), nonce.begin(), nonce.end());
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest mac,
                           crypto::HmacSha256(nonce_key_.span(), mac_input));
  nonce.insert(nonce.end(), mac.begin(), mac.begin() + kNonceMacBytes);
  return nonce;
}

Status CustodianService::CheckNonce(const std::string& device_id, ByteSpan nonce) const {
  if (nonce.size() != kNonceBytes) return Unauthenticated("nonce was not issued by this custodian");
  Bytes mac_input(device_id.begin(), device_id.end());
  mac_input.push_back(0);
  mac_input.insert(mac_input.end(), nonce.begin(), nonce.begin() + kNonceRandomBytes + 8);
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest mac,
                           crypto::HmacSha256(nonce_key_.span(), mac_input));
  if (!ConstantTimeEquals(ByteSpan(mac.data(), kNonceMacBytes),
                          nonce.subspan(kNonceRandomBytes + 8))) {
    return Unauthenticated("nonce was not issued by this custodian for this device");
  }
  const uint64_t expires = LoadBigEndian64(nonce.data() + kNonceRandomBytes);
  const auto now = static_cast<uint64_t>(clock_().time_since_epoch().count());
  if (now > expires) {
    return Unauthenticated("nonce expired " + std::to_string(now - expires) +
                           " s ago: ask for a new one (POST /v1/nonce) and answer within " +
                           std::to_string(options_.nonce_ttl.count()) + " s");
  }
  return OkStatus();
}

Result<std::vector<tpm::ApprovedPolicy>> CustodianService::ApprovalsFor(
    const GroupRecord& group, const DeviceRecord& device) const {
  std::vector<tpm::ApprovedPolicy> out;
  for (const std::string& text : group.approvals_json) {
    CUSTODY_ASSIGN_OR_RETURN(nlohmann::json j,
                             protocol::ParseJsonObject(text, 1 << 16, "approval"));
    CUSTODY_ASSIGN_OR_RETURN(tpm::ApprovedPolicy a,
                             protocol::ApprovedPolicyFromJson(protocol::JsonObject(j, "")));
    out.push_back(std::move(a));
  }
  if (out.empty() && !device.tofu_pcrs.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection,
                             tpm::PcrSelection::Of(group.pcr_selection));
    CUSTODY_ASSIGN_OR_RETURN(
        tpm::ApprovedPolicy a,
        tpm::ApprovePcrPolicy(keys_.policy_key, selection, ToPcrValues(device.tofu_pcrs), {}));
    out.push_back(std::move(a));
  }
  return out;
}

Result<LeaseRecord> CustodianService::BuildLease(
    DeviceRecord& device, const LicenceRecord& licence,
    const std::vector<tpm::ApprovedPolicy>& approvals) const {
  CUSTODY_ASSIGN_OR_RETURN(ModelRecord model, store_.GetModel(licence.model_id));
  if (model.retired) return FailedPrecondition("model " + model.model_id + " is retired");
  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<const SecretBuffer> dek, ModelKey(model));
  protocol::LeasePayload p;
  p.lease_id = RandomId("lease_", 12);
  p.device_id = device.device_id;
  p.licence_id = licence.licence_id;
  p.model_id = model.model_id;
  p.model_name = model.name;
  p.model_version = model.version;
  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<const crypto::P256PublicKey> binding_key,
                           BindingKey(device));
  CUSTODY_ASSIGN_OR_RETURN(p.wrapped_dek, crypto::EciesWrap(*binding_key, dek->span(),
                                                            protocol::LeaseDekContext(
                                                                device.device_id, model.model_id)));
  p.approvals = approvals;
  CUSTODY_ASSIGN_OR_RETURN(uint64_t remaining, Remaining(device, licence));
  // In requests: where the device's meter certainly is, plus what it may still use.
  p.counter_limit = SaturatingAdd(device.meter_position, remaining);
  p.counter_unit = device.counter_unit;
  p.not_after = Time(licence.not_after);
  p.offline_grace_ms = licence.offline_grace_ms;
  // The reference for the offline grace. A lease pushed later (an extension, a policy update)
  // carries the clock of the last verified quote: older than the device's clock by then, so it
  // grants less offline time than an attestation would, never more.
  // Without a quote on record both are 0: the device counts its whole clock as offline time and
  // serves only once it attests.
  p.tpm_clock_ms = device.attested_tpm_clock_ms.value_or(0);
  p.tpm_reset_count = device.attested_tpm_reset_count.value_or(0);
  p.sequence = ++device.lease_sequence;
  p.revocation_epoch = device.revocation_epoch;
  p.issued_at = Now();
  const std::string payload = protocol::ToJson(p).dump();
  CUSTODY_ASSIGN_OR_RETURN(
      nlohmann::json envelope,
      protocol::SealEnvelope(keys_.lease_key, protocol::kLeaseDocument, AsBytes(payload)));
  LeaseRecord l;
  l.lease_id = p.lease_id;
  l.device_id = device.device_id;
  l.licence_id = licence.licence_id;
  l.model_id = model.model_id;
  l.sequence = p.sequence;
  l.counter_limit = p.counter_limit;
  l.not_after = licence.not_after;
  l.offline_grace_ms = licence.offline_grace_ms;
  l.revocation_epoch = device.revocation_epoch;
  l.issued = clock_();
  l.envelope_json = envelope.dump();
  return l;
}

Result<std::shared_ptr<const SecretBuffer>> CustodianService::ModelKey(
    const ModelRecord& model) const {
  if (auto key = model_keys_.Find(model.model_id, model.dek_sealed)) return key;
  // Opened outside the cache's lock; two threads opening the same key at once both succeed.
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek,
                           keys_.dek_sealer->Open(model.dek_sealed, model.model_id));
  auto key = std::make_shared<const SecretBuffer>(std::move(dek));
  model_keys_.Put(model.model_id, model.dek_sealed, key);
  return key;
}

Result<std::shared_ptr<const crypto::P256PublicKey>> CustodianService::BindingKey(
    const DeviceRecord& device) const {
  if (auto key = binding_keys_.Find(device.device_id, device.binding_public)) return key;
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey parsed,
                           tpm::CheckedBindingKey(device.binding_public, binding_auth_policy_));
  auto key = std::make_shared<const crypto::P256PublicKey>(std::move(parsed));
  binding_keys_.Put(device.device_id, device.binding_public, key);
  return key;
}

Result<nlohmann::json> CustodianService::RevocationDocument(const DeviceRecord& device,
                                                            const std::string& scope,
                                                            const std::string& subject,
                                                            const std::string& reason) const {
  protocol::RevocationPayload p{device.device_id,        scope, subject, reason,
                                device.revocation_epoch, Now()};
  return protocol::SealEnvelope(keys_.lease_key, protocol::kRevocationDocument,
                                AsBytes(protocol::ToJson(p).dump()));
}

// ----- enrollment --------------------------------------------------------------------------------

Result<protocol::EnrollBeginResponse> CustodianService::EnrollBegin(
    const protocol::EnrollBeginRequest& request) {
  const Bytes token_hash = TokenHash(request.token);
  Result<EnrollmentTokenRecord> token = Result<EnrollmentTokenRecord>(NotFound(""));
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    token = tx.GetEnrollmentToken(token_hash);
    return OkStatus();
  }));
  if (!token) return Unauthenticated("enrollment token is not valid (unknown or mistyped)");
  if (token->used) {
    return Unauthenticated("enrollment token was already used (by " + token->used_by_device +
                           "); ask the vendor for a new one");
  }
  if (clock_() > token->expires) {
    return Unauthenticated("enrollment token expired at " + Time(token->expires));
  }
  CUSTODY_ASSIGN_OR_RETURN(GroupRecord group, store_.GetGroup(token->group));

  // The EK: a certificate from a TPM maker the vendor trusts, for exactly this key.
  if (request.ek_certificate) {
    if (options_.ek_ca_dir.empty()) {
      return FailedPrecondition(
          "this custodian has no TPM-maker CA directory configured "
          "(tpm.ek_ca_dir), so it cannot check EK certificates");
    }
    Status ek =
        tpm::VerifyEkCertificate(*request.ek_certificate, request.ek_public, options_.ek_ca_dir);
    if (!ek.ok()) return ek.WithContext("EK certificate");
  } else if (group.require_ek_certificate) {
    return FailedPrecondition("group '" + group.name +
                              "' requires an EK certificate from the TPM maker, and this TPM "
                              "presented none");
  }
  CUSTODY_RETURN_IF_ERROR(tpm::CheckAkPublic(request.ak_public));
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC ak, tpm::UnmarshalPublic2B(request.ak_public));
  CUSTODY_ASSIGN_OR_RETURN(Bytes ak_name, tpm::ObjectName(ak));
  CUSTODY_ASSIGN_OR_RETURN(Bytes secret, crypto::RandomBytes(32));
  CUSTODY_ASSIGN_OR_RETURN(tpm::Credential credential,
                           tpm::MakeCredential(request.ek_public, ak_name, secret));
  PendingEnrollment pending;
  pending.id = RandomId("enr_", 12);
  pending.token_hash = token_hash;
  pending.group = group.name;
  pending.ek_public = request.ek_public;
  pending.ek_certificate = request.ek_certificate;
  pending.ek_type = request.ek_type;
  pending.ak_public = request.ak_public;
  crypto::Sha256Digest secret_hash = crypto::Sha256(secret);
  pending.credential_secret_hash.assign(secret_hash.begin(), secret_hash.end());
  CUSTODY_ASSIGN_OR_RETURN(pending.certify_nonce, crypto::RandomBytes(32));
  pending.expires = clock_() + options_.enrollment_ttl;
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutPendingEnrollment(pending));
    return tx.Audit(
        "enrollment", "enrollment.begin", pending.id,
        {{"group", group.name}, {"ek_certificate", request.ek_certificate.has_value()}});
  }));
  protocol::EnrollBeginResponse out;
  out.enrollment_id = pending.id;
  out.credential = std::move(credential);
  out.certify_nonce = pending.certify_nonce;
  const auto& point = keys_.policy_key.public_key().uncompressed();
  out.policy_public.assign(point.begin(), point.end());
  return out;
}

Result<protocol::EnrollCompleteResponse> CustodianService::EnrollComplete(
    const protocol::EnrollCompleteRequest& request) {
  if (request.counter_unit < protocol::kMinCounterUnit ||
      request.counter_unit > protocol::kMaxCounterUnit) {
    return InvalidArgument("counter_unit must be " + std::to_string(protocol::kMinCounterUnit) +
                           ".." + std::to_string(protocol::kMaxCounterUnit) + ", got " +
                           std::to_string(request.counter_unit));
  }
  Result<PendingEnrollment> pending = Result<PendingEnrollment>(NotFound(""));
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    pending = tx.GetPendingEnrollment(request.enrollment_id);
    return OkStatus();
  }));
  if (!pending) return NotFound("no enrollment in progress with this id (expired? start again)");
  if (clock_() > pending->expires) return Unauthenticated("the enrollment expired; start again");

  // Credential activation: only the TPM holding the EK could have released this secret, and
  // only for an object with the AK's Name.
  crypto::Sha256Digest got = crypto::Sha256(request.activated_secret);
  if (!ConstantTimeEquals(got, pending->credential_secret_hash)) {
    return Unauthenticated("credential activation failed: the AK is not in the TPM of this EK");
  }
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest auth_policy,
                           tpm::BindingKeyAuthPolicy(keys_.policy_key.public_key()));
  Status binding = tpm::CheckBindingKeyPublic(request.binding_public, auth_policy);
  if (!binding.ok()) return binding;
  CUSTODY_RETURN_IF_ERROR(tpm::VerifyCertify(request.binding_certify, pending->ak_public,
                                             pending->certify_nonce, request.binding_public)
                              .WithContext("binding key certification"));
  CUSTODY_ASSIGN_OR_RETURN(Bytes counter_name,
                           tpm::NvName(tpm::NvCounterPublic(request.counter_index, true)));
  tpm::NvCertifyExpectation counter_expect{pending->ak_public, pending->certify_nonce, counter_name,
                                           std::nullopt};
  Result<uint64_t> counter = tpm::VerifyNvCertify(request.counter_certify, counter_expect);
  if (!counter) return counter.error().WithContext("usage counter certification");
  // Everything the counter paid for before enrollment counts as used.
  CUSTODY_ASSIGN_OR_RETURN(const uint64_t meter_position,
                           PaidRequests(*counter, request.counter_unit));

  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC ek_pub, tpm::UnmarshalPublic2B(pending->ek_public));
  CUSTODY_ASSIGN_OR_RETURN(Bytes ek_name, tpm::ObjectName(ek_pub));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceRecord> devices, store_.ListDevices());
  for (const DeviceRecord& d : devices) {
    if (d.ek_name == ek_name && !d.revoked) {
      return AlreadyExists("this TPM is already enrolled as " + d.device_id +
                           "; revoke that device first to enroll it again");
    }
  }
  CUSTODY_ASSIGN_OR_RETURN(GroupRecord group, store_.GetGroup(pending->group));
  DeviceRecord device;
  device.device_id = RandomId("dev_", 16);
  CUSTODY_ASSIGN_OR_RETURN(
      IssuedCertificate cert,
      keys_.ca.IssueDevice(request.tls_public_key, device.device_id, options_.device_cert_days));
  device.group = pending->group;
  device.ek_public = pending->ek_public;
  device.ek_name = ek_name;
  device.ak_public = pending->ak_public;
  device.binding_public = request.binding_public;
  device.counter_index = request.counter_index;
  device.counter_name = counter_name;
  device.tls_serial = cert.serial_hex;
  device.tls_public_key = request.tls_public_key;
  device.enrolled = clock_();
  device.last_counter = *counter;
  device.counter_unit = request.counter_unit;
  device.meter_position = meter_position;
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.UseEnrollmentToken(pending->token_hash, device.device_id, clock_()));
    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(device));
    CUSTODY_RETURN_IF_ERROR(tx.DeletePendingEnrollment(pending->id));
    return tx.Audit("device:" + device.device_id, "device.enroll", device.device_id,
                    {{"group", device.group},
                     {"ek_name", HexEncode(ek_name)},
                     {"counter", *counter},
                     {"counter_unit", device.counter_unit},
                     {"tls_serial", cert.serial_hex}});
  }));
  protocol::EnrollCompleteResponse out;
  out.device_id = device.device_id;
  out.certificate_pem = cert.pem;
  out.ca_certificate_pem = keys_.ca.CertificatePem();
  const auto& lease_pub = keys_.lease_key.public_key().raw();
  out.lease_public.assign(lease_pub.begin(), lease_pub.end());
  const auto& policy = keys_.policy_key.public_key().uncompressed();
  out.policy_public.assign(policy.begin(), policy.end());
  out.pcr_selection = group.pcr_selection;
  return out;
}

// ----- attestation and leases ------------------------------------------------------------------

Result<protocol::NonceResponse> CustodianService::IssueNonce(const std::string& device_id) {
  CUSTODY_RETURN_IF_ERROR(ActiveDevice(device_id).status());
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, MakeNonce(device_id));
  return protocol::NonceResponse{std::move(nonce),
                                 static_cast<uint64_t>(options_.nonce_ttl.count()) * 1000};
}

Result<protocol::AttestResponse> CustodianService::Attest(const std::string& device_id,
                                                          const protocol::AttestRequest& request) {
  CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, ActiveDevice(device_id));
  CUSTODY_RETURN_IF_ERROR(CheckNonce(device_id, request.nonce));
  CUSTODY_ASSIGN_OR_RETURN(GroupRecord group, store_.GetGroup(device.group));
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection, tpm::PcrSelection::Of(group.pcr_selection));
  tpm::QuoteExpectation expect;
  expect.ak_public = device.ak_public;
  expect.nonce = request.nonce;
  expect.selection = selection;
  for (const GoldenSetRecord& s : group.golden)
    expect.golden.push_back({s.name, ToPcrValues(s.pcrs)});
  bool record_tofu = false;
  if (expect.golden.empty()) {
    if (!device.tofu_pcrs.empty()) {
      expect.golden.push_back({"first-use", ToPcrValues(device.tofu_pcrs)});
    } else if (group.allow_tofu) {
      record_tofu = true;  // VerifyQuote accepts any state; it becomes the device's golden state
    } else {
      return FailedPrecondition("group '" + group.name +
                                "' has no approved PCR state yet and does not trust on first use; "
                                "an operator must add a golden set");
    }
  }
  CUSTODY_ASSIGN_OR_RETURN(tpm::QuoteResult verdict, tpm::VerifyQuote(request.quote, expect));
  if (record_tofu) device.tofu_pcrs = FromPcrValues(verdict.pcrs);
  // The leases below carry this quote's TPM clock and reset count: the device measures its offline
  // grace from them.
  device.attested_tpm_clock_ms = verdict.clock.clock_ms;
  device.attested_tpm_reset_count = verdict.clock.reset_count;
  device.last_seen = clock_();
  CUSTODY_ASSIGN_OR_RETURN(std::vector<tpm::ApprovedPolicy> approvals, ApprovalsFor(group, device));

  CUSTODY_ASSIGN_OR_RETURN(std::vector<LicenceRecord> licences,
                           store_.LicencesForDevice(device_id, device.group));
  std::vector<LeaseRecord> leases;
  for (const LicenceRecord& l : licences) {
    if (!LicenceActive(l, clock_())) continue;
    Result<LeaseRecord> lease = BuildLease(device, l, approvals);
    if (!lease) {
      if (lease.error().code() == StatusCode::kFailedPrecondition) continue;  // retired model
      return lease.error();
    }
    leases.push_back(std::move(lease).value());
  }
  Status committed = store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(request.nonce, device_id, clock_()));
    // Re-read and update only what this attestation changes: a usage report or a revocation
    // may have been committed since the device was read above.
    CUSTODY_ASSIGN_OR_RETURN(DeviceRecord current, tx.GetDevice(device_id));
    if (current.revoked) return PermissionDenied("device " + device_id + " was revoked");
    if (current.lease_sequence + leases.size() != device.lease_sequence ||
        current.revocation_epoch != device.revocation_epoch) {
      return Unavailable(
          "the device's leases changed while this attestation was processed; "
          "attest again");
    }
    current.lease_sequence = device.lease_sequence;
    current.last_seen = device.last_seen;
    current.attested_tpm_clock_ms = device.attested_tpm_clock_ms;
    current.attested_tpm_reset_count = device.attested_tpm_reset_count;
    if (record_tofu) current.tofu_pcrs = device.tofu_pcrs;
    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(current));
    for (const LeaseRecord& l : leases) CUSTODY_RETURN_IF_ERROR(tx.PutLease(l));
    return tx.Audit("device:" + device_id, "device.attest", device_id,
                    {{"matched_set", record_tofu ? "first-use (recorded)" : verdict.matched_set},
                     {"leases", leases.size()},
                     {"sequence", device.lease_sequence},
                     {"tpm_clock_ms", verdict.clock.clock_ms}});
  });
  if (committed.code() == StatusCode::kAlreadyExists) {
    return Unauthenticated("nonce was already used: a replayed attestation");
  }
  CUSTODY_RETURN_IF_ERROR(committed);
  protocol::AttestResponse out;
  for (const LeaseRecord& l : leases) {
    CUSTODY_ASSIGN_OR_RETURN(nlohmann::json env,
                             protocol::ParseJsonObject(l.envelope_json, 1 << 20, "lease"));
    out.leases.push_back(std::move(env));
  }
  return out;
}

Result<protocol::EventsResponse> CustodianService::Events(const std::string& device_id,
                                                          uint64_t after) {
  // A revoked device still reads its events: that is how it learns it was revoked.
  Result<DeviceRecord> device = store_.GetDevice(device_id);
  if (!device) {
    if (device.error().code() == StatusCode::kNotFound) {
      return Unauthenticated("no enrolled device has the id in this client certificate");
    }
    return device.error();
  }
  CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceEvent> events,
                           store_.EventsAfter(device_id, after, options_.max_events_per_poll));
  protocol::EventsResponse out;
  out.last_seq = after;
  for (const DeviceEvent& e : events) {
    CUSTODY_ASSIGN_OR_RETURN(nlohmann::json doc,
                             protocol::ParseJsonObject(e.payload_json, 1 << 20, "event"));
    out.events.push_back({e.seq, e.type, std::move(doc)});
    out.last_seq = std::max(out.last_seq, e.seq);
  }
  return out;
}

// ----- usage and extensions --------------------------------------------------------------------

Result<nlohmann::json> CustodianService::ReportUsage(const std::string& device_id,
                                                     const protocol::UsageRequest& request) {
  CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, ActiveDevice(device_id));
  CUSTODY_RETURN_IF_ERROR(CheckNonce(device_id, request.nonce));
  tpm::NvCertifyExpectation expect{device.ak_public, request.nonce, device.counter_name,
                                   std::nullopt};
  CUSTODY_ASSIGN_OR_RETURN(uint64_t counter, tpm::VerifyNvCertify(request.counter_certify, expect));
  // The meter position the report's counts add up to: what the counter paid for, less what the
  // device says it paid for beyond them. All of the claim is credited: a larger claim only lowers
  // the position, hence the device's own limit (position + remaining); a smaller one raises it by
  // at most what was truly prepaid, and the counter bounds what the device ever served. Capping
  // the claim would be the real hole: a report sent again after the device served many more
  // requests legitimately carries a large prepaid, and a cap would count those requests as
  // metered while the counts that reach the remaining budget do not include them yet.
  CUSTODY_ASSIGN_OR_RETURN(const uint64_t paid, PaidRequests(counter, device.counter_unit));
  const uint64_t credited = request.prepaid;
  const uint64_t position = paid > credited ? paid - credited : 0;
  UsageReport report;
  report.report_id = request.report_id;
  report.device_id = device_id;
  report.counter_value = counter;
  report.received = clock_();
  report.rollback = device.last_counter && counter < *device.last_counter;
  for (const auto& c : request.counts) report.counts.push_back({c.model_id, c.client, c.count});
  bool duplicate = false;
  Status committed = store_.Transact([&](Transaction& tx) -> Status {
    Status put = tx.PutUsageReport(report);
    if (put.code() == StatusCode::kAlreadyExists) {
      duplicate = true;  // a retry of a report that was already counted: answer as before
      return OkStatus();
    }
    CUSTODY_RETURN_IF_ERROR(put);
    CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(request.nonce, device_id, clock_()));
    CUSTODY_ASSIGN_OR_RETURN(DeviceRecord current, tx.GetDevice(device_id));
    if (!report.rollback) {
      current.last_counter = std::max(current.last_counter.value_or(0), counter);
      current.meter_position = std::max(current.meter_position, position);
    }
    current.last_seen = clock_();
    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(current));
    nlohmann::json counts = nlohmann::json::array();
    for (const auto& c : request.counts) {
      counts.push_back({{"model_id", c.model_id}, {"client", c.client}, {"count", c.count}});
    }
    CUSTODY_RETURN_IF_ERROR(
        tx.Audit("device:" + device_id, report.rollback ? "usage.rollback" : "usage.report",
                 report.report_id,
                 {{"counter", counter},
                  {"last_counter", device.last_counter ? nlohmann::json(*device.last_counter)
                                                       : nlohmann::json(nullptr)},
                  {"counts", counts},
                  {"prepaid", request.prepaid},
                  {"credited", credited},
                  {"position", current.meter_position}}));
    if (!request.anomaly) return OkStatus();
    return tx.Audit("device:" + device_id, "device.meter_anomaly", device_id,
                    {{"report_id", report.report_id}, {"anomaly", *request.anomaly}});
  });
  if (committed.code() == StatusCode::kAlreadyExists) {
    return Unauthenticated("nonce was already used: a replayed usage report");
  }
  CUSTODY_RETURN_IF_ERROR(committed);
  if (report.rollback && !duplicate) {
    return FailedPrecondition("the certified usage counter went backwards (" +
                              std::to_string(counter) + " < " +
                              std::to_string(*device.last_counter) +
                              "): recorded as tampering (a restored disk image or another TPM)");
  }
  return nlohmann::json{{"accepted", true}, {"duplicate", duplicate}, {"counter", counter}};
}

Result<nlohmann::json> CustodianService::RequestExtension(
    const std::string& device_id, const protocol::ExtensionRequestMessage& request) {
  CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, ActiveDevice(device_id));
  CUSTODY_ASSIGN_OR_RETURN(LicenceRecord licence, store_.GetLicence(request.licence_id));
  const bool applies =
      licence.device_id == device_id || (!licence.group.empty() && licence.group == device.group);
  if (!applies) {
    return PermissionDenied("licence " + request.licence_id + " does not apply to this device");
  }
  if (!LicenceActive(licence, clock_())) {
    return FailedPrecondition("licence " + request.licence_id + " is revoked or expired");
  }
  // One request decided at a time: the allowance check below and the grant it leads to must not
  // interleave with another device's, or two requests could each fit the allowance and together
  // exceed it. (One custodian process owns its store; see OPERATIONS.md.)
  std::lock_guard<std::mutex> decide(extension_mu_);
  // A device that asks again while its earlier request for the licence still waits (its answer
  // was lost, or it restarted) gets that request back rather than a second one in the queue.
  CUSTODY_ASSIGN_OR_RETURN(std::vector<ExtensionRequest> pending,
                           store_.ListExtensions(ExtensionStatus::kPending));
  for (const ExtensionRequest& p : pending) {
    if (p.device_id == device_id && p.licence_id == licence.licence_id) return ExtensionJson(p);
  }
  ExtensionRequest e;
  e.request_id = RandomId("ext_", 8);
  e.device_id = device_id;
  e.licence_id = licence.licence_id;
  e.requested = request.requested;
  e.reason = request.reason;
  e.created = clock_();
  bool auto_approve = false;
  if (!licence.extension.manual) {
    const TimePoint since = clock_() - std::chrono::seconds(licence.extension.period_seconds);
    CUSTODY_ASSIGN_OR_RETURN(uint64_t granted, store_.GrantedSince(licence.licence_id, since));
    auto_approve = granted + request.requested <= licence.extension.auto_approve_up_to;
  }
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
    return tx.Audit(
        "device:" + device_id, "extension.request", e.request_id,
        {{"licence_id", e.licence_id}, {"requested", e.requested}, {"reason", e.reason}});
  }));
  // Within the licence's automatic allowance the policy decides at once (and the raised lease
  // is on the device's event stream when this returns); otherwise it waits for an operator.
  if (auto_approve) return ApproveExtension(Actor{"policy", "", ""}, e.request_id, e.requested);
  return ExtensionJson(e);
}

Result<nlohmann::json> CustodianService::ListExtensions(
    std::optional<ExtensionStatus> status) const {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<ExtensionRequest> list, store_.ListExtensions(status));
  nlohmann::json out = nlohmann::json::array();
  for (const ExtensionRequest& e : list) out.push_back(ExtensionJson(e));
  return out;
}

Result<nlohmann::json> CustodianService::ApproveExtension(const Actor& actor,
                                                          const std::string& request_id,
                                                          uint64_t granted) {
  ExtensionRequest e;
  std::optional<uint64_t> event_seq;
  std::string device_id;
  // Issued with the device's current state, in the transaction that records the decision: the
  // device gets a signed lease with the higher counter limit on its event stream at once.
  for (int attempt = 0; attempt < 3; ++attempt) {
    CUSTODY_ASSIGN_OR_RETURN(ExtensionRequest current, [&]() -> Result<ExtensionRequest> {
      Result<ExtensionRequest> r = Result<ExtensionRequest>(NotFound(""));
      CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
        r = tx.GetExtension(request_id);
        return OkStatus();
      }));
      return r;
    }());
    if (current.status != ExtensionStatus::kPending) {
      return FailedPrecondition("extension request " + request_id + " was already " +
                                StatusName(current.status));
    }
    e = current;
    e.status = ExtensionStatus::kApproved;
    e.granted = granted == 0 ? e.requested : granted;
    e.decided = clock_();
    e.decided_by = actor.AuditName();
    device_id = e.device_id;
    CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, store_.GetDevice(e.device_id));
    CUSTODY_ASSIGN_OR_RETURN(LicenceRecord licence, store_.GetLicence(e.licence_id));
    CUSTODY_ASSIGN_OR_RETURN(GroupRecord group, store_.GetGroup(device.group));
    CUSTODY_ASSIGN_OR_RETURN(std::vector<tpm::ApprovedPolicy> approvals,
                             ApprovalsFor(group, device));
    // Remaining() sees approved extensions from the store: count this one in by hand.
    LicenceRecord raised = licence;
    raised.budget += e.granted;
    std::optional<LeaseRecord> lease;
    if (!device.revoked && LicenceActive(licence, clock_())) {
      CUSTODY_ASSIGN_OR_RETURN(LeaseRecord l, BuildLease(device, raised, approvals));
      lease = std::move(l);
    }
    Status committed = store_.Transact([&](Transaction& tx) -> Status {
      CUSTODY_ASSIGN_OR_RETURN(ExtensionRequest stored, tx.GetExtension(request_id));
      if (stored.status != ExtensionStatus::kPending) {
        return FailedPrecondition("extension request " + request_id + " was already " +
                                  StatusName(stored.status));
      }
      CUSTODY_ASSIGN_OR_RETURN(DeviceRecord now_device, tx.GetDevice(device.device_id));
      if (lease && (now_device.lease_sequence + 1 != device.lease_sequence ||
                    now_device.revocation_epoch != device.revocation_epoch)) {
        return Unavailable("lease sequence moved");
      }
      CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
      CUSTODY_RETURN_IF_ERROR(
          tx.Audit(actor.AuditName(), "extension.approve", e.request_id, {{"granted", e.granted}}));
      if (!lease) return OkStatus();
      now_device.lease_sequence = device.lease_sequence;
      CUSTODY_RETURN_IF_ERROR(tx.PutDevice(now_device));
      CUSTODY_ASSIGN_OR_RETURN(uint64_t seq,
                               RecordLease(tx, *lease, actor, "extension " + e.request_id));
      event_seq = seq;
      return OkStatus();
    });
    if (committed.code() == StatusCode::kUnavailable) continue;  // raced another lease: redo
    CUSTODY_RETURN_IF_ERROR(committed);
    if (event_seq) Notify({device_id});
    return ExtensionJson(e);
  }
  return Unavailable("the device's leases kept changing while approving; retry");
}

Result<uint64_t> CustodianService::RecordLease(Transaction& tx, const LeaseRecord& lease,
                                               const Actor& actor,
                                               const std::string& reason) const {
  CUSTODY_RETURN_IF_ERROR(tx.PutLease(lease));
  CUSTODY_ASSIGN_OR_RETURN(
      uint64_t seq, tx.AddEvent({0, lease.device_id, "lease", lease.envelope_json, clock_()}));
  CUSTODY_RETURN_IF_ERROR(tx.Audit(actor.AuditName(), "lease.issue", lease.lease_id,
                                   {{"device_id", lease.device_id},
                                    {"licence_id", lease.licence_id},
                                    {"sequence", lease.sequence},
                                    {"counter_limit", lease.counter_limit},
                                    {"reason", reason}}));
  return seq;
}

Status CustodianService::PushLeases(const Actor& actor, const std::vector<DeviceRecord>& devices,
                                    const std::string& only_licence, const std::string& reason) {
  std::vector<std::string> notified;
  for (const DeviceRecord& listed : devices) {
    // A device that never attested gets its first lease from an attestation, not from here.
    if (listed.revoked || listed.lease_sequence == 0) continue;
    Status pushed = Unavailable(
        "the device's leases kept changing; it gets them at its next "
        "attestation");
    for (int attempt = 0; attempt < 3 && pushed.code() == StatusCode::kUnavailable; ++attempt) {
      CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, store_.GetDevice(listed.device_id));
      if (device.revoked) break;
      CUSTODY_ASSIGN_OR_RETURN(GroupRecord group, store_.GetGroup(device.group));
      CUSTODY_ASSIGN_OR_RETURN(std::vector<tpm::ApprovedPolicy> approvals,
                               ApprovalsFor(group, device));
      CUSTODY_ASSIGN_OR_RETURN(std::vector<LicenceRecord> licences,
                               store_.LicencesForDevice(device.device_id, device.group));
      const uint64_t read_sequence = device.lease_sequence;
      std::vector<LeaseRecord> leases;
      for (const LicenceRecord& l : licences) {
        if (!only_licence.empty() && l.licence_id != only_licence) continue;
        if (!LicenceActive(l, clock_())) continue;
        Result<LeaseRecord> lease = BuildLease(device, l, approvals);
        if (!lease && lease.error().code() == StatusCode::kFailedPrecondition) continue;
        if (!lease) return lease.error();
        leases.push_back(std::move(lease).value());
      }
      if (leases.empty()) break;
      pushed = store_.Transact([&](Transaction& tx) -> Status {
        CUSTODY_ASSIGN_OR_RETURN(DeviceRecord current, tx.GetDevice(device.device_id));
        if (current.revoked) return OkStatus();
        if (current.lease_sequence != read_sequence ||
            current.revocation_epoch != device.revocation_epoch) {
          return Unavailable("lease sequence moved");
        }
        current.lease_sequence = device.lease_sequence;
        CUSTODY_RETURN_IF_ERROR(tx.PutDevice(current));
        for (const LeaseRecord& l : leases) {
          CUSTODY_RETURN_IF_ERROR(RecordLease(tx, l, actor, reason).status());
        }
        return OkStatus();
      });
      if (pushed.ok()) notified.push_back(device.device_id);
    }
    if (!pushed.ok() && pushed.code() != StatusCode::kUnavailable) return pushed;
  }
  Notify(notified);
  return OkStatus();
}

Result<nlohmann::json> CustodianService::DenyExtension(const Actor& actor,
                                                       const std::string& request_id,
                                                       const std::string& reason) {
  ExtensionRequest e;
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(e, tx.GetExtension(request_id));
    if (e.status != ExtensionStatus::kPending) {
      return FailedPrecondition("extension request " + request_id + " was already " +
                                StatusName(e.status));
    }
    e.status = ExtensionStatus::kDenied;
    e.decided = clock_();
    e.decided_by = actor.AuditName();
    CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
    return tx.Audit(actor.AuditName(), "extension.deny", request_id, {{"reason", reason}});
  }));
  return ExtensionJson(e);
}

// ----- the stop switch -------------------------------------------------------------------------

Result<std::vector<std::string>> CustodianService::SignRevocations(
    const std::vector<DeviceRecord>& devices, const std::string& scope, const std::string& id,
    const std::string& reason) const {
  std::vector<Result<std::string>> docs(devices.size(), std::string());
  auto sign_range = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      DeviceRecord next = devices[i];
      ++next.revocation_epoch;  // the epoch the transaction will give it
      Result<nlohmann::json> doc = RevocationDocument(next, scope, id, reason);
      docs[i] = doc ? Result<std::string>(doc->dump()) : Result<std::string>(doc.error());
    }
  };
  // A handful of devices is signed here; a fleet is split over the cores (each signature is an
  // Ed25519 signing, about a third of a revocation's time per device).
  constexpr size_t kPerThread = 256;
  const size_t threads = std::clamp<size_t>(devices.size() / kPerThread, 1,
                                            std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> workers;
  const size_t chunk = (devices.size() + threads - 1) / threads;
  for (size_t t = 1; t < threads; ++t) {
    workers.emplace_back(sign_range, std::min(devices.size(), t * chunk),
                         std::min(devices.size(), (t + 1) * chunk));
  }
  sign_range(0, std::min(devices.size(), chunk));
  for (std::thread& w : workers) w.join();
  std::vector<std::string> out;
  out.reserve(docs.size());
  for (Result<std::string>& d : docs) {
    if (!d) return d.error();
    out.push_back(std::move(*d));
  }
  return out;
}

Result<nlohmann::json> CustodianService::Revoke(const Actor& actor, const std::string& scope,
                                                const std::string& id, const std::string& reason) {
  std::vector<DeviceRecord> affected;
  if (scope == "device") {
    CUSTODY_ASSIGN_OR_RETURN(DeviceRecord device, store_.GetDevice(id));
    affected.push_back(std::move(device));
  } else if (scope == "licence" || scope == "model") {
    std::set<std::string> with_model;
    LicenceRecord licence;
    if (scope == "licence") {
      CUSTODY_ASSIGN_OR_RETURN(licence, store_.GetLicence(id));
    } else {
      CUSTODY_RETURN_IF_ERROR(store_.GetModel(id).status());
      CUSTODY_ASSIGN_OR_RETURN(std::vector<std::string> ids, store_.DevicesWithModel(id));
      with_model.insert(ids.begin(), ids.end());
    }
    CUSTODY_ASSIGN_OR_RETURN(std::vector<DeviceRecord> devices, store_.ListDevices());
    for (DeviceRecord& d : devices) {
      const bool hit = scope == "model" ? with_model.count(d.device_id) > 0
                                        : d.device_id == licence.device_id ||
                                              (!licence.group.empty() && d.group == licence.group);
      if (hit) affected.push_back(std::move(d));
    }
  } else {
    return InvalidArgument("scope must be device, licence or model, got '" + scope + "'");
  }
  if (reason.empty()) return InvalidArgument("a revocation needs a reason (it is audited)");
  // Signed before the transaction, which then only writes: the store commits one change at a
  // time, and a fleet's worth of signatures would hold every other change up.
  CUSTODY_ASSIGN_OR_RETURN(std::vector<std::string> docs,
                           SignRevocations(affected, scope, id, reason));
  const TimePoint now = clock_();
  CUSTODY_RETURN_IF_ERROR(store_.Transact([&](Transaction& tx) -> Status {
    if (scope == "licence") {
      CUSTODY_ASSIGN_OR_RETURN(LicenceRecord l, tx.GetLicence(id));
      l.revoked = now;
      l.revoked_reason = reason;
      CUSTODY_RETURN_IF_ERROR(tx.PutLicence(l));
    } else if (scope == "model") {
      CUSTODY_RETURN_IF_ERROR(tx.RetireModel(id, now));
    }
    for (size_t i = 0; i < affected.size(); ++i) {
      CUSTODY_ASSIGN_OR_RETURN(DeviceRecord d, tx.GetDevice(affected[i].device_id));
      ++d.revocation_epoch;
      if (scope == "device") {
        d.revoked = now;
        d.revoked_reason = reason;
      }
      CUSTODY_RETURN_IF_ERROR(tx.PutDevice(d));
      if (d.revocation_epoch != affected[i].revocation_epoch + 1) {
        // Another revocation of this device committed since the documents were signed.
        CUSTODY_ASSIGN_OR_RETURN(nlohmann::json doc, RevocationDocument(d, scope, id, reason));
        docs[i] = doc.dump();
      }
      CUSTODY_RETURN_IF_ERROR(tx.AddEvent({0, d.device_id, "revocation", docs[i], now}).status());
    }
    return tx.Audit(actor.AuditName(), scope + ".revoke", id,
                    {{"reason", reason}, {"devices", affected.size()}});
  }));
  std::vector<std::string> notified;
  notified.reserve(affected.size());
  for (const DeviceRecord& d : affected) notified.push_back(d.device_id);
  Notify(notified);
  return nlohmann::json{{"scope", scope}, {"id", id}, {"devices_notified", notified.size()}};
}

Status CustodianService::RetireModel(const Actor& actor, const std::string& model_id,
                                     const std::string& reason) {
  return Revoke(actor, "model", model_id, reason.empty() ? "retired" : reason).status();
}

}  // namespace custody::custodian
