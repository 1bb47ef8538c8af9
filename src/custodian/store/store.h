// The custodian's storage: one interface, implemented on SQLite (sqlite_store.h) and later on
// PostgreSQL (several stateless custodian instances sharing one database). Nothing here assumes
// SQLite: no rowids, no file paths, no single-writer semantics visible to callers.
//
// Consistency: every state change runs inside Store::Transact, whose callback receives a
// Transaction. Everything the callback does commits atomically TOGETHER WITH the audit entries it
// appended (Transaction::Audit), or not at all. Transact returns only after the commit is durable
// (see Durability), so a caller may acknowledge a request as soon as it returns. A callback that
// returns an error rolls back everything it did; Transact returns that error.
//
// Reads that do not need to be consistent with a write go through the Store's const methods
// (any thread, concurrent with writes).
//
// Secrets: the store never sees a plaintext model key: `dek_sealed` is already encrypted under
// the custodian master key by the caller (custodian/keys.h). Bearer tokens and enrollment tokens
// are stored as SHA-256 hashes only.
//
// Errors: kNotFound (no such row), kAlreadyExists (unique key taken), kUnavailable (database
// busy or unreachable; retrying may help), kDataLoss (corrupt database, broken audit chain),
// kInternal (bugs). Messages name the entity and key.
//
// Threading: a Store is safe to use from any number of threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/protocol/audit.h"

