// The agent's lease lifecycle (DESIGN.md §6-§9): leases verified and held, models loaded under
// them, revocations applied, and the decision, per request, whether a model may be served.
//
//   custodian link ──ApplyLeases/ApplyRevocation──▶ LeaseManager ◀──Admit── inference API
//                                                      │
//                         TPM (unwrap the model key) ──┤── state dir (leases.json, state.json)
//
// Leases: each envelope is verified against the pinned lease key (OpenLease), then sequence and
// epoch (LeaseBook), then stored, and its model loaded: the model key unwrapped by the TPM under
// one of the lease's approved PCR states, the sealed file opened into protected memory and
// handed to its engine. Loading runs outside the manager's lock, so requests keep being served.
// A lease the TPM refuses to unwrap (the platform is not in an approved state) is held, and its
// model refused with the reason.
//
// Revocations take effect at once: the leases they cover are dropped and their models unloaded
// (wiped when the last request in progress finishes); later requests get a clear refusal.
//
// Time: the TPM clock is read by the link about once a second (UpdateTpmClock) and extrapolated
// between readings with the monotonic clock, so the request path never touches the TPM; neither
// reading moves when the system clock is set.
//
// Threading: thread-safe.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/device_protocol.h"
#include "agent/lease_book.h"
#include "agent/models.h"
#include "agent/shared_tpm.h"
#include "agent/state.h"
#include "core/base/status.h"

namespace custody::agent {

using WallClock = std::function<std::chrono::system_clock::time_point()>;

// What a request may use: the model and the lease it is served under.
struct Admission {
  std::shared_ptr<const LoadedModel> model;
  std::string licence_id;
  std::string model_id;
  uint64_t counter_limit = 0;
};

// A lease whose remaining budget is low (for extension requests).
struct LowBudget {
  std::string licence_id;
  uint64_t counter_limit = 0;
  uint64_t remaining = 0;
};

class LeaseManager {
 public:
  // `identity`, `tpm`, `catalog`, `state` and `dir` must outlive the manager.
  // `quoted_reset_offset`: what the device's AK adds to the TPM's reset count in its quotes
  // (QuotedResetOffset); leases' tpm_reset_count is in those terms.
  LeaseManager(const DeviceIdentity& identity, SharedTpm& tpm, ModelCatalog& catalog,
               const StateDir& dir, PersistentState& state, engine::LoadOptions load_options,
               WallClock wall_clock, uint32_t quoted_reset_offset);

  // At start: the leases stored in the state directory, each verified again and accepted only if
  // it is the very lease recorded (an older lease file is refused); their models are loaded.
  // Returns one line per lease not restored, for the log.
  std::vector<std::string> Restore();

  // Leases from the custodian (an attestation's answer, or events), verified and applied in
  // sequence order; models are loaded. Returns one line per lease refused, for the log.
  std::vector<std::string> ApplyLeases(const std::vector<nlohmann::json>& envelopes);
  // A revocation from the custodian, verified and applied at once. Returns a description of what
  // it dropped ("" if it was applied before).
  Result<std::string> ApplyRevocation(const nlohmann::json& envelope);
  // Tries again to load the models of leases whose load failed (a sealed file copied in since).
  void RetryFailedLoads();

  // A TPM clock reading (TPM2_ReadClock).
  void UpdateTpmClock(const tpm::TimeInfo& time);

  // Whether a request for model `name` (and `version`, "" for any) may be served at meter
  // position `position`; a refusal says why (LeaseVerdict::ToStatus gives the code).
  Result<Admission> Admit(std::string_view name, std::string_view version, uint64_t position,
                          LeaseVerdict* refusal) const;
  // The model for metadata requests (no budget or time check).
  std::shared_ptr<const LoadedModel> Find(std::string_view name, std::string_view version) const;

  // TPM-clock milliseconds since the latest verified attestation (nullopt: no lease held).
  std::optional<uint64_t> MsSinceContact() const;
  uint64_t MinOfflineGraceMs() const;
  bool device_revoked() const;
  std::vector<LowBudget> BudgetsBelow(uint64_t threshold, uint64_t position) const;

  // For the status endpoint: leases, budgets, times, models and their memory protection.
  nlohmann::json Describe(uint64_t position) const;

 private:
  struct Slot {
    std::shared_ptr<const LoadedModel> model;
    Refusal failure = Refusal::kNone;  // why it is not loaded
    std::string failure_message;
  };
  TpmTime TpmNowLocked() const;
  Status PersistLocked();
  // Loads the models of `licences` (outside the lock) and installs them if still leased.
  void LoadModels(const std::vector<std::string>& licences);
  Slot LoadModel(const protocol::LeasePayload& lease);
  const HeldLease* FindLeaseLocked(std::string_view name, std::string_view version,
                                   const Slot** slot) const;

  const DeviceIdentity& identity_;
  SharedTpm& tpm_;
  ModelCatalog& catalog_;
  const StateDir& dir_;
  PersistentState& state_;
  const engine::LoadOptions load_options_;
  const WallClock wall_clock_;

  mutable std::mutex mu_;
  LeaseBook book_;
  std::map<std::string, Slot> slots_;         // by licence id
  std::map<std::string, std::string> names_;  // model id -> model name, for leases held
  std::optional<tpm::TimeInfo> tpm_time_;
  std::chrono::steady_clock::time_point tpm_time_at_{};
  const uint32_t quoted_reset_offset_;
};

}  // namespace custody::agent
