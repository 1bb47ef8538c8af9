#include "custodian/store/sqlite_records.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <limits>
#include <map>
#include <utility>
#include <variant>

#include "core/format/sealed.h"  // FormatTimestamp

namespace custody::custodian::sqlite {
namespace {

using nlohmann::json;
using protocol::AuditEntry;

// ----- helpers ------------------------------------------------------------------------------

// Tokens, token hashes and nonces are named by a prefix of their hex, enough to find them.
std::string ShortHex(ByteSpan b) {
  return HexEncode(b.first(std::min<size_t>(b.size(), 8))) + (b.size() > 8 ? "..." : "");
}

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

Status Corrupt(const std::string& what) {
  return DataLoss("stored " + what + " is malformed (the database was edited or is corrupt)");
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return b > std::numeric_limits<uint64_t>::max() - a ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

// Sequence numbers in SQL are signed 64-bit; none is ever above INT64_MAX.
int64_t ClampToInt64(uint64_t v) {
  return static_cast<int64_t>(std::min<uint64_t>(v, std::numeric_limits<int64_t>::max()));
}

// nlohmann's dump() throws on strings that are not UTF-8: that is the caller's input.
Result<std::string> DumpJson(const json& j, const std::string& what) {
  try {
    return j.dump();
  } catch (const json::exception&) {
    return InvalidArgument(what + " holds a string that is not valid UTF-8");
  }
}

Result<json> ParseStoredJson(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Corrupt(what);
  return j;
}

json PcrsToJson(const std::map<uint32_t, Bytes>& pcrs) {
  json j = json::object();
  for (const auto& [index, value] : pcrs) j[std::to_string(index)] = HexEncode(value);
  return j;
}

Result<std::map<uint32_t, Bytes>> PcrsFromJson(const json& j, const std::string& what) {
  if (!j.is_object()) return Corrupt(what);
  std::map<uint32_t, Bytes> pcrs;
  for (const auto& [key, value] : j.items()) {
    uint32_t index = 0;
    auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), index);
    if (ec != std::errc() || end != key.data() + key.size() || !value.is_string()) {
      return Corrupt(what);
    }
    Result<Bytes> bytes = HexDecode(value.get_ref<const std::string&>());
    if (!bytes) return Corrupt(what);
    pcrs[index] = std::move(*bytes);
  }
  return pcrs;
}

// A row that another row refers to; checked only to explain a foreign key failure.
struct Reference {
  const char* entity;                            // "model"
  const char* exists_sql;                        // "SELECT 1 FROM models WHERE model_id = ?"
  std::variant<std::string_view, ByteSpan> key;  // views of the record being written
};

constexpr char kModelExists[] = "SELECT 1 FROM models WHERE model_id = ?";
constexpr char kDeviceExists[] = "SELECT 1 FROM devices WHERE device_id = ?";
constexpr char kGroupExists[] = "SELECT 1 FROM device_groups WHERE name = ?";
constexpr char kLicenceExists[] = "SELECT 1 FROM licences WHERE licence_id = ?";
constexpr char kEnrollmentTokenExists[] = "SELECT 1 FROM enrollment_tokens WHERE token_hash = ?";

// NameEntity, and for a foreign key failure the reference that is missing.
Status Explain(Connection& c, const Status& s, const std::string& what,
               std::initializer_list<Reference> refs = {}) {
  if (s.code() != StatusCode::kNotFound) return NameEntity(s, what);
  for (const Reference& r : refs) {
    const bool unset = std::visit([](const auto& k) { return k.empty(); }, r.key);
    if (unset) continue;  // e.g. the device of a licence that is for a group
    Result<Statement> q = c.Prepare(r.exists_sql);
    if (!q) break;
    std::visit([&](const auto& k) { q->Bind(k); }, r.key);
    Result<bool> found = q->Step();
    if (!found) break;
    if (!*found) {
      const std::string key = std::holds_alternative<std::string_view>(r.key)
                                  ? Quoted(std::string(std::get<std::string_view>(r.key)))
                                  : ShortHex(std::get<ByteSpan>(r.key));
      return NotFound(what + ": " + r.entity + " " + key + " does not exist");
    }
  }
  return NameEntity(s, what);
}

// Runs a statement that must change one row; kNotFound naming `what` otherwise.
template <typename... Args>
Status UpdateOne(Connection& c, const std::string& what, std::string_view sql,
                 const Args&... args) {
  CUSTODY_RETURN_IF_ERROR(NameEntity(RunStatement(c, sql, args...), what));
  if (c.changes() == 0) return NotFound(what + " does not exist");
  return OkStatus();
}

// Every row of a query, decoded by `read`.
template <typename T, typename Read, typename... Args>
Result<std::vector<T>> QueryAll(Connection& c, std::string_view sql, Read read,
                                const Args&... args) {
  CUSTODY_ASSIGN_OR_RETURN(Statement s, c.Prepare(sql));
  s.Bind(args...);
  std::vector<T> out;
  while (true) {
    CUSTODY_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    CUSTODY_ASSIGN_OR_RETURN(T value, read(s));
    out.push_back(std::move(value));
  }
}

// The first row of a query, or nullopt.
template <typename T, typename Read, typename... Args>
Result<std::optional<T>> QueryFirst(Connection& c, std::string_view sql, Read read,
                                    const Args&... args) {
  CUSTODY_ASSIGN_OR_RETURN(Statement s, c.Prepare(sql));
  s.Bind(args...);
  CUSTODY_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<T>();
  CUSTODY_ASSIGN_OR_RETURN(T value, read(s));
  return std::optional<T>(std::move(value));
}

// The one row a key names; kNotFound naming `what` otherwise.
template <typename T, typename Read, typename... Args>
Result<T> QueryOne(Connection& c, const std::string& what, std::string_view sql, Read read,
                   const Args&... args) {
  CUSTODY_ASSIGN_OR_RETURN(std::optional<T> value, QueryFirst<T>(c, sql, read, args...));
  if (!value) return NotFound(what + " does not exist");
  return std::move(*value);
}

// ----- enums --------------------------------------------------------------------------------
// These names are the database encoding (the schema's CHECK constraints name them): they never
// change, whatever the API or the logs call the same values.

const char* RoleName(Role r) {
  switch (r) {
    case Role::kViewer:
      return "viewer";
    case Role::kOperator:
      return "operator";
    case Role::kAdmin:
      return "admin";
  }
  Panic("unknown Role");
}

Result<Role> RoleFromName(const std::string& s) {
  for (Role r : {Role::kViewer, Role::kOperator, Role::kAdmin}) {
    if (s == RoleName(r)) return r;
  }
  return Corrupt("api token role '" + s + "'");
}

const char* ExtensionStatusName(ExtensionStatus s) {
  switch (s) {
    case ExtensionStatus::kPending:
      return "pending";
    case ExtensionStatus::kApproved:
      return "approved";
    case ExtensionStatus::kDenied:
      return "denied";
  }
  Panic("unknown ExtensionStatus");
}

Result<ExtensionStatus> ExtensionStatusFromName(const std::string& s) {
  for (ExtensionStatus e :
       {ExtensionStatus::kPending, ExtensionStatus::kApproved, ExtensionStatus::kDenied}) {
    if (s == ExtensionStatusName(e)) return e;
  }
  return Corrupt("extension status '" + s + "'");
}

// ----- api tokens ---------------------------------------------------------------------------

#define CUSTODY_TOKEN_COLUMNS "id, name, role, token_hash, created, revoked"

Result<ApiToken> ReadToken(const Statement& s) {
  ApiToken t;
  t.id = s.Text(0);
  t.name = s.Text(1);
  CUSTODY_ASSIGN_OR_RETURN(t.role, RoleFromName(s.Text(2)));
  t.token_hash = s.Blob(3);
  t.created = s.Time(4);
  t.revoked = s.OptionalTime(5);
  return t;
}

// ----- models -------------------------------------------------------------------------------

#define CUSTODY_MODEL_COLUMNS "model_id, name, version, dek_sealed, sealed_sha256, created, retired"

Result<ModelRecord> ReadModel(const Statement& s) {
  ModelRecord m;
  m.model_id = s.Text(0);
  m.name = s.Text(1);
  m.version = s.Text(2);
  m.dek_sealed = s.Blob(3);
  m.sealed_sha256 = s.Text(4);
  m.created = s.Time(5);
  m.retired = s.OptionalTime(6);
  return m;
}

// ----- groups -------------------------------------------------------------------------------

#define CUSTODY_GROUP_COLUMNS \
  "name, pcr_selection, allow_tofu, require_ek_certificate, golden, approvals, created"

Result<GroupRecord> ReadGroup(const Statement& s) {
  GroupRecord g;
  g.name = s.Text(0);
  const std::string what = "group " + Quoted(g.name);
  CUSTODY_ASSIGN_OR_RETURN(json selection, ParseStoredJson(s.Text(1), what + " PCR selection"));
  if (!selection.is_array()) return Corrupt(what + " PCR selection");
  for (const json& v : selection) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > UINT32_MAX) {
      return Corrupt(what + " PCR selection");
    }
    g.pcr_selection.push_back(v.get<uint32_t>());
  }
  g.allow_tofu = s.Bool(2);
  g.require_ek_certificate = s.Bool(3);
  CUSTODY_ASSIGN_OR_RETURN(json golden, ParseStoredJson(s.Text(4), what + " golden sets"));
  if (!golden.is_array()) return Corrupt(what + " golden sets");
  for (const json& set : golden) {
    if (!set.is_object() || !set.contains("name") || !set["name"].is_string() ||
        !set.contains("pcrs")) {
      return Corrupt(what + " golden sets");
    }
    GoldenSetRecord record;
    record.name = set["name"].get<std::string>();
    CUSTODY_ASSIGN_OR_RETURN(record.pcrs, PcrsFromJson(set["pcrs"], what + " golden sets"));
    g.golden.push_back(std::move(record));
  }
  CUSTODY_ASSIGN_OR_RETURN(json approvals, ParseStoredJson(s.Text(5), what + " approvals"));
  if (!approvals.is_array()) return Corrupt(what + " approvals");
  for (const json& a : approvals) {
    if (!a.is_string()) return Corrupt(what + " approvals");
    g.approvals_json.push_back(a.get<std::string>());
  }
  g.created = s.Time(6);
  return g;
}

