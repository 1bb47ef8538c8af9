#include "core/protocol/messages.h"

#include <algorithm>
#include <charconv>

namespace custody::protocol {
namespace {

constexpr size_t kMaxIdBytes = 64;
constexpr size_t kMaxNonceBytes = 64;
constexpr size_t kMaxApprovals = 16;
constexpr size_t kMaxLeases = 64;
constexpr size_t kMaxEvents = 1000;
constexpr size_t kMaxCounts = 1000;
constexpr size_t kMaxPem = 16384;

std::string B64(ByteSpan b) { return Base64Encode(b); }

Result<nlohmann::json> Parse(std::string_view body, std::string_view what) {
  return ParseJsonObject(body, kMaxRequestBytes, what);
}

// Parses `body` as a message object and hands a JsonObject view to `fill`.
template <typename T, typename Fill>
Result<T> ParseMessage(std::string_view body, std::string_view what, Fill&& fill) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json j, Parse(body, what));
  T out;
  CUSTODY_RETURN_IF_ERROR(fill(JsonObject(j, ""), out));
  return out;
}

nlohmann::json UintsToJson(const std::vector<uint32_t>& v) {
  nlohmann::json a = nlohmann::json::array();
  for (uint32_t x : v) a.push_back(x);
  return a;
}

}  // namespace

// ----- TPM structures ------------------------------------------------------------------------

nlohmann::json PcrValuesToJson(const tpm::PcrValues& values) {
  nlohmann::json o = nlohmann::json::object();
  for (const auto& [index, value] : values) o[std::to_string(index)] = HexEncode(value);
  return o;
}

Result<tpm::PcrValues> PcrValuesFromJson(const JsonObject& parent, std::string_view key) {
  CUSTODY_ASSIGN_OR_RETURN(JsonObject o, parent.Object(key));
  tpm::PcrValues out;
  for (const std::string& k : o.Keys()) {
    uint32_t index = 0;
    auto [end, ec] = std::from_chars(k.data(), k.data() + k.size(), index);
    if (ec != std::errc() || end != k.data() + k.size() || index >= tpm::kPcrCount ||
        (k.size() > 1 && k[0] == '0')) {
      return o.FieldError(k, "not a PCR index (0.." + std::to_string(tpm::kPcrCount - 1) + ")");
    }
    CUSTODY_ASSIGN_OR_RETURN(Bytes value, o.Hex(k, 32));
    std::copy(value.begin(), value.end(), out[index].begin());
  }
  return out;
}

nlohmann::json AttestationToJson(const tpm::Attestation& a) {
  return {{"attest", B64(a.attest)}, {"signature", B64(a.signature)}};
}

Result<tpm::Attestation> AttestationFromJson(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"attest", "signature"}));
  tpm::Attestation a;
  CUSTODY_ASSIGN_OR_RETURN(a.attest, o.Base64("attest", kMaxTpmStructBytes));
  CUSTODY_ASSIGN_OR_RETURN(a.signature, o.Base64("signature", kMaxTpmStructBytes));
  return a;
}

nlohmann::json QuoteToJson(const tpm::Quote& q) {
  nlohmann::json j = AttestationToJson(q.attestation);
  j["pcrs"] = PcrValuesToJson(q.pcrs);
  return j;
}

Result<tpm::Quote> QuoteFromJson(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"attest", "signature", "pcrs"}));
  tpm::Quote q;
  CUSTODY_ASSIGN_OR_RETURN(q.attestation.attest, o.Base64("attest", kMaxTpmStructBytes));
  CUSTODY_ASSIGN_OR_RETURN(q.attestation.signature, o.Base64("signature", kMaxTpmStructBytes));
  CUSTODY_ASSIGN_OR_RETURN(q.pcrs, PcrValuesFromJson(o, "pcrs"));
  return q;
}

nlohmann::json ApprovedPolicyToJson(const tpm::ApprovedPolicy& p) {
  return {{"pcrs", UintsToJson(p.selection.pcrs)},
          {"pcr_digest", HexEncode(p.pcr_digest)},
          {"approved_digest", HexEncode(p.approved_digest)},
          {"policy_ref", B64(p.policy_ref)},
          {"signature", B64(p.signature)}};
}

