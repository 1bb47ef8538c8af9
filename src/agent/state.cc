#include "agent/state.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "agent/journal.h"
#include "core/base/file.h"
#include "core/protocol/json.h"

namespace custody::agent {
namespace {

using protocol::JsonObject;

constexpr size_t kMaxStateFileBytes = 4 << 20;
constexpr size_t kMaxBlobBytes = 4096;
constexpr size_t kMaxPemBytes = 16384;
constexpr size_t kMaxRevocations = 100000;
constexpr size_t kMaxLeases = 10000;

Status WriteJson(const std::string& path, const nlohmann::json& j) {
  const std::string text = j.dump(2) + "\n";
  return WriteFileAtomic(path, AsBytes(text), WriteOptions{0600, Overwrite::kAllow});
}

Status Malformed(std::string_view source, const Status& s) {
  return DataLoss(std::string(source) + ": " + s.message() +
                  " (the file was changed outside the agent, or the disk is failing)");
}

nlohmann::json BlobJson(const tpm::KeyBlob& b) {
  return {{"public", Base64Encode(b.public_area)}, {"private", Base64Encode(b.private_area)}};
}

Result<tpm::KeyBlob> BlobFrom(const JsonObject& o, std::string_view key) {
  CUSTODY_ASSIGN_OR_RETURN(JsonObject b, o.Object(key));
  CUSTODY_RETURN_IF_ERROR(b.RejectUnknown({"public", "private"}));
  tpm::KeyBlob out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_area, b.Base64("public", kMaxBlobBytes));
  CUSTODY_ASSIGN_OR_RETURN(out.private_area, b.Base64("private", kMaxBlobBytes));
  return out;
}

Result<DeviceIdentity> ParseIdentity(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(
      o.RejectUnknown({"version", "device_id", "ek_type", "ak", "binding", "counter_index",
                       "counter_auth", "counter_unit", "pcr_selection", "lease_public",
                       "policy_public", "ca_certificate_pem", "certificate_pem"}));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t version, o.Uint("version"));
  if (version != 1) return o.FieldError("version", "expected 1");
  DeviceIdentity id;
  CUSTODY_ASSIGN_OR_RETURN(id.device_id, o.String("device_id", 128));
  CUSTODY_ASSIGN_OR_RETURN(std::string ek, o.String("ek_type", 8));
  if (ek != "ecc" && ek != "rsa") return o.FieldError("ek_type", "expected \"ecc\" or \"rsa\"");
  id.ek_type = ek == "ecc" ? tpm::EkType::kEcc : tpm::EkType::kRsa;
  CUSTODY_ASSIGN_OR_RETURN(id.ak, BlobFrom(o, "ak"));
  CUSTODY_ASSIGN_OR_RETURN(id.binding, BlobFrom(o, "binding"));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t index, o.Uint("counter_index", UINT32_MAX));
  id.counter_index = static_cast<uint32_t>(index);
  CUSTODY_ASSIGN_OR_RETURN(id.counter_auth, o.Base64("counter_auth", 64));
  CUSTODY_ASSIGN_OR_RETURN(id.counter_unit, o.Uint("counter_unit", protocol::kMaxCounterUnit));
  if (id.counter_unit < protocol::kMinCounterUnit) {
    return o.FieldError("counter_unit", "must be at least 1");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::vector<uint64_t> pcrs, o.Uints("pcr_selection", 24, 23));
  for (uint64_t p : pcrs) id.pcr_selection.push_back(static_cast<uint32_t>(p));
  CUSTODY_ASSIGN_OR_RETURN(id.lease_public, o.Base64("lease_public", 32));
  CUSTODY_ASSIGN_OR_RETURN(id.policy_public, o.Base64("policy_public", 65));
  CUSTODY_ASSIGN_OR_RETURN(id.ca_certificate_pem, o.Pem("ca_certificate_pem", kMaxPemBytes));
  CUSTODY_ASSIGN_OR_RETURN(id.certificate_pem, o.Pem("certificate_pem", kMaxPemBytes));
  return id;
}

nlohmann::json CountsJson(const std::vector<protocol::UsageRequest::Count>& counts) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& c : counts) {
    out.push_back({{"model_id", c.model_id}, {"client", c.client}, {"count", c.count}});
  }
  return out;
}

