// The messages of the device protocol (docs/PROTOCOL.md §10-§11): what the agent and the
// custodian exchange over mutual TLS, as JSON. Shared by both sides so that there is one
// encoder and one strict decoder per message. Binary fields are base64; TPM structures are
// their standard marshalled bytes (tpm_types.h); PCR values are hex.
//
// Decoders take untrusted input: every field is checked for type, presence and size, unknown
// fields are refused, and errors name the field (json.h). Encoders produce compact JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/protocol/json.h"
#include "core/tpm/tpm_types.h"

namespace custody::protocol {

inline constexpr size_t kMaxRequestBytes = 256 * 1024;  // any device request body
inline constexpr size_t kMaxTpmStructBytes = 4096;      // one marshalled TPM structure
inline constexpr size_t kMaxCertificateBytes = 8192;

// ----- TPM structures ------------------------------------------------------------------------
nlohmann::json PcrValuesToJson(const tpm::PcrValues& values);  // {"0": "<64 hex>", ...}
Result<tpm::PcrValues> PcrValuesFromJson(const JsonObject& parent, std::string_view key);

nlohmann::json AttestationToJson(const tpm::Attestation& a);  // {"attest", "signature"}
Result<tpm::Attestation> AttestationFromJson(const JsonObject& o);

nlohmann::json QuoteToJson(const tpm::Quote& q);  // {"attest", "signature", "pcrs"}
Result<tpm::Quote> QuoteFromJson(const JsonObject& o);

nlohmann::json ApprovedPolicyToJson(const tpm::ApprovedPolicy& p);
Result<tpm::ApprovedPolicy> ApprovedPolicyFromJson(const JsonObject& o);

// ----- enrollment (two round trips: credential activation needs one) -------------------------
// POST /v1/enroll/begin (no client certificate: the device has none yet)
struct EnrollBeginRequest {
  std::string token;  // the one-time enrollment token
  int ek_type = 0;    // 0 = ECC P-256 (tpm::EkType)
  Bytes ek_public;
  std::optional<Bytes> ek_certificate;  // DER, from the TPM's NV
  Bytes ak_public;
};
nlohmann::json ToJson(const EnrollBeginRequest& m);
Result<EnrollBeginRequest> ParseEnrollBeginRequest(std::string_view body);

struct EnrollBeginResponse {
  std::string enrollment_id;
  tpm::Credential credential;  // MakeCredential(EK, Name(AK), secret)
  Bytes certify_nonce;         // for TPM2_Certify of the binding key by the AK
  Bytes policy_public;         // the custodian policy key (P-256, uncompressed point): the
                               // binding key must be created with BindingKeyAuthPolicy(it)
};
nlohmann::json ToJson(const EnrollBeginResponse& m);
Result<EnrollBeginResponse> ParseEnrollBeginResponse(std::string_view body);

// The metering unit (PROTOCOL.md §7): the device advances its TPM counter once per block of
// `counter_unit` requests, so a counter value C pays for C x counter_unit requests. Chosen by the
// device at enrollment and fixed for the life of the enrollment.
inline constexpr uint64_t kMinCounterUnit = 1;
inline constexpr uint64_t kMaxCounterUnit = 65536;
inline constexpr size_t kMaxAnomalyBytes = 1024;

// POST /v1/enroll/complete
struct EnrollCompleteRequest {
  std::string enrollment_id;
  Bytes activated_secret;            // what TPM2_ActivateCredential released
  Bytes binding_public;              // TPM2B_PUBLIC
  tpm::Attestation binding_certify;  // TPM2_Certify(binding, AK, certify_nonce)
  uint32_t counter_index = 0;        // the NV counter the device defined (written at least once)
  tpm::Attestation counter_certify;  // TPM2_NV_Certify(counter, AK, certify_nonce): its start
  Bytes tls_public_key;              // SubjectPublicKeyInfo DER of the device's TLS key (P-256)
  uint64_t counter_unit = 1;         // requests per counter increment, 1..kMaxCounterUnit
};
nlohmann::json ToJson(const EnrollCompleteRequest& m);
Result<EnrollCompleteRequest> ParseEnrollCompleteRequest(std::string_view body);

struct EnrollCompleteResponse {
  std::string device_id;
  std::string certificate_pem;          // the device's TLS certificate, issued by the custodian CA
  std::string ca_certificate_pem;       // pin: the custodian's CA
  Bytes lease_public;                   // pin: Ed25519 key that signs leases and events (32 bytes)
  Bytes policy_public;                  // pin: P-256 policy key (65 bytes)
  std::vector<uint32_t> pcr_selection;  // what attestation quotes
};
nlohmann::json ToJson(const EnrollCompleteResponse& m);
Result<EnrollCompleteResponse> ParseEnrollCompleteResponse(std::string_view body);

// ----- attestation and leases (mutual TLS) ----------------------------------------------------
// POST /v1/nonce -> {"nonce": b64, "expires_in_ms": n}
struct NonceResponse {
  Bytes nonce;
  uint64_t expires_in_ms = 0;
};
nlohmann::json ToJson(const NonceResponse& m);
Result<NonceResponse> ParseNonceResponse(std::string_view body);

// POST /v1/attest
struct AttestRequest {
  Bytes nonce;
  tpm::Quote quote;
};
nlohmann::json ToJson(const AttestRequest& m);
Result<AttestRequest> ParseAttestRequest(std::string_view body);

// The payload of a custody.lease.v1 document (envelope.h).
struct LeasePayload {
  std::string lease_id;
  std::string device_id;
  std::string licence_id;
  std::string model_id;
  std::string model_name;
  std::string model_version;
  Bytes wrapped_dek;  // ECIES to the binding key, context = LeaseDekContext(...)
  std::vector<tpm::ApprovedPolicy> approvals;  // the group's approved PCR states
  // In requests: the device may serve while its meter position (counter x counter_unit -
  // unserved prepaid requests) is below this.
  uint64_t counter_limit = 0;
  uint64_t counter_unit = 1;      // the device's unit, as enrolled (requests per increment)
  std::string not_after;          // RFC 3339 UTC: wall-clock end of the licence
  uint64_t offline_grace_ms = 0;  // TPM-clock time the device may serve without the custodian
  // The TPM clock (clockInfo.clock, ms) of the device's latest verified quote: the device may
  // serve offline while its TPM clock is within [tpm_clock_ms, tpm_clock_ms + offline_grace_ms].
  uint64_t tpm_clock_ms = 0;
  // clockInfo.resetCount of that quote, as the device's AK quotes it: the TPM adds a constant
  // per AK (obfuscation, PROTOCOL.md §8), so it is compared only with the same AK's quotes. The
  // device counts the TPM resets since this quote against its offline grace.
  uint32_t tpm_reset_count = 0;
  uint64_t sequence = 0;          // strictly increasing per device
  uint64_t revocation_epoch = 0;  // the device's epoch at issue; a later revocation is higher
  std::string issued_at;          // RFC 3339 UTC
};
nlohmann::json ToJson(const LeasePayload& m);
Result<LeasePayload> ParseLeasePayload(ByteSpan payload);

// The ECIES context binding a wrapped DEK to its lease: "custody/lease-dek/v1" 0x00 device_id
// 0x00 model_id. A DEK wrapped for one device or model cannot be unwrapped as another's.
Bytes LeaseDekContext(std::string_view device_id, std::string_view model_id);

// Answer of /v1/attest: {"leases": [envelope, ...]} (one per licensed model).
struct AttestResponse {
  std::vector<nlohmann::json> leases;
};
nlohmann::json ToJson(const AttestResponse& m);
Result<AttestResponse> ParseAttestResponse(std::string_view body);

// ----- events (long-poll) ---------------------------------------------------------------------
// GET /v1/events?after=SEQ&wait_ms=N -> {"events": [{"seq", "type", "document"}], "last_seq"}
// Each event's document is an envelope: a lease (new lease or raised budget) or a revocation.
struct Event {
  uint64_t seq = 0;
  std::string type;  // "lease" | "revocation"
  nlohmann::json document;
};
struct EventsResponse {
  std::vector<Event> events;
  uint64_t last_seq = 0;
};
nlohmann::json ToJson(const EventsResponse& m);
Result<EventsResponse> ParseEventsResponse(std::string_view body);

// The payload of a custody.revocation.v1 document.
struct RevocationPayload {
  std::string device_id;
  std::string scope;    // "device" | "licence" | "model"
  std::string subject;  // device id, licence id or model id
  std::string reason;
  uint64_t revocation_epoch = 0;  // the device's new epoch; leases issued before are void
  std::string issued_at;
};
nlohmann::json ToJson(const RevocationPayload& m);
Result<RevocationPayload> ParseRevocationPayload(ByteSpan payload);

// ----- usage and budget -----------------------------------------------------------------------
// POST /v1/usage (nonce from /v1/nonce)
struct UsageRequest {
  std::string report_id;  // chosen by the device (idempotency)
  Bytes nonce;
  tpm::Attestation counter_certify;  // TPM2_NV_Certify of the counter over the nonce
  struct Count {
    std::string model_id;
    std::string client;
    uint64_t count = 0;
  };
  std::vector<Count> counts;  // exact increments since the previous report, from the journal
  // Requests the certified counter paid for beyond the meter position the counts of this report
  // add up to (counter x unit - that position). It can exceed a block: a report sent again after
  // the device served more. The custodian credits all of it: claiming more only lowers the
  // device's own limit.
  uint64_t prepaid = 0;
  // A meter anomaly the device wants on record (clean text, at most kMaxAnomalyBytes), e.g. its
  // journal was found behind its counter at start: a restored state directory.
  std::optional<std::string> anomaly;
};
nlohmann::json ToJson(const UsageRequest& m);
Result<UsageRequest> ParseUsageRequest(std::string_view body);

// POST /v1/extensions
struct ExtensionRequestMessage {
  std::string licence_id;
  uint64_t requested = 0;
  std::string reason;
};
nlohmann::json ToJson(const ExtensionRequestMessage& m);
Result<ExtensionRequestMessage> ParseExtensionRequest(std::string_view body);

}  // namespace custody::protocol
