#include "agent/lease_book.h"

#include <algorithm>

#include "core/format/sealed.h"

namespace custody::agent {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;
using std::chrono::sys_seconds;

std::string Num(uint64_t v) { return std::to_string(v); }

std::string At(sys_seconds t) { return format::FormatTimestamp(t); }

// The wall-clock time `ago_ms` before `now`, to the second, for messages.
std::string WallAgo(std::chrono::system_clock::time_point now, uint64_t ago_ms) {
  return At(std::chrono::floor<std::chrono::seconds>(now - milliseconds(ago_ms)));
}

std::string Subject(const RevokedScope& r) {
  if (r.scope == "device") return "this device";
  return "the " + r.scope + " " + r.subject;
}

LeaseVerdict Refuse(Refusal r, std::string message) { return {r, std::move(message)}; }

LeaseVerdict RevokedVerdict(const RevokedScope& r) {
  return Refuse(Refusal::kRevoked, "the vendor revoked " + Subject(r) + " at " + r.issued_at +
                                       " (" + r.reason + "); it is no longer served");
}

}  // namespace

std::string_view RefusalName(Refusal r) {
  switch (r) {
    case Refusal::kNone:
      return "none";
    case Refusal::kNoLease:
      return "no_lease";
    case Refusal::kRevoked:
      return "revoked";
    case Refusal::kLicenceEnded:
      return "licence_ended";
    case Refusal::kGraceExpired:
      return "offline_grace_expired";
    case Refusal::kClockBehind:
      return "tpm_clock_behind";
    case Refusal::kBudgetExhausted:
      return "budget_exhausted";
    case Refusal::kPlatformRefused:
      return "platform_not_approved";
    case Refusal::kModelUnavailable:
      return "model_unavailable";
  }
  return "unknown";
}

Status LeaseVerdict::ToStatus() const {
  switch (refusal) {
    case Refusal::kNone:
      return OkStatus();
    case Refusal::kBudgetExhausted:
      return ResourceExhausted(message);
    case Refusal::kNoLease:
    case Refusal::kModelUnavailable:
      return Unavailable(message);
    default:
      return PermissionDenied(message);
  }
}

std::string DescribeMs(uint64_t ms) {
  if (ms < 1000) return Num(ms) + " ms";
  const uint64_t s = ms / 1000;
  if (s < 120) return Num(s) + "." + Num(ms % 1000 / 100) + " s";
  if (s < 7200) return Num(s / 60) + "m " + Num(s % 60) + "s";
  if (s < 3 * 86400) return Num(s / 3600) + "h " + Num(s % 3600 / 60) + "m";
  return Num(s / 86400) + "d " + Num(s % 86400 / 3600) + "h";
}

Result<HeldLease> MakeHeldLease(protocol::LeasePayload lease, nlohmann::json envelope) {
  HeldLease h;
  Result<sys_seconds> not_after = format::ParseTimestamp(lease.not_after);
  if (!not_after) return not_after.error().WithContext("lease " + lease.lease_id + " not_after");
  Result<sys_seconds> issued = format::ParseTimestamp(lease.issued_at);
  if (!issued) return issued.error().WithContext("lease " + lease.lease_id + " issued_at");
  h.not_after = *not_after;
  h.issued_at = *issued;
  h.lease = std::move(lease);
  h.envelope = std::move(envelope);
  return h;
}

LeaseBook::LeaseBook(std::string device_id, LeaseBookState state)
    : device_id_(std::move(device_id)), state_(std::move(state)) {}

const RevokedScope* LeaseBook::device_revocation() const {
  for (const RevokedScope& r : state_.revoked) {
    if (r.scope == "device") return &r;
  }
  return nullptr;
}

const RevokedScope* LeaseBook::RevocationCovering(const protocol::LeasePayload& lease) const {
  for (const RevokedScope& r : state_.revoked) {
    if (r.scope == "device" || (r.scope == "licence" && r.subject == lease.licence_id) ||
        (r.scope == "model" && r.subject == lease.model_id)) {
      return &r;
    }
  }
  return nullptr;
}

