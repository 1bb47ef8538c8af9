// The device's half of the custodian protocol (docs/PROTOCOL.md §10-§11), without transport:
// each function turns TPM operations into the message to send, or checks a message received.
// The agent (and tests, and the load generator) move the messages over HTTPS.
//
// Trust: everything received is checked before use. Signed documents are verified against the
// keys pinned at enrollment before their payload is parsed (protocol/envelope.h); a lease must
// name this device, carry a sequence number higher than any seen, and an epoch no lower than the
// device's revocation epoch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/protocol/messages.h"
#include "core/tpm/device.h"

namespace custody::agent {

// What enrollment leaves on the device (the agent persists it in its state directory).
struct DeviceIdentity {
  std::string device_id;
  tpm::EkType ek_type = tpm::EkType::kEcc;
  tpm::KeyBlob ak;
  tpm::KeyBlob binding;
  uint32_t counter_index = tpm::kDefaultCounterIndex;
  Bytes counter_auth;  // 32 random bytes: the NV counter's authValue
  // Requests per counter increment (PROTOCOL.md §7), chosen at enrollment and fixed for its life:
  // a counter value C pays for C x counter_unit requests. Every lease names it too.
  uint64_t counter_unit = 1;
  std::vector<uint32_t> pcr_selection;
  Bytes lease_public;   // pinned custodian lease key (Ed25519, 32 bytes)
  Bytes policy_public;  // pinned custodian policy key (P-256, 65 bytes)
  std::string ca_certificate_pem;
  std::string certificate_pem;  // this device's TLS client certificate
};

// Enrollment, round 1: creates the AK, defines the usage counter (if this TPM does not have it
// yet) and advances it once so that it can be certified, and builds the request.
// `counter_unit`: requests per counter increment (protocol::kMinCounterUnit..kMaxCounterUnit,
// kInvalidArgument otherwise), sent to the custodian in round 2.
struct EnrollmentInProgress {
  protocol::EnrollBeginRequest request;
  DeviceIdentity identity;  // ak, ek_type, counter_index, counter_auth and counter_unit filled
};
Result<EnrollmentInProgress> BeginEnrollment(tpm::Tpm& tpm, const std::string& token,
                                             tpm::EkType ek_type, uint32_t counter_index,
                                             uint64_t counter_unit);

// Enrollment, round 2: activates the credential, creates the binding key under the custodian's
// policy key, certifies it and the counter with the AK, and builds the completion request.
// `tls_spki`: SubjectPublicKeyInfo DER of the device's TLS key.
Result<protocol::EnrollCompleteRequest> ContinueEnrollment(
    tpm::Tpm& tpm, EnrollmentInProgress& enrollment, const protocol::EnrollBeginResponse& challenge,
    ByteSpan tls_spki);

// The TLS client key at rest (FORMAT.md, "tls-key.sealed"): its PEM under AES-256-GCM with a
// random 32-byte key that this TPM seals (Tpm::Seal), with AAD "custody/tls-key/v1" 0x00
// device_id. A copy of the state directory holds no usable key anywhere else.
struct SealedTlsKey {
  tpm::KeyBlob sealed_key;  // the AES key, as a sealed data object of this TPM
  Bytes nonce;              // 12 bytes
  Bytes ciphertext;         // the PEM, then the 16-byte tag
};
Result<SealedTlsKey> SealTlsKey(tpm::Tpm& tpm, std::string_view device_id, ByteSpan pem);
// kUnauthenticated: sealed by another TPM, or for another device, or altered.
Result<SecretBuffer> OpenTlsKey(tpm::Tpm& tpm, std::string_view device_id, const SealedTlsKey& key);

// Enrollment, done: records what the custodian returned (pins its keys).
Status FinishEnrollment(EnrollmentInProgress& enrollment,
                        const protocol::EnrollCompleteResponse& result);

// Attestation: a quote of the pinned PCR selection over the custodian's nonce.
Result<protocol::AttestRequest> MakeAttestation(tpm::Tpm& tpm, const DeviceIdentity& id,
                                                ByteSpan nonce);

// What this device's AK adds to the TPM's reset count in its quotes. The TPM obfuscates resetCount
// in quotes by keys outside the endorsement hierarchy, adding a constant of the key (PROTOCOL.md
// §8); a lease's tpm_reset_count minus this is the TPM's real reset count at that quote. Found by
// one quote over a fresh random nonce, verified with the AK's public key, against `reset_count`
// from a ReadClock of this boot (a reset in between ends the process with the boot).
Result<uint32_t> QuotedResetOffset(tpm::Tpm& tpm, const DeviceIdentity& id, uint32_t reset_count);

// A usage report: the counter certified over the custodian's nonce, plus the journal's counts.
// `prepaid`: requests the certified counter paid for that were not served yet (counter x unit -
// the meter position the counts add up to). `anomaly`: a meter anomaly
// to put on record (e.g. the journal was behind the counter at start), clean text.
Result<protocol::UsageRequest> MakeUsageReport(tpm::Tpm& tpm, const DeviceIdentity& id,
                                               ByteSpan nonce, const std::string& report_id,
                                               std::vector<protocol::UsageRequest::Count> counts,
                                               uint64_t prepaid,
                                               std::optional<std::string> anomaly);

// A lease, verified: the envelope signature under the pinned lease key, then the payload, which
// must name this device and carry this device's counter unit (kFailedPrecondition otherwise: the
// custodian's record and the device's disagree on what a counter step is worth). Sequence and
// epoch checks are the caller's (it knows what it saw).
Result<protocol::LeasePayload> OpenLease(const DeviceIdentity& id, const nlohmann::json& envelope);

// A revocation, verified likewise.
Result<protocol::RevocationPayload> OpenRevocation(const DeviceIdentity& id,
                                                   const nlohmann::json& envelope);

// The lease's model key, unwrapped by the TPM under one of the lease's approved PCR states
// (the first the platform is in). kPermissionDenied if the platform is in none of them.
Result<SecretBuffer> UnwrapLeaseKey(tpm::Tpm& tpm, const DeviceIdentity& id,
                                    const protocol::LeasePayload& lease);

}  // namespace custody::agent