// ----- enrollment ---------------------------------------------------------------------------

#define CUSTODY_ENROLLMENT_TOKEN_COLUMNS \
  "token_hash, group_name, created, expires, used, used_by_device, created_by"

std::string EnrollmentTokenName(ByteSpan token_hash) {
  return "enrollment token " + ShortHex(token_hash);
}

Result<EnrollmentTokenRecord> ReadEnrollmentToken(const Statement& s) {
  EnrollmentTokenRecord t;
  t.token_hash = s.Blob(0);
  t.group = s.Text(1);
  t.created = s.Time(2);
  t.expires = s.Time(3);
  t.used = s.OptionalTime(4);
  t.used_by_device = s.Text(5);
  t.created_by = s.Text(6);
  return t;
}

#define CUSTODY_PENDING_COLUMNS                                                 \
  "id, token_hash, group_name, ek_public, ek_certificate, ek_type, ak_public, " \
  "credential_secret_hash, certify_nonce, expires"

Result<PendingEnrollment> ReadPending(const Statement& s) {
  PendingEnrollment p;
  p.id = s.Text(0);
  p.token_hash = s.Blob(1);
  p.group = s.Text(2);
  p.ek_public = s.Blob(3);
  p.ek_certificate = s.OptionalBlob(4);
  p.ek_type = static_cast<int>(s.Int(5));
  p.ak_public = s.Blob(6);
  p.credential_secret_hash = s.Blob(7);
  p.certify_nonce = s.Blob(8);
  p.expires = s.Time(9);
  return p;
}

