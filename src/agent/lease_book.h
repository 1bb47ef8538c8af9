// The agent's leases and the custodian's revocations (DESIGN.md §6-§7; PROTOCOL.md §12-§13): what
// the device may serve, and why not when it may not. Pure logic: no TPM, no files, no network;
// the agent feeds it documents it has verified (device_protocol.h: OpenLease, OpenRevocation)
// and readings of the clocks, and persists state() and the held envelopes.
//
// Rules:
//  - Sequence: a lease is accepted only if its sequence is higher than every sequence this device
//    accepted before (the custodian numbers each device's leases strictly increasingly), so an
//    old lease, replayed over the network or from a file, never replaces a newer one. The very
//    lease already held is a duplicate, not an error (an event delivered twice).
//  - Revocation: a revocation raises the device's revocation epoch and drops the leases its scope
//    covers (all of them for "device"); scopes are kept for good, so no later lease for a revoked
//    device, licence or model is accepted, and a lease issued before the latest revocation
//    (revocation_epoch below the device's) is refused.
//  - Time: a lease serves while the wall clock is before its not_after AND while the TPM clock is
//    within [contact, contact + offline_grace_ms], where contact is the highest tpm_clock_ms of
//    the leases held: the TPM clock of the device's latest attestation the custodian verified and
//    signed. Setting the system clock back extends nothing (the TPM clock cannot be set back);
//    restoring older files can only give an older contact, hence less grace. A TPM clock below
//    the contact means the TPM lost time in a power cut: refused until the next attestation.
//    A clock that fell back to a value still above the contact shows only as `safe = NO`, and
//    only until the TPM next saves its clock; afterwards a power cut and a clean reboot look the
//    same. So every TPM reset since the contact counts kClockLossPerResetMs of offline time,
//    about the most a TPM clock can fall back. The reset count at the contact is the contact
//    lease's tpm_reset_count, signed by the custodian like its clock: no file on the device holds
//    it. Both are in the AK's obfuscated terms (TpmTime::quoted_reset_count).
//    not_after is also mapped onto the TPM clock (contact + not_after - issued_at) so that a
//    system clock set back cannot extend the licence's end either.
//  - Budget: a lease serves while the meter position (requests, counter x unit) is below its
//    counter_limit.
//
// Threading: not thread-safe; the agent guards it with its lease mutex.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "core/protocol/messages.h"

