// The custodian's decisions (DESIGN.md §6, §11): enrollment, attestation and key release,
// leases, usage, budget extensions, the stop switch and the audit trail. Independent of HTTP:
// the API layer (api.h) parses requests, calls these methods and renders their results; tests
// call them directly too.
//
// Every state change is one Store transaction together with its audit entry. Every refusal is a
// Status whose code the API maps to an HTTP status and whose message says which check failed.
// Nothing secret is logged or returned: DEKs leave only wrapped to a device's TPM binding key.
//
// Threading: all methods are safe to call concurrently (the Store serialises writes; the keys
// are immutable). `on_event` is called after the commit of each device event, from the calling
// thread, to wake that device's long-poll.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/protocol/messages.h"
#include "custodian/derived_cache.h"
#include "custodian/keys.h"
#include "custodian/store/store.h"

namespace custody::custodian {

// Who is acting, for authorisation already done by the HTTP layer and for the audit trail.
struct Actor {
  std::string kind;               // "token", "device", "policy", "system"
  std::string id;                 // token id or device id
  std::string name;               // token name
  std::string AuditName() const;  // "token:alice (tok_…)", "device:dev_…", "policy"
};

struct ServiceOptions {
  std::string ek_ca_dir;  // TPM-maker CA certificates; empty: no EK certificate can be verified
  std::chrono::seconds nonce_ttl{120};
  std::chrono::seconds enrollment_ttl{600};
  int device_cert_days = 3650;
  uint32_t max_events_per_poll = 100;
};

using Clock = std::function<TimePoint()>;
TimePoint SystemNow();

// ----- admin inputs (parsed by api.cc) ----------------------------------------------------------
struct ModelRegistration {
  std::string model_id;
  std::string name;
  std::string version;
  SecretBuffer dek;
  std::string sealed_sha256;
};

struct GroupSpec {
  std::string name;
  std::vector<uint32_t> pcrs;
  bool allow_tofu = false;
  bool require_ek_certificate = true;
};

struct LicenceSpec {
  std::string model_id;
  std::string device_id;  // exactly one of device_id / group
  std::string group;
  uint64_t budget = 0;
  TimePoint not_after{};
  uint64_t offline_grace_ms = 0;
  ExtensionPolicy extension;
};

class CustodianService {
 public:
  CustodianService(Store& store, const CustodianKeys& keys, ServiceOptions options,
                   Clock clock = SystemNow);

  void set_on_event(std::function<void(const std::string& device_id)> f) {
    on_event_ = std::move(f);
  }

  // ----- people and automation -----------------------------------------------------------------
  // Creates a bearer token; returns {"id", "name", "role", "token"} (the token is shown once).
  Result<nlohmann::json> CreateToken(const Actor& actor, const std::string& name, Role role);
  Status RevokeToken(const Actor& actor, const std::string& token_id);
  Result<nlohmann::json> ListTokens() const;
  // The principal of a presented bearer token; kUnauthenticated for unknown or revoked tokens.
  Result<ApiToken> Authenticate(std::string_view token) const;

  Result<nlohmann::json> RegisterModel(const Actor& actor, ModelRegistration model);
  Result<nlohmann::json> ListModels() const;
  Status RetireModel(const Actor& actor, const std::string& model_id, const std::string& reason);

  Result<nlohmann::json> CreateGroup(const Actor& actor, const GroupSpec& spec);
  // Adds (or replaces) a golden PCR set and signs its approval with the policy key.
  Result<nlohmann::json> AddGoldenSet(const Actor& actor, const std::string& group,
                                      const std::string& set_name, const tpm::PcrValues& pcrs);
  Result<nlohmann::json> ListGroups() const;

  // Returns {"token", "group", "expires"}; the token is shown once.
  Result<nlohmann::json> CreateEnrollmentToken(const Actor& actor, const std::string& group,
                                               std::chrono::seconds ttl);

  Result<nlohmann::json> CreateLicence(const Actor& actor, const LicenceSpec& spec);
  Result<nlohmann::json> ListLicences() const;

  Result<nlohmann::json> ListDevices() const;
  Result<nlohmann::json> GetDevice(const std::string& device_id) const;

  Result<nlohmann::json> ListExtensions(std::optional<ExtensionStatus> status) const;
  // granted: 0 means "what was requested".
  Result<nlohmann::json> ApproveExtension(const Actor& actor, const std::string& request_id,
                                          uint64_t granted);
  Result<nlohmann::json> DenyExtension(const Actor& actor, const std::string& request_id,
                                       const std::string& reason);

  // The stop switch. scope: "device", "licence" or "model". Every affected device gets a signed
  // revocation on its event stream in the same transaction.
  Result<nlohmann::json> Revoke(const Actor& actor, const std::string& scope, const std::string& id,
                                const std::string& reason);