namespace custody::custodian {

using TimePoint = std::chrono::sys_seconds;  // all times are UTC seconds

enum class Role { kViewer = 0, kOperator = 1, kAdmin = 2 };  // ordered: admin ⊇ operator ⊇ viewer

struct ApiToken {
  std::string id;    // public identifier, e.g. "tok_3f2a…" (shown in lists and the audit log)
  std::string name;  // who or what holds it
  Role role = Role::kViewer;
  Bytes token_hash;  // SHA-256 of the secret token
  TimePoint created{};
  std::optional<TimePoint> revoked;
};

struct ModelRecord {
  std::string model_id;  // 32 hex digits, from the sealed header
  std::string name;
  std::string version;
  Bytes dek_sealed;           // the DEK encrypted under the master key (never the DEK itself)
  std::string sealed_sha256;  // hex SHA-256 of the sealed file, optional ("" if not given)
  TimePoint created{};
  std::optional<TimePoint> retired;
};

struct GoldenSetRecord {
  std::string name;
  std::map<uint32_t, Bytes> pcrs;  // PCR index -> 32-byte value
};

struct GroupRecord {
  std::string name;
  std::vector<uint32_t> pcr_selection;  // sorted
  bool allow_tofu = false;              // accept a device's first quoted state as golden
  bool require_ek_certificate = true;
  std::vector<GoldenSetRecord> golden;
  // Signed PCR approvals (tpm::ApprovedPolicy as JSON, one per golden set), refreshed by the
  // service whenever the golden sets change.
  std::vector<std::string> approvals_json;
  TimePoint created{};
};

struct EnrollmentTokenRecord {
  Bytes token_hash;
  std::string group;
  TimePoint created{};
  TimePoint expires{};
  std::optional<TimePoint> used;
  std::string used_by_device;  // device id, once used
  std::string created_by;      // principal
};

// Between the two enrollment round trips (credential activation needs one).
struct PendingEnrollment {
  std::string id;  // random, returned to the device
  Bytes token_hash;
  std::string group;
  Bytes ek_public;  // TPM2B_PUBLIC
  std::optional<Bytes> ek_certificate;
  int ek_type = 0;               // tpm::EkType
  Bytes ak_public;               // TPM2B_PUBLIC
  Bytes credential_secret_hash;  // SHA-256 of the secret sealed in the credential
  Bytes certify_nonce;           // for the binding key's TPM2_Certify
  TimePoint expires{};
};

struct DeviceRecord {
  std::string device_id;  // "dev_" + 32 hex
  std::string group;
  Bytes ek_public;
  Bytes ek_name;
  Bytes ak_public;
  Bytes binding_public;
  uint32_t counter_index = 0;
  Bytes counter_name;      // NV Name with TPMA_NV_WRITTEN
  std::string tls_serial;  // serial (hex) of the device TLS certificate the CA issued
  Bytes tls_public_key;    // SubjectPublicKeyInfo DER of that certificate's key
  TimePoint enrolled{};
  std::optional<TimePoint> revoked;
  std::string revoked_reason;
  std::optional<uint64_t> last_counter;  // highest certified NV counter value seen
  std::optional<TimePoint> last_seen;
  uint64_t lease_sequence = 0;          // last lease sequence number issued (strictly increasing)
  uint64_t revocation_epoch = 0;        // bumped by every revocation that concerns the device
  std::map<uint32_t, Bytes> tofu_pcrs;  // first quoted state, when the group allows TOFU
  uint64_t counter_unit = 1;            // requests per counter increment (fixed at enrollment)
  // In requests: how far the device has certainly metered (highest certified counter x unit -
  // the credited prepaid requests). Leases allow `meter_position + remaining`.
  uint64_t meter_position = 0;
  // The TPM clock and reset count (as the AK quotes it: obfuscated) of the latest verified quote;
  // both set by the same attestation.
  std::optional<uint64_t> attested_tpm_clock_ms;
  std::optional<uint32_t> attested_tpm_reset_count;
};

struct ExtensionPolicy {
  bool manual = true;               // every request waits for a person
  uint64_t auto_approve_up_to = 0;  // per period, when not manual
  uint64_t period_seconds = 0;
};

struct LicenceRecord {
  std::string licence_id;  // "lic_" + 16 hex
  std::string model_id;
  std::string device_id;  // exactly one of device_id / group is set
  std::string group;
  uint64_t budget = 0;  // inferences granted in total (raised by approved extensions)
  uint64_t used = 0;    // inferences reported (certified) so far, across devices
  TimePoint not_after{};
  uint64_t offline_grace_ms = 0;
  ExtensionPolicy extension;
  TimePoint created{};
  std::optional<TimePoint> revoked;
  std::string revoked_reason;
};

struct LeaseRecord {
  std::string lease_id;
  std::string device_id;
  std::string licence_id;
  std::string model_id;
  uint64_t sequence = 0;
  uint64_t counter_limit = 0;  // in requests, as in the lease (protocol::LeasePayload)
  TimePoint not_after{};
  uint64_t offline_grace_ms = 0;
  uint64_t revocation_epoch = 0;
  TimePoint issued{};
  std::string envelope_json;  // the signed lease as sent
};

struct UsageCount {
  std::string model_id;
  std::string client;  // the agent's caller identity (uid or app name)
  uint64_t count = 0;
};

struct UsageReport {
  std::string report_id;  // chosen by the device; a repeat of a known id is a no-op
  std::string device_id;
  uint64_t counter_value = 0;      // certified
  std::vector<UsageCount> counts;  // increments since the device's previous report
  TimePoint received{};
  bool rollback = false;  // counter lower than the last certified value: flagged as tampering
};

enum class ExtensionStatus { kPending, kApproved, kDenied };

struct ExtensionRequest {
  std::string request_id;  // "ext_" + 16 hex
  std::string device_id;
  std::string licence_id;
  uint64_t requested = 0;  // additional inferences asked for
  std::string reason;
  ExtensionStatus status = ExtensionStatus::kPending;
  uint64_t granted = 0;
  std::string decided_by;  // principal, or "policy" for automatic approvals
  std::optional<TimePoint> decided;
  TimePoint created{};
};

// Something the device must learn on its next long-poll answer.
struct DeviceEvent {
  uint64_t seq = 0;  // assigned by the store; strictly increasing across all events
  std::string device_id;
  std::string type;  // "revocation", "lease", "extension", "policy"
  std::string payload_json;
  TimePoint created{};
};

// One open transaction. Valid only inside the Transact callback.
class Transaction {
 public:
  virtual ~Transaction() = default;

  virtual Status PutToken(const ApiToken& token) = 0;
  virtual Status RevokeToken(const std::string& id, TimePoint when) = 0;

  virtual Status PutModel(const ModelRecord& model) = 0;  // kAlreadyExists for a known model_id
  virtual Status RetireModel(const std::string& model_id, TimePoint when) = 0;

  virtual Status PutGroup(const GroupRecord& group) = 0;  // insert or replace by name
  virtual Status PutEnrollmentToken(const EnrollmentTokenRecord& token) = 0;
  // kFailedPrecondition if already used or expired at `when` (the message says which).
  virtual Status UseEnrollmentToken(ByteSpan token_hash, const std::string& device_id,
                                    TimePoint when) = 0;
  virtual Status PutPendingEnrollment(const PendingEnrollment& pending) = 0;
  virtual Status DeletePendingEnrollment(const std::string& id) = 0;

