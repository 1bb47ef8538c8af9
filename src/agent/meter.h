// The agent's meter (DESIGN.md §7): the TPM NV counter that anchors the budget, and the journal
// (journal.h) that keeps exact counts per model and client. Everything is in requests: the counter
// advances by one step per block of `unit` requests (PROTOCOL.md §7), so counter C pays for
// C x unit requests, and the journal's values are counter x unit.
//
// Per request: Reserve (under the lease's limit) before the engine runs, then Commit (the answer
// is about to leave: a served record, written) or Release (no answer: nothing recorded). Reserve
// advances the TPM counter and records the block, durably, when the requests already paid for are
// used up: the only TPM operation on the request path, once per `unit` requests. So a crash, a
// kill or a restored disk can only over-count: count in journal + counter >= requests answered.
//
// At start (Open) the journal is reconciled with the counter. A journal behind the counter by at
// most one step is a crash: the rest of what the counter paid for is served. More than that means
// an older journal was restored: the gap is written off (journal.h, "written off"), so the budget
// used is the counter's and nothing comes back, and anomaly() says so until it was reported.
//
// Usage reports: Snapshot (counts since a cursor, with the meter position they add up to) and
// Certify (the counter certified by the AK over the custodian's nonce, and `prepaid`: what the
// certified counter paid for beyond that position). Certify holds the meter, so no block advance
// comes between the certification and the value it reports.
//
// Errors: Reserve: kResourceExhausted when the limit is reached (the message gives the numbers),
// kUnavailable/kPermissionDenied from the TPM, the journal's errors. Open: kFailedPrecondition
// when the journal is ahead of the counter (another TPM, or a cleared one: never serve), kDataLoss
// for a corrupt journal (the message says what to do).
//
// Threading: all methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "agent/device_protocol.h"
#include "agent/journal.h"
#include "agent/shared_tpm.h"
#include "core/base/status.h"

namespace custody::agent {

class Meter {
 public:
  // At enrollment: a new journal at `path`, based at the counter's current value.
  static Status CreateJournal(const std::string& path, SharedTpm& tpm, const DeviceIdentity& id);

  // At start: reads the counter, opens and reconciles the journal (creating a new one, reported as
  // an anomaly, if it is missing) and records the counter's value.
  static Result<std::unique_ptr<Meter>> Open(const std::string& path, SharedTpm& tpm,
                                             const DeviceIdentity& id);

  // One request, to be served while the meter position stays below `limit` (the lease's
  // counter_limit).
  Status Reserve(uint64_t limit);
  // The reserved request was answered (records it; a failure means the answer must not leave).
  Status Commit(std::string_view model_id, std::string_view client);
  // The reserved request was not answered.
  void Release();

  // Requests served or in progress, from the journal's base (requests).
  uint64_t position() const;
  uint64_t counter() const;  // the TPM counter as last advanced or read
  uint64_t unit() const { return unit_; }
  // The journal's random id (hex): usage report cursors belong to one journal.
  std::string journal_id() const;

  // What the journal and the counter said at Open, and the anomaly to report ("" if none). The
  // anomaly stays until MarkAnomalyReported.
  const Reconciliation& reconciliation() const { return reconciliation_; }
  std::string anomaly() const;
  // What Open recovered from by itself (a torn record, a partly used block; "" if nothing): for
  // the log, not for the custodian.
  const std::string& recovery() const { return recovery_; }
  void MarkAnomalyReported();

  // Durable counts since `after_seq` (Journal::SnapshotSince after a Sync).
  Result<JournalSnapshot> Snapshot(uint64_t after_seq);
  struct Certified {
    tpm::Attestation counter_certify;
    uint64_t counter = 0;
    uint64_t prepaid = 0;  // counter x unit - position (0 if the position is above it)
  };
  // The counter certified over `nonce`, and what it paid for beyond `position`.
  Result<Certified> Certify(ByteSpan nonce, uint64_t position);

  // Makes every record durable (at shutdown).
  Status Sync();

 private:
  Meter(SharedTpm& tpm, const DeviceIdentity& id, std::unique_ptr<Journal> journal,
        Reconciliation reconciliation, uint64_t counter, std::string anomaly);
  Status AdvanceLocked();

  SharedTpm& tpm_;
  const DeviceIdentity& id_;
  const uint64_t unit_;
  std::unique_ptr<Journal> journal_;
  const Reconciliation reconciliation_;
  mutable std::mutex mu_;
  uint64_t counter_ = 0;   // TPM counter value (steps)
  uint64_t reserved_ = 0;  // requests reserved and not yet committed or released
  std::string anomaly_;
  std::string recovery_;
};

}  // namespace custody::agent