Result<LeaseBook::Outcome> LeaseBook::Accept(HeldLease held) {
  const protocol::LeasePayload& l = held.lease;
  if (const RevokedScope* r = RevocationCovering(l)) {
    return PermissionDenied("lease " + l.lease_id + " refused: " + RevokedVerdict(*r).message);
  }
  if (l.revocation_epoch < state_.revocation_epoch) {
    return FailedPrecondition("lease " + l.lease_id + " refused: it was issued before the latest " +
                              "revocation (its epoch " + Num(l.revocation_epoch) +
                              " is below this device's " + Num(state_.revocation_epoch) + ")");
  }
  if (l.sequence <= state_.max_sequence) {
    auto held_it = leases_.find(l.licence_id);
    if (held_it != leases_.end() && held_it->second.lease.lease_id == l.lease_id &&
        held_it->second.lease.sequence == l.sequence) {
      return Outcome::kDuplicate;
    }
    return FailedPrecondition("lease " + l.lease_id + " refused: its sequence " + Num(l.sequence) +
                              " is not above " + Num(state_.max_sequence) +
                              ", the newest this device accepted (a replayed or stale lease)");
  }
  state_.max_sequence = l.sequence;
  state_.held[l.licence_id] = l.sequence;
  const std::string licence = l.licence_id;
  leases_.insert_or_assign(licence, std::move(held));
  return Outcome::kAccepted;
}

Status LeaseBook::Restore(HeldLease held) {
  const protocol::LeasePayload& l = held.lease;
  auto recorded = state_.held.find(l.licence_id);
  if (recorded == state_.held.end()) {
    return FailedPrecondition("stored lease " + l.lease_id + " (sequence " + Num(l.sequence) +
                              ") is for licence " + l.licence_id +
                              ", for which this device holds no lease: not restored");
  }
  if (recorded->second != l.sequence) {
    return FailedPrecondition("stored lease " + l.lease_id + " has sequence " + Num(l.sequence) +
                              " but the lease this device accepted for licence " + l.licence_id +
                              " has sequence " + Num(recorded->second) +
                              ": an old lease file (replay); not restored");
  }
  if (const RevokedScope* r = RevocationCovering(l)) {
    return PermissionDenied("stored lease " + l.lease_id +
                            " not restored: " + RevokedVerdict(*r).message);
  }
  const std::string licence = l.licence_id;
  leases_.insert_or_assign(licence, std::move(held));
  return OkStatus();
}