Result<tpm::ApprovedPolicy> ApprovedPolicyFromJson(const JsonObject& o) {
  CUSTODY_RETURN_IF_ERROR(
      o.RejectUnknown({"pcrs", "pcr_digest", "approved_digest", "policy_ref", "signature"}));
  tpm::ApprovedPolicy p;
  CUSTODY_ASSIGN_OR_RETURN(std::vector<uint64_t> pcrs,
                           o.Uints("pcrs", tpm::kPcrCount, tpm::kPcrCount - 1));
  CUSTODY_ASSIGN_OR_RETURN(p.selection,
                           tpm::PcrSelection::Of(std::vector<uint32_t>(pcrs.begin(), pcrs.end())));
  CUSTODY_ASSIGN_OR_RETURN(Bytes pcr_digest, o.Hex("pcr_digest", 32));
  CUSTODY_ASSIGN_OR_RETURN(Bytes approved, o.Hex("approved_digest", 32));
  std::copy(pcr_digest.begin(), pcr_digest.end(), p.pcr_digest.begin());
  std::copy(approved.begin(), approved.end(), p.approved_digest.begin());
  CUSTODY_ASSIGN_OR_RETURN(p.policy_ref, o.Base64("policy_ref", 32));
  CUSTODY_ASSIGN_OR_RETURN(p.signature, o.Base64("signature", kMaxTpmStructBytes));
  return p;
}

// ----- enrollment ------------------------------------------------------------------------------

nlohmann::json ToJson(const EnrollBeginRequest& m) {
  nlohmann::json j{{"token", m.token},
                   {"ek_type", m.ek_type},
                   {"ek_public", B64(m.ek_public)},
                   {"ak_public", B64(m.ak_public)}};
  if (m.ek_certificate) j["ek_certificate"] = B64(*m.ek_certificate);
  return j;
}

Result<EnrollBeginRequest> ParseEnrollBeginRequest(std::string_view body) {
  return ParseMessage<EnrollBeginRequest>(
      body, "enrollment request", [](const JsonObject& o, EnrollBeginRequest& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"token", "ek_type", "ek_public", "ek_certificate", "ak_public"}));
        CUSTODY_ASSIGN_OR_RETURN(m.token, o.String("token", 128));
        CUSTODY_ASSIGN_OR_RETURN(uint64_t type, o.Uint("ek_type", 1));
        m.ek_type = static_cast<int>(type);
        CUSTODY_ASSIGN_OR_RETURN(m.ek_public, o.Base64("ek_public", kMaxTpmStructBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.ek_certificate,
                                 o.OptionalBase64("ek_certificate", kMaxCertificateBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.ak_public, o.Base64("ak_public", kMaxTpmStructBytes));
        return OkStatus();
      });
}

nlohmann::json ToJson(const EnrollBeginResponse& m) {
  return {{"enrollment_id", m.enrollment_id},
          {"credential",
           {{"id_object", B64(m.credential.id_object)},
            {"encrypted_secret", B64(m.credential.encrypted_secret)}}},
          {"certify_nonce", B64(m.certify_nonce)},
          {"policy_public", B64(m.policy_public)}};
}

