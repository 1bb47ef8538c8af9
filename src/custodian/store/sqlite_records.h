// The store's records as SQL (internal to the SQLite store): one function per operation of
// store.h, run on a given Connection. The writer's Transaction and the Store's reads (on pooled
// reader connections) share these, so a record is encoded and decoded in exactly one place.
// The schema and how each field is stored: sqlite_schema.cc.
//
// Errors follow store.h; messages name the entity and its key ("model 'abc' already exists",
// "licence 'lic_1': model 'abc' does not exist"). A stored value that cannot be decoded (an
// unknown enum name, malformed JSON in a map column) is kDataLoss.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/protocol/audit.h"
#include "custodian/store/sqlite_db.h"
#include "custodian/store/sqlite_store.h"
#include "custodian/store/store.h"

namespace custody::custodian::sqlite {

Status InsertToken(Connection& c, const ApiToken& token);
Status RevokeToken(Connection& c, const std::string& id, TimePoint when);
Result<std::optional<ApiToken>> FindTokenByHash(Connection& c, ByteSpan token_hash);
Result<std::vector<ApiToken>> ListTokens(Connection& c);

Status InsertModel(Connection& c, const ModelRecord& model);
Status RetireModel(Connection& c, const std::string& model_id, TimePoint when);
Result<ModelRecord> GetModel(Connection& c, const std::string& model_id);
Result<std::vector<ModelRecord>> ListModels(Connection& c);

Status UpsertGroup(Connection& c, const GroupRecord& group);
Result<GroupRecord> GetGroup(Connection& c, const std::string& name);
Result<std::vector<GroupRecord>> ListGroups(Connection& c);

Status InsertEnrollmentToken(Connection& c, const EnrollmentTokenRecord& token);
Status UseEnrollmentToken(Connection& c, ByteSpan token_hash, const std::string& device_id,
                          TimePoint when);
Result<EnrollmentTokenRecord> GetEnrollmentToken(Connection& c, ByteSpan token_hash);

Status InsertPendingEnrollment(Connection& c, const PendingEnrollment& pending);
Status DeletePendingEnrollment(Connection& c, const std::string& id);
Result<PendingEnrollment> GetPendingEnrollment(Connection& c, const std::string& id);

Status UpsertDevice(Connection& c, const DeviceRecord& device);
Result<DeviceRecord> GetDevice(Connection& c, const std::string& device_id);
Result<std::vector<DeviceRecord>> ListDevices(Connection& c);

Status UpsertLicence(Connection& c, const LicenceRecord& licence);
Result<LicenceRecord> GetLicence(Connection& c, const std::string& licence_id);
Result<std::vector<LicenceRecord>> LicencesForDevice(Connection& c, const std::string& device_id,
                                                     const std::string& group);
Result<std::vector<LicenceRecord>> ListLicences(Connection& c);

Status InsertLease(Connection& c, const LeaseRecord& lease);
Result<std::vector<LeaseRecord>> LeasesForDevice(Connection& c, const std::string& device_id);
Result<std::vector<std::string>> DevicesWithModel(Connection& c, const std::string& model_id);

Status InsertNonce(Connection& c, ByteSpan nonce, const std::string& device_id, TimePoint when);

Status InsertUsageReport(Connection& c, const UsageReport& report);
Result<std::vector<UsageCount>> UsageForDevice(Connection& c, const std::string& device_id);

Status UpsertExtension(Connection& c, const ExtensionRequest& request);
Result<ExtensionRequest> GetExtension(Connection& c, const std::string& request_id);
Result<std::vector<ExtensionRequest>> ListExtensions(Connection& c,
                                                     std::optional<ExtensionStatus> status);
Result<uint64_t> GrantedSince(Connection& c, const std::string& licence_id, TimePoint since);
Result<uint64_t> GrantedToDevice(Connection& c, const std::string& licence_id,
                                 const std::string& device_id);

Result<uint64_t> InsertEvent(Connection& c, const DeviceEvent& event);
Result<std::vector<DeviceEvent>> EventsAfter(Connection& c, const std::string& device_id,
                                             uint64_t after, size_t limit);
Result<uint64_t> LastEventSeq(Connection& c);

// The entry is inserted as given (seq and hashes already chained by the caller).
Status InsertAudit(Connection& c, const protocol::AuditEntry& entry);
Result<std::vector<protocol::AuditEntry>> AuditAfter(Connection& c, uint64_t after, size_t limit);
// The last `count` entries, oldest first.
Result<std::vector<protocol::AuditEntry>> AuditTail(Connection& c, size_t count);

// Deletes nonces consumed before `nonces_used_before` and pending enrollments that expired at or
// before `now`.
Result<PruneCounts> PruneExpired(Connection& c, TimePoint nonces_used_before, TimePoint now);

// SELECT 1: the connection answers.
Status Ping(Connection& c);

}  // namespace custody::custodian::sqlite
