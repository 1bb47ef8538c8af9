// The device agent's metering journal (DESIGN.md §7; the file format is docs/FORMAT.md §10).
//
// The TPM NV counter is the budget anchor: the agent advances it *before* it serves a block of B
// requests, so a crash or a restored disk can only over-count. The journal is the exact half: an
// append-only file of what was served, per model and client, that usage reports (PROTOCOL.md §14)
// are made from. Two kinds of record:
//   block   the agent advanced the TPM counter to C: requests may be served up to C;
//   served  `count` requests of (model id, client) were served;
//   written off  `count` requests the counter paid for will never be served: the agent writes
//           off what lies between a rolled-back journal and the counter, so that a restored older
//           journal never gives budget back (the counts it lost are gone, the budget is not).
// Counts are in counter units from `counter_base`, the counter's value when the journal was
// created: the journal's position is counter_base + served. The journal enforces the order: a
// served record must fit under the last block (position + count <= last block), so nothing is
// ever recorded as served that the counter had not counted first.
//
// Integrity: every record carries a sequence number and a SHA-256 hash chained to the record
// before it (the first to the header, which holds a random journal id). A record before the last
// that was changed, removed, reordered, duplicated or copied from another journal is kDataLoss,
// naming the file, the offset and what to do, and the file is left as it is. The chain has no
// key: whoever can write the file can rewrite it whole. It detects corruption and partial edits;
// the budget rests on the counter, and a journal that lost records shows as
// journal_behind_counter (and, beyond one block, rollback_suspected) at Open.
//
// Crashes: AppendBlock, Sync and AppendServed(kSynced) return only once the records are written
// and fdatasync'd. AppendServed(kWritten) returns once its record is written: it then survives
// the agent's death (the bytes are in the kernel's page cache), and the next AppendBlock or Sync
// makes it survive a power cut too. That is what the agent does per request, because an
// fdatasync costs about 100 us on an ordinary disk, as much as the whole request path may add:
// a power cut then loses at most the served records of the block in progress, which the counter
// had already counted (journal_behind_counter, never budget). A crash during an append leaves the
// file ending in a prefix of a record or in zero-filled blocks; Open cuts that torn tail, says so
// in the Reconciliation, and never counts it. A last record that is complete
// but fails its checksum is cut the same way (a crash cannot be told apart from a flipped byte
// there). Anything else that does not verify is kDataLoss.
//
// Reconciliation at Open against the TPM counter's current value T:
//   - last block > T: the state directory belongs to another TPM, or the TPM was cleared:
//     kFailedPrecondition, and the agent must not serve;
//   - T > counter_base + served: journal_behind_counter, with the numbers. The agent records
//     each advance before the next one, so a crash leaves at most one advance (at most B)
//     without a block record, plus the unserved rest of the block in progress. More than B of
//     counter beyond the last block record means records that were durable are gone: an older
//     copy of the journal was restored (rollback_suspected).
//   In every case the budget used is max(T, counter_base + served) = T: nothing comes back.
// Open does not write a record for T: after reporting the reconciliation, the agent calls
// AppendBlock(T) if T > last_block to serve the rest of what the counter already paid for.
// Until then a rollback stays visible to every later Open.
//
// The caller records a request as served before its answer leaves the agent: a crash then loses
// an answer, never a count.
//
// Threading: a Journal is thread-safe; destroy it only when no call is in progress. Records are
// written in sequence order under a lock; concurrent syncs are shared (group commit without added
// delay: the first waiting caller syncs everything written so far while the others wait). One
// process at a time: Create and Open take an exclusive flock; a second opener gets kUnavailable.
//
// Memory is bounded whatever the file holds: records are read through a fixed window, a record
// is at most kJournalMaxRecordBytes, and at most kJournalMaxPairs (model, client) pairs are kept.
//
// Errors: kNotFound (no journal), kAlreadyExists (Create over one), kDataLoss (corrupt file),
// kUnimplemented (another format version), kFailedPrecondition (counter behind the journal;
// served beyond the last block), kInvalidArgument (names, counts, block values, options),
// kResourceExhausted (more than kJournalMaxPairs pairs), kUnavailable (journal in use), errno
// codes for the file. After a failed write or sync every later append fails with that error:
// the file may end in a partial record that only Open can cut.
#pragma once

#include <array>
#include <compare>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::agent {