Result<EnrollBeginResponse> ParseEnrollBeginResponse(std::string_view body) {
  return ParseMessage<EnrollBeginResponse>(
      body, "enrollment challenge", [](const JsonObject& o, EnrollBeginResponse& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"enrollment_id", "credential", "certify_nonce", "policy_public"}));
        CUSTODY_ASSIGN_OR_RETURN(m.enrollment_id, o.String("enrollment_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(JsonObject cred, o.Object("credential"));
        CUSTODY_RETURN_IF_ERROR(cred.RejectUnknown({"id_object", "encrypted_secret"}));
        CUSTODY_ASSIGN_OR_RETURN(m.credential.id_object,
                                 cred.Base64("id_object", kMaxTpmStructBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.credential.encrypted_secret,
                                 cred.Base64("encrypted_secret", kMaxTpmStructBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.certify_nonce, o.Base64("certify_nonce", kMaxNonceBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.policy_public, o.Base64("policy_public", 65));
        return OkStatus();
      });
}

nlohmann::json ToJson(const EnrollCompleteRequest& m) {
  return {{"enrollment_id", m.enrollment_id},
          {"activated_secret", B64(m.activated_secret)},
          {"binding_public", B64(m.binding_public)},
          {"binding_certify", AttestationToJson(m.binding_certify)},
          {"counter_index", m.counter_index},
          {"counter_certify", AttestationToJson(m.counter_certify)},
          {"tls_public_key", B64(m.tls_public_key)},
          {"counter_unit", m.counter_unit}};
}

Result<EnrollCompleteRequest> ParseEnrollCompleteRequest(std::string_view body) {
  return ParseMessage<EnrollCompleteRequest>(
      body, "enrollment completion", [](const JsonObject& o, EnrollCompleteRequest& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown(
            {"enrollment_id", "activated_secret", "binding_public", "binding_certify",
             "counter_index", "counter_certify", "tls_public_key", "counter_unit"}));
        CUSTODY_ASSIGN_OR_RETURN(m.enrollment_id, o.String("enrollment_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.activated_secret, o.Base64("activated_secret", 64));
        CUSTODY_ASSIGN_OR_RETURN(m.binding_public, o.Base64("binding_public", kMaxTpmStructBytes));
        CUSTODY_ASSIGN_OR_RETURN(JsonObject certify, o.Object("binding_certify"));
        CUSTODY_ASSIGN_OR_RETURN(m.binding_certify, AttestationFromJson(certify));
        CUSTODY_ASSIGN_OR_RETURN(uint64_t index, o.Uint("counter_index", 0x01FFFFFF));
        if ((index >> 24) != 0x01) {
          return o.FieldError("counter_index", "not an NV index handle (0x01xxxxxx)");
        }
        m.counter_index = static_cast<uint32_t>(index);
        CUSTODY_ASSIGN_OR_RETURN(JsonObject counter, o.Object("counter_certify"));
        CUSTODY_ASSIGN_OR_RETURN(m.counter_certify, AttestationFromJson(counter));
        CUSTODY_ASSIGN_OR_RETURN(m.tls_public_key, o.Base64("tls_public_key", 512));
        CUSTODY_ASSIGN_OR_RETURN(m.counter_unit, o.Uint("counter_unit", kMaxCounterUnit));
        if (m.counter_unit < kMinCounterUnit) {
          return o.FieldError("counter_unit", "must be at least 1 (requests per counter step)");
        }
        return OkStatus();
      });
}

nlohmann::json ToJson(const EnrollCompleteResponse& m) {
  return {{"device_id", m.device_id},
          {"certificate", m.certificate_pem},
          {"ca_certificate", m.ca_certificate_pem},
          {"lease_public", B64(m.lease_public)},
          {"policy_public", B64(m.policy_public)},
          {"pcr_selection", UintsToJson(m.pcr_selection)}};
}

Result<EnrollCompleteResponse> ParseEnrollCompleteResponse(std::string_view body) {
  return ParseMessage<EnrollCompleteResponse>(
      body, "enrollment result", [](const JsonObject& o, EnrollCompleteResponse& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"device_id", "certificate", "ca_certificate", "lease_public",
                             "policy_public", "pcr_selection"}));
        CUSTODY_ASSIGN_OR_RETURN(m.device_id, o.String("device_id", kMaxIdBytes));
        // PEM text has newlines, which String() refuses; read it raw and check its shape.
        for (auto [key, out] : {std::pair{"certificate", &m.certificate_pem},
                                std::pair{"ca_certificate", &m.ca_certificate_pem}}) {
          if (!o.Has(key)) return o.FieldError(key, "missing");
          CUSTODY_ASSIGN_OR_RETURN(*out, o.Pem(key, kMaxPem));
        }
        CUSTODY_ASSIGN_OR_RETURN(m.lease_public, o.Base64("lease_public", 32));
        CUSTODY_ASSIGN_OR_RETURN(m.policy_public, o.Base64("policy_public", 65));
        CUSTODY_ASSIGN_OR_RETURN(std::vector<uint64_t> pcrs,
                                 o.Uints("pcr_selection", tpm::kPcrCount, tpm::kPcrCount - 1));
        m.pcr_selection.assign(pcrs.begin(), pcrs.end());
        return OkStatus();
      });
}