// ----- devices ------------------------------------------------------------------------------

#define CUSTODY_DEVICE_COLUMNS                                                                  \
  "device_id, group_name, ek_public, ek_name, ak_public, binding_public, counter_index, "       \
  "counter_name, tls_serial, tls_public_key, enrolled, revoked, revoked_reason, last_counter, " \
  "last_seen, lease_sequence, revocation_epoch, tofu_pcrs, counter_unit, meter_position, "      \
  "attested_tpm_clock_ms, attested_tpm_reset_count"

Result<DeviceRecord> ReadDevice(const Statement& s) {
  DeviceRecord d;
  d.device_id = s.Text(0);
  d.group = s.Text(1);
  d.ek_public = s.Blob(2);
  d.ek_name = s.Blob(3);
  d.ak_public = s.Blob(4);
  d.binding_public = s.Blob(5);
  d.counter_index = static_cast<uint32_t>(s.Int(6));
  d.counter_name = s.Blob(7);
  d.tls_serial = s.Text(8);
  d.tls_public_key = s.Blob(9);
  d.enrolled = s.Time(10);
  d.revoked = s.OptionalTime(11);
  d.revoked_reason = s.Text(12);
  d.last_counter = s.OptionalUint(13);
  d.last_seen = s.OptionalTime(14);
  d.lease_sequence = s.Uint(15);
  d.revocation_epoch = s.Uint(16);
  const std::string what = "device " + Quoted(d.device_id) + " TOFU PCRs";
  CUSTODY_ASSIGN_OR_RETURN(json tofu, ParseStoredJson(s.Text(17), what));
  CUSTODY_ASSIGN_OR_RETURN(d.tofu_pcrs, PcrsFromJson(tofu, what));
  d.counter_unit = s.Uint(18);
  if (d.counter_unit == 0) return Corrupt("device " + Quoted(d.device_id) + " counter unit");
  d.meter_position = s.Uint(19);
  d.attested_tpm_clock_ms = s.OptionalUint(20);
  if (const std::optional<uint64_t> resets = s.OptionalUint(21)) {
    if (*resets > UINT32_MAX) return Corrupt("device " + Quoted(d.device_id) + " TPM reset count");
    d.attested_tpm_reset_count = static_cast<uint32_t>(*resets);
  }
  return d;
}

// ----- licences -----------------------------------------------------------------------------

#define CUSTODY_LICENCE_COLUMNS                                                              \
  "licence_id, model_id, device_id, group_name, budget, used, not_after, offline_grace_ms, " \
  "ext_manual, ext_auto_approve_up_to, ext_period_seconds, created, revoked, revoked_reason"