// ----- format (docs/FORMAT.md §10; big-endian) -----------------------------------------------
//
// header (68 bytes):
//   0  8  magic "CUSTODYJ"
//   8  2  version (1)
//  10  2  reserved (0)
//  12  8  counter_base: the TPM counter when the journal was created
//  20 16  journal_id: random
//  36 32  header_hash = SHA-256("custody/journal/v1" ‖ 0x00 ‖ bytes 0..36)
// record (57..251 bytes), one after the other to the end of the file:
//   0  4  length of the whole record
//   4  4  bitwise NOT of length (a torn or zeroed length field never passes for one)
//   8  8  seq: 1 for the first record, then +1
//  16  1  type: 1 block, 2 served, 3 written off
//  17     block:       counter (8)
//         served:      count (8) ‖ model_id length (1) ‖ model_id ‖ client length (1) ‖ client
//         written off: count (8)
//  L-32 32 hash = SHA-256(previous hash ‖ bytes 0..L-32); the first record's previous hash is
//          header_hash
inline constexpr size_t kJournalHeaderBytes = 68;
inline constexpr size_t kJournalHeaderHashedBytes = 36;
inline constexpr uint16_t kJournalVersion = 1;
inline constexpr size_t kJournalIdBytes = 16;
inline constexpr size_t kJournalMaxModelIdBytes = 64;  // as protocol::UsageRequest accepts
inline constexpr size_t kJournalMaxClientBytes = 128;  // as protocol::UsageRequest accepts
inline constexpr size_t kJournalBlockRecordBytes = 57;
inline constexpr size_t kJournalWrittenOffRecordBytes = 57;
inline constexpr size_t kJournalServedRecordFixedBytes = 59;  // without the two names
inline constexpr size_t kJournalMinRecordBytes = kJournalBlockRecordBytes;
inline constexpr size_t kJournalMaxRecordBytes =
    kJournalServedRecordFixedBytes + kJournalMaxModelIdBytes + kJournalMaxClientBytes;  // 251
// Distinct (model, client) pairs one journal may hold.
inline constexpr size_t kJournalMaxPairs = 16384;
// B, the largest counter advance the agent makes at once, unless configured (DESIGN.md §7).
inline constexpr uint64_t kDefaultMeteringBlock = 16;

using JournalId = std::array<uint8_t, kJournalIdBytes>;

enum class JournalRecordType : uint8_t { kBlock = 1, kServed = 2, kWrittenOff = 3 };

struct JournalRecord {
  uint64_t seq = 0;
  JournalRecordType type = JournalRecordType::kBlock;
  uint64_t counter = 0;  // kBlock: the value the TPM counter was advanced to
  std::string model_id;  // kServed: 1..kJournalMaxModelIdBytes of clean UTF-8
  std::string client;    // kServed: 1..kJournalMaxClientBytes of clean UTF-8
  uint64_t count = 0;    // kServed, kWrittenOff: at least 1
};

struct UsageKey {
  std::string model_id;
  std::string client;
  auto operator<=>(const UsageKey&) const = default;
};
using UsageCounts = std::map<UsageKey, uint64_t>;  // no zero entries

// What the verified part of a journal holds.
struct JournalState {
  uint64_t counter_base = 0;
  JournalId journal_id{};
  uint64_t last_seq = 0;         // 0: no record yet
  crypto::Sha256Digest chain{};  // hash of the last record (header_hash if none)
  uint64_t last_block = 0;       // the last block's counter (counter_base if none)
  uint64_t served_total = 0;     // sum of all served counts
  uint64_t written_off = 0;      // sum of all written-off counts
  UsageCounts served;            // the same per (model, client)
  uint64_t bytes = 0;            // header and verified records: where the next record goes

  uint64_t position() const { return counter_base + served_total + written_off; }  // <= last_block
  uint64_t allowance() const { return last_block - position(); }
};

// A journal file, read.
struct JournalScan {
  JournalState state;
  uint64_t torn_tail_bytes = 0;  // bytes after state.bytes that a crash left (0: clean end)
  std::string torn_tail;         // why they are a torn tail ("" if none)
};

using JournalVisitor = std::function<void(const JournalRecord&)>;

// Verifies a whole journal held in memory; `name` (the path) is used in errors. `visit`, if set,
// sees each verified record in order. A torn tail is reported, not an error. Pure: for tools,
// tests and the fuzzer (Journal::Open reads the file through the same code).
Result<JournalScan> ScanJournal(ByteSpan file, std::string_view name,
                                const JournalVisitor& visit = nullptr);

// Encoders, for Journal, tools, tests and the fuzzer. They write what they are given (checks
// are the Journal's); names over 255 bytes or an unknown type abort.
Bytes EncodeJournalHeader(uint64_t counter_base, const JournalId& id);
// Appends `record` chained to `chain` to `out`, and moves `chain` on to its hash.
void EncodeJournalRecord(const JournalRecord& record, crypto::Sha256Digest& chain, Bytes& out);
// header_hash of the header's first kJournalHeaderHashedBytes bytes.
crypto::Sha256Digest JournalHeaderHash(ByteSpan hashed_header_bytes);
// A record's hash: of the previous hash and the record's bytes without its own hash.
crypto::Sha256Digest JournalRecordHash(const crypto::Sha256Digest& previous, ByteSpan record_head);

// ----- the journal --------------------------------------------------------------------------

// How far an append goes before it returns.
enum class Durability {
  kWritten,  // write(2) done: survives the agent being killed, not a power cut
  kSynced,   // fdatasync done: survives a power cut
};