// ----- attestation and leases -----------------------------------------------------------------

nlohmann::json ToJson(const NonceResponse& m) {
  return {{"nonce", B64(m.nonce)}, {"expires_in_ms", m.expires_in_ms}};
}

Result<NonceResponse> ParseNonceResponse(std::string_view body) {
  return ParseMessage<NonceResponse>(
      body, "nonce", [](const JsonObject& o, NonceResponse& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"nonce", "expires_in_ms"}));
        CUSTODY_ASSIGN_OR_RETURN(m.nonce, o.Base64("nonce", kMaxNonceBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.expires_in_ms, o.Uint("expires_in_ms"));
        return OkStatus();
      });
}

nlohmann::json ToJson(const AttestRequest& m) {
  return {{"nonce", B64(m.nonce)}, {"quote", QuoteToJson(m.quote)}};
}

Result<AttestRequest> ParseAttestRequest(std::string_view body) {
  return ParseMessage<AttestRequest>(
      body, "attestation", [](const JsonObject& o, AttestRequest& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"nonce", "quote"}));
        CUSTODY_ASSIGN_OR_RETURN(m.nonce, o.Base64("nonce", kMaxNonceBytes));
        CUSTODY_ASSIGN_OR_RETURN(JsonObject quote, o.Object("quote"));
        CUSTODY_ASSIGN_OR_RETURN(m.quote, QuoteFromJson(quote));
        return OkStatus();
      });
}

nlohmann::json ToJson(const LeasePayload& m) {
  nlohmann::json approvals = nlohmann::json::array();
  for (const auto& a : m.approvals) approvals.push_back(ApprovedPolicyToJson(a));
  return {{"lease_id", m.lease_id},
          {"device_id", m.device_id},
          {"licence_id", m.licence_id},
          {"model_id", m.model_id},
          {"model_name", m.model_name},
          {"model_version", m.model_version},
          {"wrapped_dek", B64(m.wrapped_dek)},
          {"approvals", approvals},
          {"counter_limit", m.counter_limit},
          {"counter_unit", m.counter_unit},
          {"not_after", m.not_after},
          {"offline_grace_ms", m.offline_grace_ms},
          {"tpm_clock_ms", m.tpm_clock_ms},
          {"tpm_reset_count", m.tpm_reset_count},
          {"sequence", m.sequence},
          {"revocation_epoch", m.revocation_epoch},
          {"issued_at", m.issued_at}};
}

Result<LeasePayload> ParseLeasePayload(ByteSpan payload) {
  return ParseMessage<LeasePayload>(
      AsChars(payload), "lease", [](const JsonObject& o, LeasePayload& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"lease_id", "device_id", "licence_id", "model_id", "model_name",
                             "model_version", "wrapped_dek", "approvals", "counter_limit",
                             "counter_unit", "not_after", "offline_grace_ms", "tpm_clock_ms",
                             "tpm_reset_count", "sequence", "revocation_epoch", "issued_at"}));
        CUSTODY_ASSIGN_OR_RETURN(m.lease_id, o.String("lease_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.device_id, o.String("device_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.licence_id, o.String("licence_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.model_id, o.String("model_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.model_name, o.String("model_name", 128));
        CUSTODY_ASSIGN_OR_RETURN(m.model_version, o.String("model_version", 64));
        CUSTODY_ASSIGN_OR_RETURN(m.wrapped_dek, o.Base64("wrapped_dek", 256));
        CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> approvals,
                                 o.Objects("approvals", kMaxApprovals));
        for (const JsonObject& a : approvals) {
          CUSTODY_ASSIGN_OR_RETURN(tpm::ApprovedPolicy p, ApprovedPolicyFromJson(a));
          m.approvals.push_back(std::move(p));
        }
        CUSTODY_ASSIGN_OR_RETURN(m.counter_limit, o.Uint("counter_limit"));
        CUSTODY_ASSIGN_OR_RETURN(m.counter_unit, o.Uint("counter_unit", kMaxCounterUnit));
        if (m.counter_unit < kMinCounterUnit) {
          return o.FieldError("counter_unit", "must be at least 1 (requests per counter step)");
        }
        CUSTODY_ASSIGN_OR_RETURN(m.not_after, o.String("not_after", 32));
        CUSTODY_ASSIGN_OR_RETURN(m.offline_grace_ms, o.Uint("offline_grace_ms"));
        CUSTODY_ASSIGN_OR_RETURN(m.tpm_clock_ms, o.Uint("tpm_clock_ms"));
        CUSTODY_ASSIGN_OR_RETURN(const uint64_t resets, o.Uint("tpm_reset_count", UINT32_MAX));
        m.tpm_reset_count = static_cast<uint32_t>(resets);
        CUSTODY_ASSIGN_OR_RETURN(m.sequence, o.Uint("sequence"));
        CUSTODY_ASSIGN_OR_RETURN(m.revocation_epoch, o.Uint("revocation_epoch"));
        CUSTODY_ASSIGN_OR_RETURN(m.issued_at, o.String("issued_at", 32));
        return OkStatus();
      });
}

