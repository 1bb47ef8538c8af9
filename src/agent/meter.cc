#include "agent/meter.h"

#include "core/tpm/objects.h"
#include "core/tpm/verifier.h"

namespace custody::agent {
namespace {

std::string Num(uint64_t v) { return std::to_string(v); }

Result<uint64_t> Requests(uint64_t counter, uint64_t unit) {
  uint64_t out = 0;
  if (__builtin_mul_overflow(counter, unit, &out)) {
    return OutOfRange("TPM counter " + Num(counter) + " times the unit " + Num(unit) +
                      " does not fit in 64 bits");
  }
  return out;
}

Result<uint64_t> ReadCounter(SharedTpm& tpm, const DeviceIdentity& id) {
  Result<uint64_t> value = tpm.Run(TpmOp::kCounterRead, [&](tpm::Tpm& t) {
    return t.ReadCounter(id.counter_index, id.counter_auth);
  });
  if (!value && value.error().code() == StatusCode::kNotFound) {
    return FailedPrecondition(
        "this TPM has no usage counter at the index this state directory names: the state "
        "directory belongs to another TPM, or the TPM was cleared. Refusing to serve: restore this "
        "device's own state directory, or enroll the device again");
  }
  if (!value) return value.error().WithContext("read the TPM usage counter");
  return value;
}

// What a crash leaves behind, and the agent recovers from by itself: a torn last record, a block
// paid for but not used up, an advance whose block record was not written. Logged, not reported:
// the counter bounds all of it, and a clean stop in the middle of a block looks the same.
std::string DescribeRecovery(const Reconciliation& r) {
  std::string out;
  if (r.torn_tail_bytes > 0) {
    out += "the journal ended in a torn record (" + Num(r.torn_tail_bytes) +
           " bytes cut: " + r.torn_tail + ")";
  }
  if (r.journal_behind_counter && !r.rollback_suspected) {
    out += std::string(out.empty() ? "" : "; ") + Num(r.unaccounted) +
           " requests of the last block the TPM counter paid for are still to be served";
  }
  return out;
}

// A journal further behind the counter than a crash can leave it: reported to the custodian.
std::string DescribeRollback(const Reconciliation& r, uint64_t written_off) {
  if (!r.rollback_suspected) return "";
  return "the journal was " + Num(r.unaccounted) + " requests behind the TPM counter (" +
         Num(r.unrecorded_advance) +
         " of them advances it never recorded): an older copy of the state directory was "
         "restored, or records were removed. " +
         Num(written_off) + " requests were written off: the budget used is the counter's";
}

}  // namespace

Meter::Meter(SharedTpm& tpm, const DeviceIdentity& id, std::unique_ptr<Journal> journal,
             Reconciliation reconciliation, uint64_t counter, std::string anomaly)
    : tpm_(tpm),
      id_(id),
      unit_(id.counter_unit),
      journal_(std::move(journal)),
      reconciliation_(std::move(reconciliation)),
      counter_(counter),
      anomaly_(std::move(anomaly)) {}

Status Meter::CreateJournal(const std::string& path, SharedTpm& tpm, const DeviceIdentity& id) {
  CUSTODY_ASSIGN_OR_RETURN(uint64_t counter, ReadCounter(tpm, id));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t base, Requests(counter, id.counter_unit));
  return Journal::Create(path, base).status();
}

Result<std::unique_ptr<Meter>> Meter::Open(const std::string& path, SharedTpm& tpm,
                                           const DeviceIdentity& id) {
  if (id.counter_unit == 0) return InvalidArgument("the device's counter unit is 0");
  CUSTODY_ASSIGN_OR_RETURN(uint64_t counter, ReadCounter(tpm, id));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t paid, Requests(counter, id.counter_unit));
  std::string anomaly;
  Result<OpenedJournal> opened = Journal::Open(path, paid, JournalOptions{id.counter_unit});
  if (!opened && opened.error().code() == StatusCode::kNotFound) {
    // Lost with its counts since the last report; the budget is the counter's either way.
    CUSTODY_RETURN_IF_ERROR(Journal::Create(path, paid).status());
    opened = Journal::Open(path, paid, JournalOptions{id.counter_unit});
    anomaly = "the metering journal was missing; a new one was started at TPM counter " +
              Num(counter) + " (counts since the last usage report are lost, budget is not)";
  }
  if (!opened) return opened.error();
  Journal& journal = *opened->journal;
  const Reconciliation& r = opened->reconciliation;
  if (paid > journal.last_block()) CUSTODY_RETURN_IF_ERROR(journal.AppendBlock(paid));
  uint64_t written_off = 0;
  if (r.rollback_suspected) {
    written_off = journal.allowance();
    if (written_off > 0) CUSTODY_RETURN_IF_ERROR(journal.AppendWrittenOff(written_off));
  }
  const std::string rollback = DescribeRollback(r, written_off);
  if (!rollback.empty()) anomaly += (anomaly.empty() ? "" : "; ") + rollback;
  auto meter = std::unique_ptr<Meter>(
      new Meter(tpm, id, std::move(opened->journal), r, counter, std::move(anomaly)));
  meter->recovery_ = DescribeRecovery(r);
  return meter;
}