std::optional<std::string> NullIfEmpty(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

Result<LicenceRecord> ReadLicence(const Statement& s) {
  LicenceRecord l;
  l.licence_id = s.Text(0);
  l.model_id = s.Text(1);
  l.device_id = s.Text(2);
  l.group = s.Text(3);
  l.budget = s.Uint(4);
  l.used = s.Uint(5);
  l.not_after = s.Time(6);
  l.offline_grace_ms = s.Uint(7);
  l.extension.manual = s.Bool(8);
  l.extension.auto_approve_up_to = s.Uint(9);
  l.extension.period_seconds = s.Uint(10);
  l.created = s.Time(11);
  l.revoked = s.OptionalTime(12);
  l.revoked_reason = s.Text(13);
  return l;
}

// ----- leases -------------------------------------------------------------------------------

#define CUSTODY_LEASE_COLUMNS                                                       \
  "lease_id, device_id, licence_id, model_id, sequence, counter_limit, not_after, " \
  "offline_grace_ms, revocation_epoch, issued, envelope_json"

Result<LeaseRecord> ReadLease(const Statement& s) {
  LeaseRecord l;
  l.lease_id = s.Text(0);
  l.device_id = s.Text(1);
  l.licence_id = s.Text(2);
  l.model_id = s.Text(3);
  l.sequence = s.Uint(4);
  l.counter_limit = s.Uint(5);
  l.not_after = s.Time(6);
  l.offline_grace_ms = s.Uint(7);
  l.revocation_epoch = s.Uint(8);
  l.issued = s.Time(9);
  l.envelope_json = s.Text(10);
  return l;
}

// ----- extensions ---------------------------------------------------------------------------

#define CUSTODY_EXTENSION_COLUMNS                                                       \
  "request_id, device_id, licence_id, requested, reason, status, granted, decided_by, " \
  "decided, created"

Result<ExtensionRequest> ReadExtension(const Statement& s) {
  ExtensionRequest e;
  e.request_id = s.Text(0);
  e.device_id = s.Text(1);
  e.licence_id = s.Text(2);
  e.requested = s.Uint(3);
  e.reason = s.Text(4);
  CUSTODY_ASSIGN_OR_RETURN(e.status, ExtensionStatusFromName(s.Text(5)));
  e.granted = s.Uint(6);
  e.decided_by = s.Text(7);
  e.decided = s.OptionalTime(8);
  e.created = s.Time(9);
  return e;
}

// ----- events and audit ---------------------------------------------------------------------

#define CUSTODY_EVENT_COLUMNS "seq, device_id, type, payload_json, created"

Result<DeviceEvent> ReadEvent(const Statement& s) {
  DeviceEvent e;
  e.seq = s.Uint(0);
  e.device_id = s.Text(1);
  e.type = s.Text(2);
  e.payload_json = s.Text(3);
  e.created = s.Time(4);
  return e;
}

#define CUSTODY_AUDIT_COLUMNS "seq, time, actor, action, subject, details, prev_hash, hash"

Result<AuditEntry> ReadAudit(const Statement& s) {
  AuditEntry e;
  e.seq = s.Uint(0);
  e.time = s.Text(1);
  e.actor = s.Text(2);
  e.action = s.Text(3);
  e.subject = s.Text(4);
  e.details = s.Text(5);
  const Bytes prev = s.Blob(6);
  const Bytes hash = s.Blob(7);
  if (prev.size() != e.prev_hash.size() || hash.size() != e.hash.size()) {
    return Corrupt("audit entry " + std::to_string(e.seq) + " hash");
  }
  std::copy(prev.begin(), prev.end(), e.prev_hash.begin());
  std::copy(hash.begin(), hash.end(), e.hash.begin());
  return e;
}

}  // namespace

// ----- api tokens ---------------------------------------------------------------------------

Status InsertToken(Connection& c, const ApiToken& token) {
  return NameEntity(
      RunStatement(c,
                   "INSERT INTO api_tokens (" CUSTODY_TOKEN_COLUMNS ") VALUES (?, ?, ?, ?, ?, ?)",
                   token.id, token.name, RoleName(token.role), token.token_hash, token.created,
                   token.revoked),
      "api token " + Quoted(token.id));
}

Status RevokeToken(Connection& c, const std::string& id, TimePoint when) {
  // A second revocation keeps the first time.
  return UpdateOne(c, "api token " + Quoted(id),
                   "UPDATE api_tokens SET revoked = COALESCE(revoked, ?) WHERE id = ?", when, id);
}

Result<std::optional<ApiToken>> FindTokenByHash(Connection& c, ByteSpan token_hash) {
  return QueryFirst<ApiToken>(
      c, "SELECT " CUSTODY_TOKEN_COLUMNS " FROM api_tokens WHERE token_hash = ?", ReadToken,
      token_hash);
}

Result<std::vector<ApiToken>> ListTokens(Connection& c) {
  return QueryAll<ApiToken>(
      c, "SELECT " CUSTODY_TOKEN_COLUMNS " FROM api_tokens ORDER BY created, id", ReadToken);
}

// ----- models -------------------------------------------------------------------------------

Status InsertModel(Connection& c, const ModelRecord& m) {
  return NameEntity(
      RunStatement(c, "INSERT INTO models (" CUSTODY_MODEL_COLUMNS ") VALUES (?, ?, ?, ?, ?, ?, ?)",
                   m.model_id, m.name, m.version, m.dek_sealed, m.sealed_sha256, m.created,
                   m.retired),
      "model " + Quoted(m.model_id));
}

Status RetireModel(Connection& c, const std::string& model_id, TimePoint when) {
  return UpdateOne(c, "model " + Quoted(model_id),
                   "UPDATE models SET retired = COALESCE(retired, ?) WHERE model_id = ?", when,
                   model_id);
}

Result<ModelRecord> GetModel(Connection& c, const std::string& model_id) {
  return QueryOne<ModelRecord>(c, "model " + Quoted(model_id),
                               "SELECT " CUSTODY_MODEL_COLUMNS " FROM models WHERE model_id = ?",
                               ReadModel, model_id);
}

Result<std::vector<ModelRecord>> ListModels(Connection& c) {
  return QueryAll<ModelRecord>(
      c, "SELECT " CUSTODY_MODEL_COLUMNS " FROM models ORDER BY created, model_id", ReadModel);
}

// ----- groups -------------------------------------------------------------------------------