Bytes LeaseDekContext(std::string_view device_id, std::string_view model_id) {
  constexpr std::string_view kContext = "custody/lease-dek/v1";
  Bytes out(kContext.begin(), kContext.end());
  out.push_back(0);
  out.insert(out.end(), device_id.begin(), device_id.end());
  out.push_back(0);
  out.insert(out.end(), model_id.begin(), model_id.end());
  return out;
}

nlohmann::json ToJson(const AttestResponse& m) {
  nlohmann::json leases = nlohmann::json::array();
  for (const auto& l : m.leases) leases.push_back(l);
  return {{"leases", leases}};
}

Result<AttestResponse> ParseAttestResponse(std::string_view body) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json j, Parse(body, "attestation result"));
  JsonObject o(j, "");
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"leases"}));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> leases, o.Objects("leases", kMaxLeases));
  AttestResponse out;
  for (size_t i = 0; i < leases.size(); ++i) out.leases.push_back(j["leases"][i]);
  return out;
}

// ----- events ----------------------------------------------------------------------------------

nlohmann::json ToJson(const EventsResponse& m) {
  nlohmann::json events = nlohmann::json::array();
  for (const auto& e : m.events) {
    events.push_back({{"seq", e.seq}, {"type", e.type}, {"document", e.document}});
  }
  return {{"events", events}, {"last_seq", m.last_seq}};
}

Result<EventsResponse> ParseEventsResponse(std::string_view body) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json j, Parse(body, "events"));
  JsonObject o(j, "");
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"events", "last_seq"}));
  EventsResponse out;
  CUSTODY_ASSIGN_OR_RETURN(out.last_seq, o.Uint("last_seq"));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> events, o.Objects("events", kMaxEvents));
  for (size_t i = 0; i < events.size(); ++i) {
    CUSTODY_RETURN_IF_ERROR(events[i].RejectUnknown({"seq", "type", "document"}));
    Event e;
    CUSTODY_ASSIGN_OR_RETURN(e.seq, events[i].Uint("seq"));
    CUSTODY_ASSIGN_OR_RETURN(e.type, events[i].String("type", 32));
    CUSTODY_RETURN_IF_ERROR(events[i].Object("document").status());
    e.document = j["events"][i]["document"];
    out.events.push_back(std::move(e));
  }
  return out;
}

nlohmann::json ToJson(const RevocationPayload& m) {
  return {{"device_id", m.device_id},
          {"scope", m.scope},
          {"subject", m.subject},
          {"reason", m.reason},
          {"revocation_epoch", m.revocation_epoch},
          {"issued_at", m.issued_at}};
}