Result<PendingReport> ParsePending(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(
      o.RejectUnknown({"report_id", "after_seq", "through_seq", "position", "counts", "anomaly"}));
  PendingReport p;
  CUSTODY_ASSIGN_OR_RETURN(p.report_id, o.String("report_id", 64));
  CUSTODY_ASSIGN_OR_RETURN(p.after_seq, o.Uint("after_seq"));
  CUSTODY_ASSIGN_OR_RETURN(p.through_seq, o.Uint("through_seq"));
  CUSTODY_ASSIGN_OR_RETURN(p.position, o.Uint("position"));
  if (p.through_seq < p.after_seq) return o.FieldError("through_seq", "below after_seq");
  CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> counts, o.Objects("counts", kJournalMaxPairs));
  for (const JsonObject& c : counts) {
    CUSTODY_RETURN_IF_ERROR(c.RejectUnknown({"model_id", "client", "count"}));
    protocol::UsageRequest::Count count;
    CUSTODY_ASSIGN_OR_RETURN(count.model_id, c.String("model_id", kJournalMaxModelIdBytes));
    CUSTODY_ASSIGN_OR_RETURN(count.client, c.String("client", kJournalMaxClientBytes));
    CUSTODY_ASSIGN_OR_RETURN(count.count, c.Uint("count"));
    p.counts.push_back(std::move(count));
  }
  CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> anomaly,
                           o.OptionalString("anomaly", protocol::kMaxAnomalyBytes));
  p.anomaly = anomaly.value_or("");
  return p;
}

Result<RevokedScope> ParseRevoked(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown(
      {"scope", "subject", "reason", "issued_at", "revocation_epoch", "model_ids", "model_names"}));
  RevokedScope r;
  CUSTODY_ASSIGN_OR_RETURN(r.scope, o.String("scope", 16));
  if (r.scope != "device" && r.scope != "licence" && r.scope != "model") {
    return o.FieldError("scope", "expected device, licence or model");
  }
  CUSTODY_ASSIGN_OR_RETURN(r.subject, o.String("subject", 128));
  CUSTODY_ASSIGN_OR_RETURN(r.reason, o.String("reason", 1024));
  CUSTODY_ASSIGN_OR_RETURN(r.issued_at, o.String("issued_at", 64));
  CUSTODY_ASSIGN_OR_RETURN(r.revocation_epoch, o.Uint("revocation_epoch"));
  CUSTODY_ASSIGN_OR_RETURN(r.model_ids, o.Strings("model_ids", kMaxLeases, 128));
  CUSTODY_ASSIGN_OR_RETURN(r.model_names, o.Strings("model_names", kMaxLeases, 256));
  return r;
}

Result<AgentState> ParseState(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(
      o.RejectUnknown({"version", "max_sequence", "revocation_epoch", "revoked", "held",
                       "events_after", "report_cursor", "report_journal", "pending_report"}));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t version, o.Uint("version"));
  if (version != 1) return o.FieldError("version", "expected 1");
  AgentState s;
  CUSTODY_ASSIGN_OR_RETURN(s.book.max_sequence, o.Uint("max_sequence"));
  CUSTODY_ASSIGN_OR_RETURN(s.book.revocation_epoch, o.Uint("revocation_epoch"));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> revoked, o.Objects("revoked", kMaxRevocations));
  for (const JsonObject& r : revoked) {
    CUSTODY_ASSIGN_OR_RETURN(RevokedScope scope, ParseRevoked(r));
    s.book.revoked.push_back(std::move(scope));
  }
  CUSTODY_ASSIGN_OR_RETURN(JsonObject held, o.Object("held"));
  for (const std::string& licence : held.Keys()) {
    CUSTODY_ASSIGN_OR_RETURN(uint64_t sequence, held.Uint(licence));
    s.book.held[licence] = sequence;
  }
  CUSTODY_ASSIGN_OR_RETURN(s.events_after, o.Uint("events_after"));
  CUSTODY_ASSIGN_OR_RETURN(s.report_cursor, o.Uint("report_cursor"));
  CUSTODY_ASSIGN_OR_RETURN(s.report_journal, o.String("report_journal", 64));
  CUSTODY_ASSIGN_OR_RETURN(std::optional<JsonObject> pending, o.OptionalObject("pending_report"));
  if (pending) {
    CUSTODY_ASSIGN_OR_RETURN(PendingReport p, ParsePending(*pending));
    s.pending_report = std::move(p);
  }
  return s;
}