namespace custody::agent {

// A reading of the TPM clock (TPM2_ReadClock), possibly extrapolated with the monotonic clock.
struct TpmTime {
  uint64_t clock_ms = 0;
  bool safe = true;          // false after a power cut until the TPM saved its clock again
  uint32_t reset_count = 0;  // TPM resets (boots) since the TPM was cleared
  // reset_count as the device's AK quotes it (plus the AK's obfuscation constant, mod 2^32): what
  // leases' tpm_reset_count is compared with.
  uint32_t quoted_reset_count = 0;
};

// How far a TPM clock can fall back in one power cut: the TCG reference implementation saves Clock
// to NV about every 70 minutes (NV_CLOCK_UPDATE_INTERVAL; 2^22 ms here). swtpm saves every 4 s. A
// TPM that saves less often than this can lose more (THREATS.md).
inline constexpr uint64_t kClockLossPerResetMs = uint64_t{1} << 22;

// Offline time since the contact (see Time above).
struct OfflineTime {
  uint64_t contact_ms = 0;  // the contact's TPM clock (0: no lease held)
  uint32_t resets = 0;      // TPM resets since the contact
  uint64_t lost_ms = 0;     // what they may have taken off the clock: resets x kClockLossPerResetMs
  // As the grace counts it: the TPM clock's advance since the contact (0 if behind) + lost_ms.
  uint64_t elapsed_ms = 0;
};

// Why a lease does not serve. Names (RefusalName) are stable: the API sends them to clients in
// the Custody-Refusal header and the status endpoint shows them.
enum class Refusal {
  kNone,
  kNoLease,           // no lease for this model (yet): the agent has not attested
  kRevoked,           // the vendor revoked the device, the licence or the model
  kLicenceEnded,      // not_after passed (wall clock or TPM clock)
  kGraceExpired,      // the custodian was not reached within the offline grace
  kClockBehind,       // the TPM clock is below the last attestation (a power cut)
  kBudgetExhausted,   // the meter reached the lease's limit
  kPlatformRefused,   // the TPM refused to unwrap the model key: the platform state changed
  kModelUnavailable,  // the sealed model cannot be opened or loaded
};
std::string_view RefusalName(Refusal r);

struct LeaseVerdict {
  Refusal refusal = Refusal::kNone;
  std::string message;  // what, since when, and what to do; "" when serving
  bool ok() const { return refusal == Refusal::kNone; }
  // kPermissionDenied (revoked, ended, grace, clock, platform), kResourceExhausted (budget),
  // kUnavailable (no lease, model unavailable).
  Status ToStatus() const;
};

// A lease as verified, with the envelope it came in (persisted as received: its signature is
// checked again at every start).
struct HeldLease {
  protocol::LeasePayload lease;
  nlohmann::json envelope;
  std::chrono::sys_seconds not_after{};
  std::chrono::sys_seconds issued_at{};
};
// Parses the payload's timestamps. kInvalidArgument for malformed ones.
Result<HeldLease> MakeHeldLease(protocol::LeasePayload lease, nlohmann::json envelope);

struct RevokedScope {
  std::string scope;    // "device" | "licence" | "model"
  std::string subject;  // device id, licence id or model id
  std::string reason;
  std::string issued_at;
  uint64_t revocation_epoch = 0;
  std::vector<std::string> model_ids;    // of the leases it dropped (for messages)
  std::vector<std::string> model_names;  // ... and their names
};

// What must survive restarts besides the envelopes (the agent's state file).
struct LeaseBookState {
  uint64_t max_sequence = 0;      // highest lease sequence accepted
  uint64_t revocation_epoch = 0;  // the device's epoch, from the latest revocation
  std::vector<RevokedScope> revoked;
  // licence id -> sequence of the lease held for it: a lease file is restored only if it is that
  // very lease.
  std::map<std::string, uint64_t> held;
};

class LeaseBook {
 public:
  LeaseBook(std::string device_id, LeaseBookState state);

  enum class Outcome { kAccepted, kDuplicate };
  // A verified lease from the custodian. kFailedPrecondition: stale or replayed (sequence),
  // issued before a revocation (epoch); kPermissionDenied: its device, licence or model is
  // revoked.
  Result<Outcome> Accept(HeldLease lease);
  // A lease from the agent's own files at start: accepted only if state().held records exactly
  // its licence and sequence (kFailedPrecondition naming both sequences otherwise).
  Status Restore(HeldLease lease);
  // A verified revocation. Returns the licence ids whose leases it dropped; an already applied
  // one (epoch not above the device's) changes nothing.
  std::vector<std::string> Revoke(const protocol::RevocationPayload& r);

  // Whether `lease` may serve now, at meter position `position`.
  LeaseVerdict Check(const HeldLease& lease, std::chrono::system_clock::time_point now, TpmTime tpm,
                     uint64_t position) const;
  // Why the model `model_name` (id `model_id`, "" if unknown) has no lease held: its revocation
  // if it had one.
  LeaseVerdict Missing(std::string_view model_id, std::string_view model_name) const;

  // Offline time at `tpm`, from the contact: the lease with the highest tpm_clock_ms (the latest
  // verified attestation), its clock and reset count. All zero without leases.
  OfflineTime Offline(TpmTime tpm) const;
  // The smallest offline grace of the leases held (0: none).
  uint64_t min_offline_grace_ms() const;
  const std::map<std::string, HeldLease>& leases() const { return leases_; }  // by licence id
  const LeaseBookState& state() const { return state_; }
  const RevokedScope* device_revocation() const;

 private:
  const RevokedScope* RevocationCovering(const protocol::LeasePayload& lease) const;
  // The lease with the highest tpm_clock_ms: the latest attestation (nullptr: none held).
  const protocol::LeasePayload* ContactLease() const;

  std::string device_id_;
  LeaseBookState state_;
  std::map<std::string, HeldLease> leases_;
};

// "3h 12m", "41 s", "850 ms": a duration for messages.
std::string DescribeMs(uint64_t ms);

}  // namespace custody::agent
