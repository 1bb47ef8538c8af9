#include "custodian/store/sqlite_schema.h"

#include <chrono>
#include <functional>
#include <string>

namespace custody::custodian::sqlite {
namespace {

// Version 1. How records map to rows:
//  - one table per record type, one column per scalar field, named after it ("group" is
//    group_name: GROUP is an SQL keyword); optional fields are NULL when absent; an empty
//    device_id / group of a licence is NULL so that the foreign keys apply to the one that is set;
//  - maps and lists that are only ever read back whole with their record are JSON text columns:
//      device_groups.pcr_selection  [0, 2, 4, 7]
//      device_groups.golden         [{"name": "...", "pcrs": {"0": "<64 hex>", ...}}, ...]
//      device_groups.approvals      ["<signed approval JSON text, kept byte for byte>", ...]
//      devices.tofu_pcrs            {"<PCR index>": "<64 hex>", ...}
//  - lists the store queries across records are child tables: usage_counts (one row per count of
//    a usage report, summed by UsageForDevice);
//  - a fixed struct inside a record is columns with a prefix: licences.ext_* (ExtensionPolicy);
//  - enums are TEXT names with a CHECK ('viewer', 'operator', 'admin'; 'pending', ...).
// Unique constraints are the contract's kAlreadyExists cases (store.h). Upserts use
// INSERT ... ON CONFLICT (key) DO UPDATE (never REPLACE, which deletes the old row first).
// events.seq is AUTOINCREMENT so a seq is never reused (PostgreSQL: BIGINT GENERATED ALWAYS AS
// IDENTITY). The audit log's seq is assigned by the hash chain (protocol/audit.h); its triggers
// make UPDATE and DELETE fail (PostgreSQL: a BEFORE UPDATE OR DELETE trigger that raises).
constexpr char kSchemaV1[] = R"sql(
CREATE TABLE api_tokens (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
  token_hash  BLOB NOT NULL UNIQUE,  -- SHA-256 of the secret token
  created     INTEGER NOT NULL,
  revoked     INTEGER
);

CREATE TABLE models (
  model_id       TEXT PRIMARY KEY,
  name           TEXT NOT NULL,
  version        TEXT NOT NULL,
  dek_sealed     BLOB NOT NULL,  -- encrypted under the custodian master key
  sealed_sha256  TEXT NOT NULL,
  created        INTEGER NOT NULL,
  retired        INTEGER
);

CREATE TABLE device_groups (
  name                    TEXT PRIMARY KEY,
  pcr_selection           TEXT NOT NULL,  -- JSON, see above
  allow_tofu              INTEGER NOT NULL,
  require_ek_certificate  INTEGER NOT NULL,
  golden                  TEXT NOT NULL,  -- JSON
  approvals               TEXT NOT NULL,  -- JSON
  created                 INTEGER NOT NULL
);

CREATE TABLE enrollment_tokens (
  token_hash      BLOB PRIMARY KEY,  -- SHA-256 of the secret token
  group_name      TEXT NOT NULL REFERENCES device_groups (name),
  created         INTEGER NOT NULL,
  expires         INTEGER NOT NULL,
  used            INTEGER,
  used_by_device  TEXT NOT NULL,
  created_by      TEXT NOT NULL
);

CREATE TABLE pending_enrollments (
  id                      TEXT PRIMARY KEY,
  token_hash              BLOB NOT NULL REFERENCES enrollment_tokens (token_hash),
  group_name              TEXT NOT NULL REFERENCES device_groups (name),
  ek_public               BLOB NOT NULL,
  ek_certificate          BLOB,
  ek_type                 INTEGER NOT NULL,
  ak_public               BLOB NOT NULL,
  credential_secret_hash  BLOB NOT NULL,
  certify_nonce           BLOB NOT NULL,
  expires                 INTEGER NOT NULL
);
CREATE INDEX pending_enrollments_expires ON pending_enrollments (expires);

CREATE TABLE devices (
  device_id         TEXT PRIMARY KEY,
  group_name        TEXT NOT NULL REFERENCES device_groups (name),
  ek_public         BLOB NOT NULL,
  ek_name           BLOB NOT NULL,
  ak_public         BLOB NOT NULL,
  binding_public    BLOB NOT NULL,
  counter_index     INTEGER NOT NULL,
  counter_name      BLOB NOT NULL,
  tls_serial        TEXT NOT NULL,
  tls_public_key    BLOB NOT NULL,
  enrolled          INTEGER NOT NULL,
  revoked           INTEGER,
  revoked_reason    TEXT NOT NULL,
  last_counter      INTEGER,
  last_seen         INTEGER,
  lease_sequence    INTEGER NOT NULL,
  revocation_epoch  INTEGER NOT NULL,
  tofu_pcrs         TEXT NOT NULL  -- JSON, see above
);
CREATE INDEX devices_group ON devices (group_name);

CREATE TABLE licences (
  licence_id              TEXT PRIMARY KEY,
  model_id                TEXT NOT NULL REFERENCES models (model_id),
  device_id               TEXT REFERENCES devices (device_id),
  group_name              TEXT REFERENCES device_groups (name),
  budget                  INTEGER NOT NULL,
  used                    INTEGER NOT NULL,
  not_after               INTEGER NOT NULL,
  offline_grace_ms        INTEGER NOT NULL,
  ext_manual              INTEGER NOT NULL,
  ext_auto_approve_up_to  INTEGER NOT NULL,
  ext_period_seconds      INTEGER NOT NULL,
  created                 INTEGER NOT NULL,
  revoked                 INTEGER,
  revoked_reason          TEXT NOT NULL,
  CHECK ((device_id IS NULL) <> (group_name IS NULL))
);
CREATE INDEX licences_device ON licences (device_id);
CREATE INDEX licences_group ON licences (group_name);
CREATE INDEX licences_model ON licences (model_id);

CREATE TABLE leases (
  lease_id          TEXT PRIMARY KEY,
  device_id         TEXT NOT NULL REFERENCES devices (device_id),
  licence_id        TEXT NOT NULL REFERENCES licences (licence_id),
  model_id          TEXT NOT NULL REFERENCES models (model_id),
  sequence          INTEGER NOT NULL,
  counter_limit     INTEGER NOT NULL,
  not_after         INTEGER NOT NULL,
  offline_grace_ms  INTEGER NOT NULL,
  revocation_epoch  INTEGER NOT NULL,
  issued            INTEGER NOT NULL,
  envelope_json     TEXT NOT NULL,
  UNIQUE (device_id, sequence)
);
CREATE INDEX leases_model ON leases (model_id, device_id);

CREATE TABLE nonces (
  nonce      BLOB PRIMARY KEY,
  device_id  TEXT NOT NULL,
  used       INTEGER NOT NULL
);
CREATE INDEX nonces_used ON nonces (used);

CREATE TABLE usage_reports (
  device_id      TEXT NOT NULL REFERENCES devices (device_id),
  report_id      TEXT NOT NULL,
  counter_value  INTEGER NOT NULL,
  received       INTEGER NOT NULL,
  is_rollback    INTEGER NOT NULL,
  PRIMARY KEY (device_id, report_id)
);

CREATE TABLE usage_counts (
  device_id  TEXT NOT NULL,
  report_id  TEXT NOT NULL,
  position   INTEGER NOT NULL,  -- index in UsageReport::counts
  model_id   TEXT NOT NULL,
  client     TEXT NOT NULL,
  count      INTEGER NOT NULL,
  PRIMARY KEY (device_id, report_id, position),
  FOREIGN KEY (device_id, report_id) REFERENCES usage_reports (device_id, report_id)
);

CREATE TABLE extensions (
  request_id  TEXT PRIMARY KEY,
  device_id   TEXT NOT NULL REFERENCES devices (device_id),
  licence_id  TEXT NOT NULL REFERENCES licences (licence_id),
  requested   INTEGER NOT NULL,
  reason      TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
  granted     INTEGER NOT NULL,
  decided_by  TEXT NOT NULL,
  decided     INTEGER,
  created     INTEGER NOT NULL
);
CREATE INDEX extensions_status ON extensions (status, created);
CREATE INDEX extensions_licence ON extensions (licence_id, decided);

CREATE TABLE events (
  seq           INTEGER PRIMARY KEY AUTOINCREMENT,
  device_id     TEXT NOT NULL REFERENCES devices (device_id),
  type          TEXT NOT NULL,
  payload_json  TEXT NOT NULL,
  created       INTEGER NOT NULL
);
CREATE INDEX events_device ON events (device_id, seq);

CREATE TABLE audit_log (
  seq        INTEGER PRIMARY KEY,
  time       TEXT NOT NULL,
  actor      TEXT NOT NULL,
  action     TEXT NOT NULL,
  subject    TEXT NOT NULL,
  details    TEXT NOT NULL,  -- the exact JSON text that was hashed
  prev_hash  BLOB NOT NULL,
  hash       BLOB NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
  SELECT RAISE(ABORT, 'the audit log is append-only: its rows cannot be updated');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
  SELECT RAISE(ABORT, 'the audit log is append-only: its rows cannot be deleted');
END;
)sql";

// Version 2: a device's extension requests by licence, for Store::GrantedToDevice, which every
// lease issuance asks (before, the service read every approved request of every device).
constexpr char kSchemaV2[] = R"sql(
CREATE INDEX extensions_device ON extensions (device_id, licence_id);
)sql";

// Version 3: metering in request units (PROTOCOL.md §7, §14) and the TPM clock of the latest
// verified quote (§12). A device enrolled before counted one request per counter step, so it
// gets unit 1 and its meter position is its last certified counter.
constexpr char kSchemaV3[] = R"sql(
ALTER TABLE devices ADD COLUMN counter_unit INTEGER NOT NULL DEFAULT 1;
ALTER TABLE devices ADD COLUMN meter_position INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN attested_tpm_clock_ms INTEGER;
UPDATE devices SET meter_position = COALESCE(last_counter, 0);
)sql";