Status Meter::AdvanceLocked() {
  const uint64_t expected = counter_ + 1;
  CUSTODY_ASSIGN_OR_RETURN(uint64_t value, tpm_.Run(TpmOp::kCounterAdvance, [&](tpm::Tpm& t) {
    return t.IncrementCounter(id_.counter_index, id_.counter_auth);
  }));
  if (value < expected) {
    return Internal("the TPM counter went from " + Num(counter_) + " to " + Num(value) +
                    " on an increment");
  }
  // Above `expected` only if something else advanced it (with this device's counter auth): the
  // block then covers that too, which over-counts; it never under-counts.
  CUSTODY_ASSIGN_OR_RETURN(uint64_t paid, Requests(value, unit_));
  counter_ = value;
  return journal_->AppendBlock(paid);
}

Status Meter::Reserve(uint64_t limit) {
  std::lock_guard lock(mu_);
  const uint64_t allowance = journal_->allowance();
  const uint64_t position = journal_->last_block() - allowance + reserved_;
  if (position >= limit) {
    return ResourceExhausted("the inference budget is used up: the meter is at " + Num(position) +
                             " and the lease allows up to " + Num(limit));
  }
  if (reserved_ >= allowance) CUSTODY_RETURN_IF_ERROR(AdvanceLocked());
  ++reserved_;
  return OkStatus();
}

Status Meter::Commit(std::string_view model_id, std::string_view client) {
  std::lock_guard lock(mu_);
  if (reserved_ == 0) Panic("Meter::Commit without a reservation");
  --reserved_;
  return journal_->AppendServed(model_id, client, 1, Durability::kWritten);
}

void Meter::Release() {
  std::lock_guard lock(mu_);
  if (reserved_ == 0) Panic("Meter::Release without a reservation");
  --reserved_;
}

uint64_t Meter::position() const {
  std::lock_guard lock(mu_);
  return journal_->last_block() - journal_->allowance() + reserved_;
}

uint64_t Meter::counter() const {
  std::lock_guard lock(mu_);
  return counter_;
}

std::string Meter::journal_id() const { return HexEncode(journal_->id()); }

std::string Meter::anomaly() const {
  std::lock_guard lock(mu_);
  return anomaly_;
}

void Meter::MarkAnomalyReported() {
  std::lock_guard lock(mu_);
  anomaly_.clear();
}

Result<JournalSnapshot> Meter::Snapshot(uint64_t after_seq) {
  CUSTODY_RETURN_IF_ERROR(journal_->Sync());
  return journal_->SnapshotSince(after_seq);
}

Result<Meter::Certified> Meter::Certify(ByteSpan nonce, uint64_t position) {
  std::lock_guard lock(mu_);
  Certified out;
  CUSTODY_ASSIGN_OR_RETURN(out.counter_certify, tpm_.Run(TpmOp::kCounterCertify, [&](tpm::Tpm& t) {
    return t.CertifyCounter(id_.ak, id_.counter_index, id_.counter_auth, nonce);
  }));
  // The value as certified, read back with the verifier the custodian runs: it is what the
  // custodian will compute the position from, so `prepaid` must be relative to it.
  CUSTODY_ASSIGN_OR_RETURN(Bytes name, tpm::NvName(tpm::NvCounterPublic(id_.counter_index, true)));
  const tpm::NvCertifyExpectation expect{id_.ak.public_area, Bytes(nonce.begin(), nonce.end()),
                                         std::move(name), std::nullopt};
  CUSTODY_ASSIGN_OR_RETURN(out.counter, tpm::VerifyNvCertify(out.counter_certify, expect));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t paid, Requests(out.counter, unit_));
  out.prepaid = paid > position ? paid - position : 0;
  return out;
}

Status Meter::Sync() { return journal_->Sync(); }

}  // namespace custody::agent