Status UpsertGroup(Connection& c, const GroupRecord& g) {
  const std::string what = "group " + Quoted(g.name);
  json golden = json::array();
  for (const GoldenSetRecord& set : g.golden) {
    golden.push_back(json{{"name", set.name}, {"pcrs", PcrsToJson(set.pcrs)}});
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string selection_text, DumpJson(g.pcr_selection, what));
  CUSTODY_ASSIGN_OR_RETURN(std::string golden_text, DumpJson(golden, what + " golden sets"));
  CUSTODY_ASSIGN_OR_RETURN(std::string approvals_text,
                           DumpJson(g.approvals_json, what + " approvals"));
  return NameEntity(
      RunStatement(c,
                   "INSERT INTO device_groups (" CUSTODY_GROUP_COLUMNS
                   ") VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                   "pcr_selection = excluded.pcr_selection, allow_tofu = excluded.allow_tofu, "
                   "require_ek_certificate = excluded.require_ek_certificate, "
                   "golden = excluded.golden, approvals = excluded.approvals, "
                   "created = excluded.created",
                   g.name, selection_text, g.allow_tofu, g.require_ek_certificate, golden_text,
                   approvals_text, g.created),
      what);
}

Result<GroupRecord> GetGroup(Connection& c, const std::string& name) {
  return QueryOne<GroupRecord>(c, "group " + Quoted(name),
                               "SELECT " CUSTODY_GROUP_COLUMNS " FROM device_groups WHERE name = ?",
                               ReadGroup, name);
}

Result<std::vector<GroupRecord>> ListGroups(Connection& c) {
  return QueryAll<GroupRecord>(
      c, "SELECT " CUSTODY_GROUP_COLUMNS " FROM device_groups ORDER BY name", ReadGroup);
}

// ----- enrollment ---------------------------------------------------------------------------

Status InsertEnrollmentToken(Connection& c, const EnrollmentTokenRecord& t) {
  const std::string what = EnrollmentTokenName(t.token_hash);
  Status s = RunStatement(c,
                          "INSERT INTO enrollment_tokens (" CUSTODY_ENROLLMENT_TOKEN_COLUMNS
                          ") VALUES (?, ?, ?, ?, ?, ?, ?)",
                          t.token_hash, t.group, t.created, t.expires, t.used, t.used_by_device,
                          t.created_by);
  return Explain(c, s, what, {{"group", kGroupExists, t.group}});
}

Result<EnrollmentTokenRecord> GetEnrollmentToken(Connection& c, ByteSpan token_hash) {
  return QueryOne<EnrollmentTokenRecord>(c, EnrollmentTokenName(token_hash),
                                         "SELECT " CUSTODY_ENROLLMENT_TOKEN_COLUMNS
                                         " FROM enrollment_tokens WHERE token_hash = ?",
                                         ReadEnrollmentToken, token_hash);
}

Status UseEnrollmentToken(Connection& c, ByteSpan token_hash, const std::string& device_id,
                          TimePoint when) {
  const std::string what = EnrollmentTokenName(token_hash);
  CUSTODY_ASSIGN_OR_RETURN(EnrollmentTokenRecord t, GetEnrollmentToken(c, token_hash));
  if (t.used) {
    return FailedPrecondition(what + " was already used (by device " + Quoted(t.used_by_device) +
                              " at " + format::FormatTimestamp(*t.used) + ")");
  }
  if (when >= t.expires) {
    return FailedPrecondition(what + " expired at " + format::FormatTimestamp(t.expires));
  }
  return UpdateOne(c, what,
                   "UPDATE enrollment_tokens SET used = ?, used_by_device = ? "
                   "WHERE token_hash = ? AND used IS NULL",
                   when, device_id, token_hash);
}

Status InsertPendingEnrollment(Connection& c, const PendingEnrollment& p) {
  Status s = RunStatement(c,
                          "INSERT INTO pending_enrollments (" CUSTODY_PENDING_COLUMNS
                          ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          p.id, p.token_hash, p.group, p.ek_public, p.ek_certificate, p.ek_type,
                          p.ak_public, p.credential_secret_hash, p.certify_nonce, p.expires);
  return Explain(c, s, "pending enrollment " + Quoted(p.id),
                 {{"group", kGroupExists, p.group},
                  {"enrollment token", kEnrollmentTokenExists, p.token_hash}});
}

Status DeletePendingEnrollment(Connection& c, const std::string& id) {
  return UpdateOne(c, "pending enrollment " + Quoted(id),
                   "DELETE FROM pending_enrollments WHERE id = ?", id);
}

Result<PendingEnrollment> GetPendingEnrollment(Connection& c, const std::string& id) {
  return QueryOne<PendingEnrollment>(
      c, "pending enrollment " + Quoted(id),
      "SELECT " CUSTODY_PENDING_COLUMNS " FROM pending_enrollments WHERE id = ?", ReadPending, id);
}

// ----- devices ------------------------------------------------------------------------------