// Version 4: the reset count of the latest verified quote, which leases carry so that the device
// counts the TPM resets since then from a signed value (PROTOCOL.md §8, §12). The clock recorded
// before is dropped with it: both must come from one quote, and a device without them gets no
// offline time from a lease until it attests again (which it does at its next contact).
constexpr char kSchemaV4[] = R"sql(
ALTER TABLE devices ADD COLUMN attested_tpm_reset_count INTEGER;
UPDATE devices SET attested_tpm_clock_ms = NULL;
)sql";

constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
    {2, kSchemaV2},
    {3, kSchemaV3},
    {4, kSchemaV4},
};

// Runs `fn` inside BEGIN IMMEDIATE ... COMMIT; rolls back if it fails.
Status InTransaction(Connection& c, const std::function<Status()>& fn) {
  CUSTODY_RETURN_IF_ERROR(c.Exec("BEGIN IMMEDIATE"));
  Status s = fn();
  if (s.ok()) s = c.Exec("COMMIT");
  if (!s.ok() && c.in_transaction()) c.Exec("ROLLBACK").IgnoreError();
  return s;
}

Result<int64_t> QueryInt(Connection& c, std::string_view sql) {
  CUSTODY_ASSIGN_OR_RETURN(Statement s, c.Prepare(sql));
  CUSTODY_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return Internal("no result from: " + std::string(sql));
  return s.Int(0);
}