  virtual Status PutDevice(const DeviceRecord& device) = 0;  // insert or replace by device_id
  virtual Status PutLicence(const LicenceRecord& licence) = 0;
  virtual Status PutLease(const LeaseRecord& lease) = 0;
  // Records a single-use attestation/usage nonce; kAlreadyExists if it was used before.
  virtual Status ConsumeNonce(ByteSpan nonce, const std::string& device_id, TimePoint when) = 0;
  // kAlreadyExists if report_id is known for this device (the caller then answers as before).
  virtual Status PutUsageReport(const UsageReport& report) = 0;
  virtual Status PutExtension(const ExtensionRequest& request) = 0;  // insert or replace by id
  // Appends an event; returns its seq.
  virtual Result<uint64_t> AddEvent(const DeviceEvent& event) = 0;

  // Reads inside the transaction (see its own writes; for read-modify-write).
  virtual Result<DeviceRecord> GetDevice(const std::string& device_id) = 0;
  virtual Result<LicenceRecord> GetLicence(const std::string& licence_id) = 0;
  virtual Result<ExtensionRequest> GetExtension(const std::string& request_id) = 0;
  virtual Result<PendingEnrollment> GetPendingEnrollment(const std::string& id) = 0;
  virtual Result<EnrollmentTokenRecord> GetEnrollmentToken(ByteSpan token_hash) = 0;

  // Appends to the hash-chained audit log in this transaction (protocol/audit.h).
  virtual Status Audit(const std::string& actor, const std::string& action,
                       const std::string& subject, const nlohmann::json& details) = 0;
};

enum class Durability {
  kPowerLoss,     // a commit is on stable storage before Transact returns (fsync)
  kProcessCrash,  // survives the custodian being killed, not a power cut (faster)
};

struct StoreOptions {
  Durability durability = Durability::kPowerLoss;
};

class Store {
 public:
  virtual ~Store() = default;

  // Runs `fn` in one transaction; see the top of this file.
  virtual Status Transact(const std::function<Status(Transaction&)>& fn) = 0;

  virtual Result<std::optional<ApiToken>> FindTokenByHash(ByteSpan token_hash) const = 0;
  virtual Result<std::vector<ApiToken>> ListTokens() const = 0;

  virtual Result<ModelRecord> GetModel(const std::string& model_id) const = 0;
  virtual Result<std::vector<ModelRecord>> ListModels() const = 0;

  virtual Result<GroupRecord> GetGroup(const std::string& name) const = 0;
  virtual Result<std::vector<GroupRecord>> ListGroups() const = 0;

  virtual Result<DeviceRecord> GetDevice(const std::string& device_id) const = 0;
  virtual Result<std::vector<DeviceRecord>> ListDevices() const = 0;

  virtual Result<LicenceRecord> GetLicence(const std::string& licence_id) const = 0;
  // Licences that apply to a device: its own and its group's, not revoked.
  virtual Result<std::vector<LicenceRecord>> LicencesForDevice(const std::string& device_id,
                                                               const std::string& group) const = 0;
  virtual Result<std::vector<LicenceRecord>> ListLicences() const = 0;

  virtual Result<std::vector<LeaseRecord>> LeasesForDevice(const std::string& device_id) const = 0;
  // Devices holding a lease for `model_id` (for fan-out of a model revocation).
  virtual Result<std::vector<std::string>> DevicesWithModel(const std::string& model_id) const = 0;

  virtual Result<std::vector<ExtensionRequest>> ListExtensions(
      std::optional<ExtensionStatus> status) const = 0;
  // Sum of `granted` of approved requests on `licence_id` decided at or after `since`.
  virtual Result<uint64_t> GrantedSince(const std::string& licence_id, TimePoint since) const = 0;
  // Sum of `granted` of the approved requests of `device_id` on `licence_id` (saturating): what
  // the device's allowance on the licence was raised by. Reads only that device's requests, so
  // its cost does not grow with the fleet's history.
  virtual Result<uint64_t> GrantedToDevice(const std::string& licence_id,
                                           const std::string& device_id) const = 0;

  virtual Result<std::vector<UsageCount>> UsageForDevice(const std::string& device_id) const = 0;

  // Events of a device with seq > after, oldest first, at most `limit`.
  virtual Result<std::vector<DeviceEvent>> EventsAfter(const std::string& device_id, uint64_t after,
                                                       size_t limit) const = 0;
  // The highest event seq assigned so far (0 if none).
  virtual Result<uint64_t> LastEventSeq() const = 0;

  // Audit entries with seq > after, oldest first, at most `limit` (the export).
  virtual Result<std::vector<protocol::AuditEntry>> AuditAfter(uint64_t after,
                                                               size_t limit) const = 0;

  // Health: the database answers a trivial query.
  virtual Status Ping() const = 0;
};

}  // namespace custody::custodian