Status UpsertDevice(Connection& c, const DeviceRecord& d) {
  const std::string what = "device " + Quoted(d.device_id);
  CUSTODY_ASSIGN_OR_RETURN(std::string tofu, DumpJson(PcrsToJson(d.tofu_pcrs), what));
  Status s = RunStatement(
      c,
      "INSERT INTO devices (" CUSTODY_DEVICE_COLUMNS
      ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
      "ON CONFLICT (device_id) DO UPDATE SET group_name = excluded.group_name, "
      "ek_public = excluded.ek_public, ek_name = excluded.ek_name, "
      "ak_public = excluded.ak_public, binding_public = excluded.binding_public, "
      "counter_index = excluded.counter_index, counter_name = excluded.counter_name, "
      "tls_serial = excluded.tls_serial, tls_public_key = excluded.tls_public_key, "
      "enrolled = excluded.enrolled, revoked = excluded.revoked, "
      "revoked_reason = excluded.revoked_reason, last_counter = excluded.last_counter, "
      "last_seen = excluded.last_seen, lease_sequence = excluded.lease_sequence, "
      "revocation_epoch = excluded.revocation_epoch, tofu_pcrs = excluded.tofu_pcrs, "
      "counter_unit = excluded.counter_unit, meter_position = excluded.meter_position, "
      "attested_tpm_clock_ms = excluded.attested_tpm_clock_ms, "
      "attested_tpm_reset_count = excluded.attested_tpm_reset_count",
      d.device_id, d.group, d.ek_public, d.ek_name, d.ak_public, d.binding_public, d.counter_index,
      d.counter_name, d.tls_serial, d.tls_public_key, d.enrolled, d.revoked, d.revoked_reason,
      d.last_counter, d.last_seen, d.lease_sequence, d.revocation_epoch, tofu, d.counter_unit,
      d.meter_position, d.attested_tpm_clock_ms, d.attested_tpm_reset_count);
  return Explain(c, s, what, {{"group", kGroupExists, d.group}});
}

Result<DeviceRecord> GetDevice(Connection& c, const std::string& device_id) {
  return QueryOne<DeviceRecord>(
      c, "device " + Quoted(device_id),
      "SELECT " CUSTODY_DEVICE_COLUMNS " FROM devices WHERE device_id = ?", ReadDevice, device_id);
}

Result<std::vector<DeviceRecord>> ListDevices(Connection& c) {
  return QueryAll<DeviceRecord>(
      c, "SELECT " CUSTODY_DEVICE_COLUMNS " FROM devices ORDER BY device_id", ReadDevice);
}

// ----- licences -----------------------------------------------------------------------------

Status UpsertLicence(Connection& c, const LicenceRecord& l) {
  const std::string what = "licence " + Quoted(l.licence_id);
  if (l.device_id.empty() == l.group.empty()) {
    return InvalidArgument(what + ": exactly one of device_id and group must be set");
  }
  Status s = RunStatement(
      c,
      "INSERT INTO licences (" CUSTODY_LICENCE_COLUMNS
      ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
      "ON CONFLICT (licence_id) DO UPDATE SET model_id = excluded.model_id, "
      "device_id = excluded.device_id, group_name = excluded.group_name, "
      "budget = excluded.budget, used = excluded.used, not_after = excluded.not_after, "
      "offline_grace_ms = excluded.offline_grace_ms, ext_manual = excluded.ext_manual, "
      "ext_auto_approve_up_to = excluded.ext_auto_approve_up_to, "
      "ext_period_seconds = excluded.ext_period_seconds, created = excluded.created, "
      "revoked = excluded.revoked, revoked_reason = excluded.revoked_reason",
      l.licence_id, l.model_id, NullIfEmpty(l.device_id), NullIfEmpty(l.group), l.budget, l.used,
      l.not_after, l.offline_grace_ms, l.extension.manual, l.extension.auto_approve_up_to,
      l.extension.period_seconds, l.created, l.revoked, l.revoked_reason);
  return Explain(c, s, what,
                 {{"model", kModelExists, l.model_id},
                  {"device", kDeviceExists, l.device_id},
                  {"group", kGroupExists, l.group}});
}

Result<LicenceRecord> GetLicence(Connection& c, const std::string& licence_id) {
  return QueryOne<LicenceRecord>(c, "licence " + Quoted(licence_id),
                                 "SELECT " CUSTODY_LICENCE_COLUMNS
                                 " FROM licences WHERE licence_id = ?",
                                 ReadLicence, licence_id);
}

Result<std::vector<LicenceRecord>> LicencesForDevice(Connection& c, const std::string& device_id,
                                                     const std::string& group) {
  return QueryAll<LicenceRecord>(c,
                                 "SELECT " CUSTODY_LICENCE_COLUMNS
                                 " FROM licences WHERE revoked IS NULL AND "
                                 "(device_id = ? OR group_name = ?) ORDER BY licence_id",
                                 ReadLicence, device_id, group);
}

Result<std::vector<LicenceRecord>> ListLicences(Connection& c) {
  return QueryAll<LicenceRecord>(
      c, "SELECT " CUSTODY_LICENCE_COLUMNS " FROM licences ORDER BY licence_id", ReadLicence);
}

// ----- leases -------------------------------------------------------------------------------

Status InsertLease(Connection& c, const LeaseRecord& l) {
  Status s = RunStatement(
      c, "INSERT INTO leases (" CUSTODY_LEASE_COLUMNS ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      l.lease_id, l.device_id, l.licence_id, l.model_id, l.sequence, l.counter_limit, l.not_after,
      l.offline_grace_ms, l.revocation_epoch, l.issued, l.envelope_json);
  return Explain(c, s,
                 "lease " + Quoted(l.lease_id) + " (device " + Quoted(l.device_id) + ", sequence " +
                     std::to_string(l.sequence) + ")",
                 {{"device", kDeviceExists, l.device_id},
                  {"licence", kLicenceExists, l.licence_id},
                  {"model", kModelExists, l.model_id}});
}