Result<std::string> ReadText(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes bytes, ReadFile(path, kMaxStateFileBytes));
  return std::string(AsChars(bytes));
}

}  // namespace

nlohmann::json IdentityToJson(const DeviceIdentity& id) {
  return {{"version", 1},
          {"device_id", id.device_id},
          {"ek_type", id.ek_type == tpm::EkType::kEcc ? "ecc" : "rsa"},
          {"ak", BlobJson(id.ak)},
          {"binding", BlobJson(id.binding)},
          {"counter_index", id.counter_index},
          {"counter_auth", Base64Encode(id.counter_auth)},
          {"counter_unit", id.counter_unit},
          {"pcr_selection", id.pcr_selection},
          {"lease_public", Base64Encode(id.lease_public)},
          {"policy_public", Base64Encode(id.policy_public)},
          {"ca_certificate_pem", id.ca_certificate_pem},
          {"certificate_pem", id.certificate_pem}};
}

Result<DeviceIdentity> IdentityFromJson(std::string_view text, std::string_view source) {
  Result<nlohmann::json> j = protocol::ParseJsonObject(text, kMaxStateFileBytes, source);
  if (!j) return Malformed(source, j.error());
  Result<DeviceIdentity> id = ParseIdentity(JsonObject(*j, ""));
  if (!id) return Malformed(source, id.error());
  return id;
}

nlohmann::json StateToJson(const AgentState& s) {
  nlohmann::json revoked = nlohmann::json::array();
  for (const RevokedScope& r : s.book.revoked) {
    revoked.push_back({{"scope", r.scope},
                       {"subject", r.subject},
                       {"reason", r.reason},
                       {"issued_at", r.issued_at},
                       {"revocation_epoch", r.revocation_epoch},
                       {"model_ids", r.model_ids},
                       {"model_names", r.model_names}});
  }
  nlohmann::json held = nlohmann::json::object();
  for (const auto& [licence, sequence] : s.book.held) held[licence] = sequence;
  nlohmann::json out = {{"version", 1},
                        {"max_sequence", s.book.max_sequence},
                        {"revocation_epoch", s.book.revocation_epoch},
                        {"revoked", revoked},
                        {"held", held},
                        {"events_after", s.events_after},
                        {"report_cursor", s.report_cursor},
                        {"report_journal", s.report_journal},
                        {"pending_report", nullptr}};
  if (s.pending_report) {
    const PendingReport& p = *s.pending_report;
    out["pending_report"] = {{"report_id", p.report_id},
                             {"after_seq", p.after_seq},
                             {"through_seq", p.through_seq},
                             {"position", p.position},
                             {"counts", CountsJson(p.counts)}};
    if (!p.anomaly.empty()) out["pending_report"]["anomaly"] = p.anomaly;
  }
  return out;
}

Result<AgentState> StateFromJson(std::string_view text, std::string_view source) {
  Result<nlohmann::json> j = protocol::ParseJsonObject(text, kMaxStateFileBytes, source);
  if (!j) return Malformed(source, j.error());
  Result<AgentState> s = ParseState(JsonObject(*j, ""));
  if (!s) return Malformed(source, s.error());
  return s;
}

Result<StateDir> StateDir::Create(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return InvalidArgument("state directory " + path + " must be an absolute path");
  }
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    const int err = errno;
    if (err == ENOENT) {
      return NotFound("cannot create the state directory " + path +
                      ": its parent directory does not exist; create it first");
    }
    return ErrnoStatus(err, "create the state directory " + path);
  }
  CUSTODY_ASSIGN_OR_RETURN(StateDir dir, Open(path));
  if (dir.enrolled()) {
    return AlreadyExists(path +
                         " already holds an enrolled device (identity.json); refusing to "
                         "enroll over it. Move it aside to enroll this device again");
  }
  return dir;
}

Result<StateDir> StateDir::Open(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return NotFound("state directory " + path +
                      " does not exist: enroll the device first (custody-agent enroll)");
    }
    return ErrnoStatus(errno, "stat the state directory " + path);
  }
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(path + " is not a directory");
  if ((st.st_mode & 0022) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return PermissionDenied("state directory " + path + " can be written by other users (mode " +
                            mode + "); make it 0700 and owned by the agent's user");
  }
  if (st.st_uid != geteuid()) {
    return PermissionDenied("state directory " + path + " belongs to uid " +
                            std::to_string(st.st_uid) + ", not to the agent's uid " +
                            std::to_string(geteuid()));
  }
  return StateDir(path);
}