Result<int> CurrentVersion(Connection& c) {
  CUSTODY_ASSIGN_OR_RETURN(int64_t v,
                           QueryInt(c, "SELECT COALESCE(MAX(version), 0) FROM schema_version"));
  return static_cast<int>(v);
}

// Creates schema_version in a database that has none, unless the file holds something else.
Status Bootstrap(Connection& c) {
  return InTransaction(c, [&]() -> Status {
    CUSTODY_ASSIGN_OR_RETURN(int64_t has_version,
                             QueryInt(c,
                                      "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                                      "AND name = 'schema_version'"));
    if (has_version != 0) return OkStatus();
    CUSTODY_ASSIGN_OR_RETURN(int64_t others,
                             QueryInt(c,
                                      "SELECT COUNT(*) FROM sqlite_master WHERE type IN "
                                      "('table', 'view') AND name NOT LIKE 'sqlite\\_%' "
                                      "ESCAPE '\\'"));
    if (others != 0) {
      return FailedPrecondition("database " + c.path() +
                                " holds tables but no schema_version: it is not a custodian "
                                "database");
    }
    return c.Exec(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)");
  });
}

}  // namespace

std::span<const Migration> Migrations() { return kMigrations; }

Result<int> Migrate(Connection& c, std::span<const Migration> migrations) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version != static_cast<int>(i) + 1) {
      Panic("store migrations must be numbered 1, 2, 3... without gaps");
    }
  }
  const int latest = static_cast<int>(migrations.size());
  CUSTODY_RETURN_IF_ERROR(Bootstrap(c));
  CUSTODY_ASSIGN_OR_RETURN(int version, CurrentVersion(c));
  if (version > latest) {
    return Unimplemented("database schema version " + std::to_string(version) +
                         " is newer than this custodian (" + std::to_string(latest) +
                         "); upgrade the custodian");
  }
  for (const Migration& m : migrations) {
    if (m.version <= version) continue;
    Status s = InTransaction(c, [&]() -> Status {
      // Another process may have migrated since we looked.
      CUSTODY_ASSIGN_OR_RETURN(int now_version, CurrentVersion(c));
      if (now_version >= m.version) return OkStatus();
      CUSTODY_RETURN_IF_ERROR(c.Exec(m.sql));
      const auto applied = std::chrono::floor<std::chrono::seconds>(
          std::chrono::system_clock::now().time_since_epoch());
      return RunStatement(c, "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
                          m.version, static_cast<int64_t>(applied.count()));
    });
    if (!s.ok()) {
      return s.WithContext("database " + c.path() + ": migration to schema version " +
                           std::to_string(m.version));
    }
    version = m.version;
  }
  return version;
}

}  // namespace custody::custodian::sqlite