struct JournalOptions {
  // B (at least 1): the largest counter advance the agent makes at once. Reconciliation calls
  // more than this much counter beyond the last block record a rollback.
  uint64_t block_size = kDefaultMeteringBlock;
};

// The journal read against the TPM counter at Open. Counter values are absolute, like T.
struct Reconciliation {
  uint64_t tpm_counter = 0;   // T, as given to Open
  uint64_t counter_base = 0;  // the counter when the journal was created
  uint64_t last_block = 0;    // the last block's counter (counter_base if none)
  uint64_t last_seq = 0;
  uint64_t served_total = 0;  // requests recorded as served since the journal was created
  uint64_t written_off = 0;   // requests written off since the journal was created
  UsageCounts served;         // the same per (model, client)
  // What Open cut off the end (0 and "" if the file ended cleanly).
  uint64_t torn_tail_bytes = 0;
  std::string torn_tail;
  // T - (counter_base + served_total + written_off): counted by the TPM, never recorded.
  uint64_t unaccounted = 0;
  // T - last_block: counter advances without a block record.
  uint64_t unrecorded_advance = 0;
  bool journal_behind_counter = false;  // unaccounted > 0: report it
  bool rollback_suspected = false;      // unrecorded_advance > block_size: report it
  uint64_t budget_used = 0;             // max(T, counter_base + served_total + written_off)
};

// Counts of served requests: of records with after_seq < seq <= through_seq.
struct JournalSnapshot {
  uint64_t after_seq = 0;
  uint64_t through_seq = 0;  // the next report's after_seq
  UsageCounts counts;
  uint64_t total = 0;
  uint64_t written_off = 0;  // requests written off by records in the same range
  uint64_t position = 0;     // counter_base + every served count through through_seq
  uint64_t last_block = 0;   // the last block recorded through through_seq
};

struct OpenedJournal;

class Journal {
 public:
  // A new, empty journal at `path` (mode 0600, written atomically), based at the TPM counter's
  // current value: at enrollment, or once an operator has moved a corrupt journal aside.
  // kAlreadyExists if something is at `path`.
  static Result<std::unique_ptr<Journal>> Create(const std::string& path, uint64_t tpm_counter_now);

  // Reads and verifies the journal, reconciles it with the TPM counter's current value, and cuts
  // a torn tail off the file. kFailedPrecondition if the journal's last block is above the
  // counter (the file is then left alone).
  static Result<OpenedJournal> Open(const std::string& path, uint64_t tpm_counter_now,
                                    const JournalOptions& options = {});

  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Records that the TPM counter was advanced to `counter` (above the last block), and makes it
  // and every record before it durable. Call it after the TPM advance and before serving from
  // the block.
  Status AppendBlock(uint64_t counter);
  // Records `count` served requests. kFailedPrecondition if they do not fit under the last
  // block: advance the counter and AppendBlock first. With Durability::kWritten it returns once
  // the record is in the file (it survives a crash of the process, not a power cut) and the next
  // AppendBlock or Sync makes it durable.
  Status AppendServed(std::string_view model_id, std::string_view client, uint64_t count,
                      Durability durability = Durability::kSynced);
  // Records that `count` requests the counter paid for will never be served (durable on return).
  // kFailedPrecondition if they do not fit under the last block.
  Status AppendWrittenOff(uint64_t count);
  // Makes every record written so far durable.
  Status Sync();

  // Requests that may still be recorded before the next block (including appends in progress).
  uint64_t allowance() const;
  // The last block's counter (including appends in progress).
  uint64_t last_block() const;

  // Durable counts since the journal was created (after_seq 0).
  JournalSnapshot Snapshot() const;
  // Durable counts of records after `after_seq` (a previous snapshot's through_seq). Cheap when
  // after_seq is the through_seq of this object's latest snapshot; otherwise the file is read
  // and verified again up to the last durable record. kInvalidArgument beyond the last record.
  Result<JournalSnapshot> SnapshotSince(uint64_t after_seq) const;

  const std::string& path() const { return path_; }
  const JournalId& id() const { return id_; }

 private:
  struct Checkpoint {
    uint64_t seq;
    UsageCounts counts;
    uint64_t written_off;
  };

  Journal(std::string path, int fd, JournalState state);
  Status Append(JournalRecord record, Durability durability);
  // Syncs until every record up to `seq` is durable; called with `lock` held, drops it during
  // fdatasync.
  Status SyncLocked(std::unique_lock<std::mutex>& lock, uint64_t seq);
  Status WriteAll(ByteSpan bytes) const;

  const std::string path_;
  const int fd_;
  const JournalId id_;
  mutable std::mutex mu_;
  std::condition_variable synced_;
  JournalState tail_;     // with every record written to the file
  JournalState durable_;  // with the records that are written and synced
  bool syncing_ = false;
  Status failed_;                                 // sticky: a write or sync failed
  mutable std::optional<Checkpoint> checkpoint_;  // totals at the latest snapshot
};

struct OpenedJournal {
  std::unique_ptr<Journal> journal;
  Reconciliation reconciliation;
};

}  // namespace custody::agent