bool StateDir::enrolled() const { return PathExists(path_ + "/identity.json"); }

Result<DeviceIdentity> StateDir::LoadIdentity() const {
  const std::string p = path_ + "/identity.json";
  if (!PathExists(p)) {
    return NotFound(path_ + " holds no enrolled device: run custody-agent enroll first");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string text, ReadText(p));
  return IdentityFromJson(text, p);
}

Status StateDir::SaveIdentity(const DeviceIdentity& id) const {
  return WriteJson(path_ + "/identity.json", IdentityToJson(id));
}

Result<SealedTlsKey> StateDir::LoadTlsKey() const {
  const std::string p = path_ + "/tls-key.sealed";
  if (!PathExists(p)) {
    return NotFound(p + " is missing: the device's TLS key is gone; enroll the device again");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string text, ReadText(p));
  Result<nlohmann::json> j = protocol::ParseJsonObject(text, kMaxStateFileBytes, p);
  if (!j) return Malformed(p, j.error());
  const JsonObject o(*j, "");
  auto parse = [&]() -> Result<SealedTlsKey> {
    CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"version", "sealed_key", "nonce", "ciphertext"}));
    CUSTODY_ASSIGN_OR_RETURN(uint64_t version, o.Uint("version"));
    if (version != 1) return o.FieldError("version", "expected 1");
    SealedTlsKey k;
    CUSTODY_ASSIGN_OR_RETURN(k.sealed_key, BlobFrom(o, "sealed_key"));
    CUSTODY_ASSIGN_OR_RETURN(k.nonce, o.Base64("nonce", crypto::kGcmNonceBytes));
    if (k.nonce.size() != crypto::kGcmNonceBytes) return o.FieldError("nonce", "expected 12 bytes");
    CUSTODY_ASSIGN_OR_RETURN(k.ciphertext, o.Base64("ciphertext", 16384));
    if (k.ciphertext.size() <= crypto::kGcmTagBytes) {
      return o.FieldError("ciphertext", "shorter than its tag");
    }
    return k;
  };
  Result<SealedTlsKey> key = parse();
  if (!key) return Malformed(p, key.error());
  return key;
}

Status StateDir::SaveTlsKey(const SealedTlsKey& key) const {
  return WriteJson(path_ + "/tls-key.sealed", {{"version", 1},
                                               {"sealed_key", BlobJson(key.sealed_key)},
                                               {"nonce", Base64Encode(key.nonce)},
                                               {"ciphertext", Base64Encode(key.ciphertext)}});
}

Result<AgentState> StateDir::LoadState() const {
  const std::string p = path_ + "/state.json";
  if (!PathExists(p)) return AgentState{};
  CUSTODY_ASSIGN_OR_RETURN(std::string text, ReadText(p));
  return StateFromJson(text, p);
}

Status StateDir::SaveState(const AgentState& state) const {
  return WriteJson(path_ + "/state.json", StateToJson(state));
}

Result<std::vector<nlohmann::json>> StateDir::LoadLeases() const {
  const std::string p = path_ + "/leases.json";
  std::vector<nlohmann::json> out;
  if (!PathExists(p)) return out;
  CUSTODY_ASSIGN_OR_RETURN(std::string text, ReadText(p));
  Result<nlohmann::json> j = protocol::ParseJsonObject(text, kMaxStateFileBytes, p);
  if (!j) return Malformed(p, j.error());
  const nlohmann::json& leases = (*j)["leases"];
  if (!leases.is_array() || leases.size() > kMaxLeases) {
    return Malformed(p, InvalidArgument("field 'leases': expected an array of envelopes"));
  }
  for (const nlohmann::json& e : leases) out.push_back(e);
  return out;
}

Status StateDir::SaveLeases(const std::vector<nlohmann::json>& envelopes) const {
  return WriteJson(path_ + "/leases.json", {{"leases", envelopes}});
}

AgentState PersistentState::Get() const {
  std::lock_guard lock(mu_);
  return state_;
}

Status PersistentState::Update(const std::function<void(AgentState&)>& change) {
  std::lock_guard lock(mu_);
  change(state_);
  return dir_.SaveState(state_);
}

}  // namespace custody::agent
