// The custodian's store on SQLite (DESIGN.md §11: embedded, WAL, versioned migrations, every
// state change in one transaction with its audit entry). The contract is store.h; this file adds
// only what is particular to SQLite.
//
// Layout: one database file (created 0600; it holds sealed model keys and token hashes) with its
// -wal and -shm files beside it. One writer connection, owned by a writer thread, and a small
// pool of read-only connections: in WAL mode reads never wait for the writer.
//
// Group commit: Transact queues its callback for the writer thread, which runs a batch of queued
// callbacks (at most kMaxBatchCallbacks, or kMaxBatchTime of work; SqliteTuning) inside ONE SQLite
// transaction, each inside its own SAVEPOINT. A callback that fails is rolled back to its savepoint
// and gets its own error; the others still commit. The writer commits once per batch and only then
// wakes every caller of the batch. So each callback is still one atomic state change with its audit
// entries, while many callers share one fsync (Durability::kPowerLoss: synchronous=FULL, the WAL
// is fsync'd at every commit; kProcessCrash: synchronous=NORMAL, fsync only at checkpoints).
// Calling Transact from inside a Transact callback of the same store would make the writer wait
// for itself: it aborts the process (a bug, not an input).
//
// Audit chain (protocol/audit.h): the writer keeps the last committed entry in memory (loaded at
// open) and chains each Transaction::Audit entry to the one before it in the batch; the entry it
// keeps moves on only when the batch commits, so the entries of a rolled-back callback never
// existed and the chain has no holes. The audit table has triggers that make UPDATE and DELETE
// fail (a bug cannot rewrite history; someone with the file still can, and the chain shows it).
// Transaction::Audit refuses (kInvalidArgument) an entry the export could not carry: details
// that are not a JSON object (null is stored as {}), text fields with control characters or
// invalid UTF-8, an actor or subject over 256 bytes, an action over 128, details over 256 KiB.
// At open the last kAuditEntriesVerifiedAtOpen entries (all, if fewer) are verified; a broken
// chain refuses the open with kDataLoss naming the entry.
//
// Threading: as Store (any thread). At most kSqliteReaderConnections reads run at once; more wait
// for a free connection. Destroying the store lets the queued Transacts finish first.
//
// Open errors: kUnimplemented for a database whose schema is newer than this build, kDataLoss for
// a corrupt file or a broken audit chain, kFailedPrecondition for an SQLite file of something
// else, errno-based codes for the file itself.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/base/status.h"
#include "custodian/store/store.h"

namespace custody::custodian {

inline constexpr size_t kMaxBatchCallbacks = 256;
inline constexpr std::chrono::milliseconds kMaxBatchTime{5};
inline constexpr std::chrono::milliseconds kSqliteBusyTimeout{5000};
inline constexpr size_t kAuditEntriesVerifiedAtOpen = 1000;
inline constexpr size_t kSqliteReaderConnections = 4;

// Tuning of the writer and the connections; the defaults are what the custodian runs with.
struct SqliteTuning {
  size_t max_batch_callbacks = kMaxBatchCallbacks;           // at least 1
  std::chrono::milliseconds max_batch_time = kMaxBatchTime;  // wall clock, from the batch start
  // How long a statement waits for a lock held by another process before kUnavailable.
  std::chrono::milliseconds busy_timeout = kSqliteBusyTimeout;
};

// What SqliteStore::Prune removed.
struct PruneCounts {
  uint64_t nonces = 0;
  uint64_t pending_enrollments = 0;
};

// Counters of the writer thread (monotonic since open, except `queued`).
struct WriterStats {
  uint64_t batches = 0;        // SQLite transactions committed (one WAL fsync each, kPowerLoss)
  uint64_t callbacks = 0;      // Transact callbacks run, committed or rolled back
  uint64_t largest_batch = 0;  // most callbacks in one batch
  uint64_t queued = 0;         // callbacks waiting for the writer right now
};

class SqliteStore : public Store {
 public:
  // Opens (creating if needed) the database at `path` and migrates it to this build's schema.
  static Result<std::unique_ptr<SqliteStore>> Open(const std::string& path,
                                                   StoreOptions options = {},
                                                   SqliteTuning tuning = {});

  // Housekeeping (runs as one transaction, without an audit entry: nothing of meaning changes):
  // deletes the records of nonces consumed more than `nonce_lifetime` before `now` (by then a
  // replayed nonce is refused for its age) and pending enrollments that expired at or before
  // `now`.
  virtual Result<PruneCounts> Prune(TimePoint now, std::chrono::seconds nonce_lifetime) = 0;

  virtual WriterStats writer_stats() const = 0;
};

// The same as SqliteStore::Open, as the interface.
Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, StoreOptions options);

}  // namespace custody::custodian