Result<std::vector<LeaseRecord>> LeasesForDevice(Connection& c, const std::string& device_id) {
  return QueryAll<LeaseRecord>(
      c, "SELECT " CUSTODY_LEASE_COLUMNS " FROM leases WHERE device_id = ? ORDER BY sequence",
      ReadLease, device_id);
}

Result<std::vector<std::string>> DevicesWithModel(Connection& c, const std::string& model_id) {
  return QueryAll<std::string>(
      c, "SELECT DISTINCT device_id FROM leases WHERE model_id = ? ORDER BY device_id",
      [](const Statement& s) -> Result<std::string> { return s.Text(0); }, model_id);
}

// ----- nonces and usage ---------------------------------------------------------------------

Status InsertNonce(Connection& c, ByteSpan nonce, const std::string& device_id, TimePoint when) {
  Status s = RunStatement(c, "INSERT INTO nonces (nonce, device_id, used) VALUES (?, ?, ?)", nonce,
                          device_id, when);
  if (s.code() == StatusCode::kAlreadyExists) {
    return AlreadyExists("nonce " + ShortHex(nonce) + " was already used");
  }
  return NameEntity(s, "nonce " + ShortHex(nonce));
}

Status InsertUsageReport(Connection& c, const UsageReport& r) {
  const std::string what =
      "usage report " + Quoted(r.report_id) + " of device " + Quoted(r.device_id);
  Status s = RunStatement(c,
                          "INSERT INTO usage_reports (device_id, report_id, counter_value, "
                          "received, is_rollback) VALUES (?, ?, ?, ?, ?)",
                          r.device_id, r.report_id, r.counter_value, r.received, r.rollback);
  CUSTODY_RETURN_IF_ERROR(Explain(c, s, what, {{"device", kDeviceExists, r.device_id}}));
  for (size_t i = 0; i < r.counts.size(); ++i) {
    const UsageCount& u = r.counts[i];
    CUSTODY_RETURN_IF_ERROR(
        NameEntity(RunStatement(c,
                                "INSERT INTO usage_counts (device_id, report_id, position, "
                                "model_id, client, count) VALUES (?, ?, ?, ?, ?, ?)",
                                r.device_id, r.report_id, static_cast<int64_t>(i), u.model_id,
                                u.client, u.count),
                   what));
  }
  return OkStatus();
}

Result<std::vector<UsageCount>> UsageForDevice(Connection& c, const std::string& device_id) {
  // Summed here, not in SQL: counts are uint64 stored in signed columns.
  CUSTODY_ASSIGN_OR_RETURN(
      std::vector<UsageCount> rows,
      QueryAll<UsageCount>(
          c, "SELECT model_id, client, count FROM usage_counts WHERE device_id = ?",
          [](const Statement& s) -> Result<UsageCount> {
            return UsageCount{s.Text(0), s.Text(1), s.Uint(2)};
          },
          device_id));
  std::map<std::pair<std::string, std::string>, uint64_t> totals;
  for (const UsageCount& u : rows) {
    uint64_t& total = totals[{u.model_id, u.client}];
    total = SaturatingAdd(total, u.count);
  }
  std::vector<UsageCount> out;
  for (const auto& [key, count] : totals) out.push_back({key.first, key.second, count});
  return out;
}

// ----- extensions ---------------------------------------------------------------------------

Status UpsertExtension(Connection& c, const ExtensionRequest& e) {
  Status s = RunStatement(
      c,
      "INSERT INTO extensions (" CUSTODY_EXTENSION_COLUMNS
      ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
      "ON CONFLICT (request_id) DO UPDATE SET device_id = excluded.device_id, "
      "licence_id = excluded.licence_id, requested = excluded.requested, "
      "reason = excluded.reason, status = excluded.status, granted = excluded.granted, "
      "decided_by = excluded.decided_by, decided = excluded.decided, created = excluded.created",
      e.request_id, e.device_id, e.licence_id, e.requested, e.reason, ExtensionStatusName(e.status),
      e.granted, e.decided_by, e.decided, e.created);
  return Explain(
      c, s, "extension request " + Quoted(e.request_id),
      {{"device", kDeviceExists, e.device_id}, {"licence", kLicenceExists, e.licence_id}});
}

Result<ExtensionRequest> GetExtension(Connection& c, const std::string& request_id) {
  return QueryOne<ExtensionRequest>(c, "extension request " + Quoted(request_id),
                                    "SELECT " CUSTODY_EXTENSION_COLUMNS
                                    " FROM extensions WHERE request_id = ?",
                                    ReadExtension, request_id);
}

Result<std::vector<ExtensionRequest>> ListExtensions(Connection& c,
                                                     std::optional<ExtensionStatus> status) {
  if (!status) {
    return QueryAll<ExtensionRequest>(
        c, "SELECT " CUSTODY_EXTENSION_COLUMNS " FROM extensions ORDER BY created, request_id",
        ReadExtension);
  }
  return QueryAll<ExtensionRequest>(c,
                                    "SELECT " CUSTODY_EXTENSION_COLUMNS
                                    " FROM extensions WHERE status = ? "
                                    "ORDER BY created, request_id",
                                    ReadExtension, ExtensionStatusName(*status));
}