std::vector<std::string> LeaseBook::Revoke(const protocol::RevocationPayload& r) {
  std::vector<std::string> dropped;
  if (r.revocation_epoch <= state_.revocation_epoch) return dropped;  // already applied
  state_.revocation_epoch = r.revocation_epoch;
  state_.revoked.push_back({r.scope, r.subject, r.reason, r.issued_at, r.revocation_epoch, {}, {}});
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (RevocationCovering(it->second.lease) != nullptr) {
      dropped.push_back(it->first);
      state_.revoked.back().model_ids.push_back(it->second.lease.model_id);
      state_.revoked.back().model_names.push_back(it->second.lease.model_name);
      state_.held.erase(it->first);
      it = leases_.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

const protocol::LeasePayload* LeaseBook::ContactLease() const {
  const protocol::LeasePayload* contact = nullptr;
  for (const auto& [id, h] : leases_) {
    if (contact == nullptr || h.lease.tpm_clock_ms > contact->tpm_clock_ms) contact = &h.lease;
  }
  return contact;
}

OfflineTime LeaseBook::Offline(TpmTime tpm) const {
  const protocol::LeasePayload* contact = ContactLease();
  if (contact == nullptr) return {};
  OfflineTime out;
  out.contact_ms = contact->tpm_clock_ms;
  // Obfuscated counts differ by the real difference, modulo 2^32; a count behind the lease's
  // (which no TPM's goes) counts nothing.
  const auto resets = static_cast<int32_t>(tpm.quoted_reset_count - contact->tpm_reset_count);
  out.resets = resets > 0 ? static_cast<uint32_t>(resets) : 0;
  out.lost_ms = uint64_t{out.resets} * kClockLossPerResetMs;
  out.elapsed_ms =
      (tpm.clock_ms > out.contact_ms ? tpm.clock_ms - out.contact_ms : 0) + out.lost_ms;
  return out;
}

uint64_t LeaseBook::min_offline_grace_ms() const {
  uint64_t grace = 0;
  for (const auto& [id, h] : leases_) {
    if (grace == 0 || h.lease.offline_grace_ms < grace) grace = h.lease.offline_grace_ms;
  }
  return grace;
}

LeaseVerdict LeaseBook::Check(const HeldLease& held, std::chrono::system_clock::time_point now,
                              TpmTime tpm, uint64_t position) const {
  const protocol::LeasePayload& l = held.lease;
  if (const RevokedScope* r = RevocationCovering(l)) return RevokedVerdict(*r);
  if (now >= held.not_after) {
    return Refuse(Refusal::kLicenceEnded,
                  "the licence " + l.licence_id + " ended at " + At(held.not_after));
  }
  const OfflineTime offline = Offline(tpm);
  if (tpm.clock_ms < offline.contact_ms) {
    return Refuse(Refusal::kClockBehind,
                  "the TPM clock (" + Num(tpm.clock_ms) + " ms) is behind the last attestation (" +
                      Num(offline.contact_ms) +
                      " ms): the TPM lost time in a power cut, so the time spent offline is "
                      "unknown; serving resumes once the device reaches the custodian");
  }
  // Power cuts since the contact may have taken time off the clock: counted as the most they can.
  const uint64_t elapsed = offline.elapsed_ms;
  // The licence's end on the TPM clock: a system clock set back does not move it.
  const auto span = held.not_after - held.issued_at;
  const uint64_t span_ms = span.count() > 0 ? static_cast<uint64_t>(span.count()) * 1000 : 0;
  if (elapsed >= span_ms) {
    return Refuse(Refusal::kLicenceEnded,
                  "the licence " + l.licence_id + " ended (" + At(held.not_after) +
                      " by the TPM clock, which the system clock cannot move back)");
  }
  if (elapsed >= l.offline_grace_ms) {
    const uint64_t over = elapsed - l.offline_grace_ms;
    const std::string lost_note =
        offline.resets == 0
            ? std::string()
            : " (" + DescribeMs(offline.lost_ms) + " of it for " + Num(offline.resets) +
                  " TPM reset(s) since then: a power cut can set the TPM clock back, and "
                  "afterwards cannot be told from a clean reboot, so each reset counts as the "
                  "most a cut can take)";
    return Refuse(Refusal::kGraceExpired,
                  "the offline grace of " + DescribeMs(l.offline_grace_ms) + " ran out " +
                      DescribeMs(over) + " ago (about " + WallAgo(now, over) +
                      "): the custodian was last reached " + DescribeMs(elapsed) +
                      " ago by the TPM clock" + lost_note +
                      "; serving resumes once the device reaches it");
  }
  if (position >= l.counter_limit) {
    return Refuse(Refusal::kBudgetExhausted, "the inference budget of licence " + l.licence_id +
                                                 " is used up (meter at " + Num(position) + " of " +
                                                 Num(l.counter_limit) +
                                                 "); the vendor must approve an extension");
  }
  return {};
}

LeaseVerdict LeaseBook::Missing(std::string_view model_id, std::string_view model_name) const {
  for (const RevokedScope& r : state_.revoked) {
    const bool id = !model_id.empty() && ((r.scope == "model" && r.subject == model_id) ||
                                          std::find(r.model_ids.begin(), r.model_ids.end(),
                                                    model_id) != r.model_ids.end());
    const bool name =
        std::find(r.model_names.begin(), r.model_names.end(), model_name) != r.model_names.end();
    if (r.scope == "device" || id || name) {
      return RevokedVerdict(r);
    }
  }
  return Refuse(Refusal::kNoLease,
                "no lease for this model: the device has not obtained one from the custodian "
                "(not attested yet, the custodian unreachable since start, or no licence)");
}

}  // namespace custody::agent