  // ----- devices ---------------------------------------------------------------------------------
  Result<protocol::EnrollBeginResponse> EnrollBegin(const protocol::EnrollBeginRequest& request);
  Result<protocol::EnrollCompleteResponse> EnrollComplete(
      const protocol::EnrollCompleteRequest& request);

  Result<protocol::NonceResponse> IssueNonce(const std::string& device_id);
  Result<protocol::AttestResponse> Attest(const std::string& device_id,
                                          const protocol::AttestRequest& request);
  // Events after `after` (non-blocking). The API waits on the long-poll hub when empty.
  Result<protocol::EventsResponse> Events(const std::string& device_id, uint64_t after);
  Result<nlohmann::json> ReportUsage(const std::string& device_id,
                                     const protocol::UsageRequest& request);
  Result<nlohmann::json> RequestExtension(const std::string& device_id,
                                          const protocol::ExtensionRequestMessage& request);

  // For tests and the dashboard: the device's remaining budget on a licence.
  Result<uint64_t> Remaining(const DeviceRecord& device, const LicenceRecord& licence) const;

 private:
  struct LeaseParts;
  Result<DeviceRecord> ActiveDevice(const std::string& device_id) const;
  Result<Bytes> MakeNonce(const std::string& device_id) const;
  Status CheckNonce(const std::string& device_id, ByteSpan nonce) const;
  Result<std::vector<tpm::ApprovedPolicy>> ApprovalsFor(const GroupRecord& group,
                                                        const DeviceRecord& device) const;
  // Builds and signs a lease for `device` on `licence`, bumping device.lease_sequence; the
  // caller stores device, lease and audit entry in its transaction.
  Result<LeaseRecord> BuildLease(DeviceRecord& device, const LicenceRecord& licence,
                                 const std::vector<tpm::ApprovedPolicy>& approvals) const;
  // The revocation documents `devices` will receive, each for the epoch after its current one,
  // signed in parallel for a large fleet.
  Result<std::vector<std::string>> SignRevocations(const std::vector<DeviceRecord>& devices,
                                                   const std::string& scope, const std::string& id,
                                                   const std::string& reason) const;
  Result<nlohmann::json> RevocationDocument(const DeviceRecord& device, const std::string& scope,
                                            const std::string& subject,
                                            const std::string& reason) const;
  void Notify(const std::vector<std::string>& device_ids) const;
  // Records `lease` in `tx`: the lease row, an event on the device's stream and the audit entry
  // (`reason` says why it was issued). Returns the event's sequence.
  Result<uint64_t> RecordLease(Transaction& tx, const LeaseRecord& lease, const Actor& actor,
                               const std::string& reason) const;
  // Sends fresh leases, as events, to every device of `device_ids` that has attested before and
  // is not revoked: for all its active licences, or only `only_licence`. Used when what a lease
  // carries changed without the device asking: approved PCR policies, a new licence.
  Status PushLeases(const Actor& actor, const std::vector<DeviceRecord>& devices,
                    const std::string& only_licence, const std::string& reason);
  std::string Now() const;
  // The model's key, opened from its sealed form once and kept for later leases (see model_keys_).
  Result<std::shared_ptr<const SecretBuffer>> ModelKey(const ModelRecord& model) const;

  Store& store_;
  const CustodianKeys& keys_;
  ServiceOptions options_;
  Clock clock_;
  SecretBuffer nonce_key_;
  // The authPolicy every binding key must carry (fixed by the policy key): computed once.
  crypto::Sha256Digest binding_auth_policy_{};
  // Opened model keys by model id, keyed also by the sealed bytes each came from. Every lease
  // wraps its model's key to one device; opening it each time cost an AES-GCM decryption and a
  // locked mapping per lease. The keys stay in SecretBuffers (locked, not dumped, wiped when the
  // last user drops them); the master key that opens them is in this process for its whole life
  // anyway. A custodian serves tens of models.
  mutable DerivedCache<SecretBuffer> model_keys_{1024};
  // Serialises budget extension requests (see RequestExtension).
  std::mutex extension_mu_;
  // Devices' binding keys, checked (attributes, authPolicy) and parsed once per enrollment: every
  // lease wraps a key to one, and parsing a TPM public area into an OpenSSL key costs about as
  // much as the wrap itself.
  mutable DerivedCache<crypto::P256PublicKey> binding_keys_{100000};
  // The binding key of `device`, checked and parsed (see binding_keys_).
  Result<std::shared_ptr<const crypto::P256PublicKey>> BindingKey(const DeviceRecord& device) const;
  std::function<void(const std::string&)> on_event_;
};

}  // namespace custody::custodian