Result<uint64_t> GrantedSince(Connection& c, const std::string& licence_id, TimePoint since) {
  CUSTODY_ASSIGN_OR_RETURN(
      std::vector<uint64_t> grants,
      QueryAll<uint64_t>(
          c,
          "SELECT granted FROM extensions WHERE licence_id = ? AND status = 'approved' "
          "AND decided >= ?",
          [](const Statement& s) -> Result<uint64_t> { return s.Uint(0); }, licence_id, since));
  uint64_t total = 0;
  for (uint64_t g : grants) total = SaturatingAdd(total, g);
  return total;
}

Result<uint64_t> GrantedToDevice(Connection& c, const std::string& licence_id,
                                 const std::string& device_id) {
  // Summed here, not in SQL, like UsageForDevice: grants are uint64 in signed columns. The
  // extensions_device index (schema version 2) finds the device's rows.
  CUSTODY_ASSIGN_OR_RETURN(
      std::vector<uint64_t> grants,
      QueryAll<uint64_t>(
          c,
          "SELECT granted FROM extensions WHERE device_id = ? AND licence_id = ? "
          "AND status = 'approved'",
          [](const Statement& s) -> Result<uint64_t> { return s.Uint(0); }, device_id, licence_id));
  uint64_t total = 0;
  for (uint64_t g : grants) total = SaturatingAdd(total, g);
  return total;
}

// ----- events -------------------------------------------------------------------------------

Result<uint64_t> InsertEvent(Connection& c, const DeviceEvent& e) {
  const std::string what = "event for device " + Quoted(e.device_id);
  CUSTODY_ASSIGN_OR_RETURN(Statement s,
                           c.Prepare("INSERT INTO events (device_id, type, payload_json, created) "
                                     "VALUES (?, ?, ?, ?) RETURNING seq"));
  s.Bind(e.device_id, e.type, e.payload_json, e.created);
  Result<bool> row = s.Step();
  if (!row) return Explain(c, row.error(), what, {{"device", kDeviceExists, e.device_id}});
  if (!*row) return Internal(what + ": no seq returned");
  const uint64_t seq = s.Uint(0);
  CUSTODY_RETURN_IF_ERROR(NameEntity(s.Run(), what));
  return seq;
}

Result<std::vector<DeviceEvent>> EventsAfter(Connection& c, const std::string& device_id,
                                             uint64_t after, size_t limit) {
  return QueryAll<DeviceEvent>(c,
                               "SELECT " CUSTODY_EVENT_COLUMNS
                               " FROM events WHERE device_id = ? AND seq > ? "
                               "ORDER BY seq LIMIT ?",
                               ReadEvent, device_id, ClampToInt64(after), ClampToInt64(limit));
}

Result<uint64_t> LastEventSeq(Connection& c) {
  CUSTODY_ASSIGN_OR_RETURN(
      std::optional<uint64_t> seq,
      QueryFirst<uint64_t>(c, "SELECT COALESCE(MAX(seq), 0) FROM events",
                           [](const Statement& s) -> Result<uint64_t> { return s.Uint(0); }));
  return seq.value_or(0);
}

// ----- audit --------------------------------------------------------------------------------

Status InsertAudit(Connection& c, const AuditEntry& e) {
  return NameEntity(RunStatement(c,
                                 "INSERT INTO audit_log (" CUSTODY_AUDIT_COLUMNS
                                 ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 e.seq, e.time, e.actor, e.action, e.subject, e.details,
                                 ByteSpan(e.prev_hash), ByteSpan(e.hash)),
                    "audit entry " + std::to_string(e.seq));
}

Result<std::vector<AuditEntry>> AuditAfter(Connection& c, uint64_t after, size_t limit) {
  return QueryAll<AuditEntry>(
      c, "SELECT " CUSTODY_AUDIT_COLUMNS " FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
      ReadAudit, ClampToInt64(after), ClampToInt64(limit));
}

Result<std::vector<AuditEntry>> AuditTail(Connection& c, size_t count) {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<AuditEntry> entries,
                           QueryAll<AuditEntry>(c,
                                                "SELECT " CUSTODY_AUDIT_COLUMNS
                                                " FROM audit_log ORDER BY seq DESC LIMIT ?",
                                                ReadAudit, ClampToInt64(count)));
  std::reverse(entries.begin(), entries.end());
  return entries;
}

// ----- housekeeping -------------------------------------------------------------------------

Result<PruneCounts> PruneExpired(Connection& c, TimePoint nonces_used_before, TimePoint now) {
  PruneCounts counts;
  CUSTODY_RETURN_IF_ERROR(RunStatement(c, "DELETE FROM nonces WHERE used < ?", nonces_used_before));
  counts.nonces = static_cast<uint64_t>(c.changes());
  CUSTODY_RETURN_IF_ERROR(
      RunStatement(c, "DELETE FROM pending_enrollments WHERE expires <= ?", now));
  counts.pending_enrollments = static_cast<uint64_t>(c.changes());
  return counts;
}

Status Ping(Connection& c) { return RunStatement(c, "SELECT 1"); }

}  // namespace custody::custodian::sqlite