Result<RevocationPayload> ParseRevocationPayload(ByteSpan payload) {
  return ParseMessage<RevocationPayload>(
      AsChars(payload), "revocation", [](const JsonObject& o, RevocationPayload& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown(
            {"device_id", "scope", "subject", "reason", "revocation_epoch", "issued_at"}));
        CUSTODY_ASSIGN_OR_RETURN(m.device_id, o.String("device_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.scope, o.String("scope", 16));
        if (m.scope != "device" && m.scope != "licence" && m.scope != "model") {
          return o.FieldError("scope", "expected device, licence or model");
        }
        CUSTODY_ASSIGN_OR_RETURN(m.subject, o.String("subject", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.reason, o.String("reason", 512));
        CUSTODY_ASSIGN_OR_RETURN(m.revocation_epoch, o.Uint("revocation_epoch"));
        CUSTODY_ASSIGN_OR_RETURN(m.issued_at, o.String("issued_at", 32));
        return OkStatus();
      });
}

// ----- usage and budget ------------------------------------------------------------------------

nlohmann::json ToJson(const UsageRequest& m) {
  nlohmann::json counts = nlohmann::json::array();
  for (const auto& c : m.counts) {
    counts.push_back({{"model_id", c.model_id}, {"client", c.client}, {"count", c.count}});
  }
  nlohmann::json j{{"report_id", m.report_id},
                   {"nonce", B64(m.nonce)},
                   {"counter_certify", AttestationToJson(m.counter_certify)},
                   {"counts", counts},
                   {"prepaid", m.prepaid}};
  if (m.anomaly) j["anomaly"] = *m.anomaly;
  return j;
}

Result<UsageRequest> ParseUsageRequest(std::string_view body) {
  return ParseMessage<UsageRequest>(
      body, "usage report", [](const JsonObject& o, UsageRequest& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown(
            {"report_id", "nonce", "counter_certify", "counts", "prepaid", "anomaly"}));
        CUSTODY_ASSIGN_OR_RETURN(m.report_id, o.String("report_id", kMaxIdBytes));
        if (m.report_id.empty()) return o.FieldError("report_id", "empty");
        CUSTODY_ASSIGN_OR_RETURN(m.nonce, o.Base64("nonce", kMaxNonceBytes));
        CUSTODY_ASSIGN_OR_RETURN(JsonObject certify, o.Object("counter_certify"));
        CUSTODY_ASSIGN_OR_RETURN(m.counter_certify, AttestationFromJson(certify));
        CUSTODY_ASSIGN_OR_RETURN(std::vector<JsonObject> counts, o.Objects("counts", kMaxCounts));
        for (const JsonObject& c : counts) {
          CUSTODY_RETURN_IF_ERROR(c.RejectUnknown({"model_id", "client", "count"}));
          UsageRequest::Count count;
          CUSTODY_ASSIGN_OR_RETURN(count.model_id, c.String("model_id", kMaxIdBytes));
          CUSTODY_ASSIGN_OR_RETURN(count.client, c.String("client", 128));
          CUSTODY_ASSIGN_OR_RETURN(count.count, c.Uint("count", uint64_t{1} << 48));
          m.counts.push_back(std::move(count));
        }
        CUSTODY_ASSIGN_OR_RETURN(m.prepaid, o.Uint("prepaid"));
        CUSTODY_ASSIGN_OR_RETURN(m.anomaly, o.OptionalString("anomaly", kMaxAnomalyBytes));
        return OkStatus();
      });
}

nlohmann::json ToJson(const ExtensionRequestMessage& m) {
  return {{"licence_id", m.licence_id}, {"requested", m.requested}, {"reason", m.reason}};
}

Result<ExtensionRequestMessage> ParseExtensionRequest(std::string_view body) {
  return ParseMessage<ExtensionRequestMessage>(
      body, "extension request", [](const JsonObject& o, ExtensionRequestMessage& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"licence_id", "requested", "reason"}));
        CUSTODY_ASSIGN_OR_RETURN(m.licence_id, o.String("licence_id", kMaxIdBytes));
        CUSTODY_ASSIGN_OR_RETURN(m.requested, o.Uint("requested", uint64_t{1} << 40));
        if (m.requested == 0) return o.FieldError("requested", "must be at least 1");
        CUSTODY_ASSIGN_OR_RETURN(m.reason, o.String("reason", 512));
        return OkStatus();
      });
}

}  // namespace custody::protocol
