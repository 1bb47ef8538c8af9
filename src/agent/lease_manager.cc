#include "agent/lease_manager.h"

#include <algorithm>

namespace custody::agent {
namespace {

std::string Num(uint64_t v) { return std::to_string(v); }

bool Matches(const protocol::LeasePayload& l, std::string_view name, std::string_view version) {
  return l.model_name == name && (version.empty() || l.model_version == version);
}

}  // namespace

LeaseManager::LeaseManager(const DeviceIdentity& identity, SharedTpm& tpm, ModelCatalog& catalog,
                           const StateDir& dir, PersistentState& state,
                           engine::LoadOptions load_options, WallClock wall_clock,
                           uint32_t quoted_reset_offset)
    : identity_(identity),
      tpm_(tpm),
      catalog_(catalog),
      dir_(dir),
      state_(state),
      load_options_(std::move(load_options)),
      wall_clock_(std::move(wall_clock)),
      book_(identity.device_id, state.Get().book),
      quoted_reset_offset_(quoted_reset_offset) {}

Status LeaseManager::PersistLocked() {
  std::vector<nlohmann::json> envelopes;
  for (const auto& [licence, held] : book_.leases()) envelopes.push_back(held.envelope);
  // Leases first: a crash between the two leaves leases the state does not record yet, which
  // Restore refuses (the next attestation brings them again); never the reverse.
  CUSTODY_RETURN_IF_ERROR(dir_.SaveLeases(envelopes));
  const LeaseBookState book = book_.state();
  return state_.Update([&](AgentState& s) { s.book = book; });
}

std::vector<std::string> LeaseManager::Restore() {
  std::vector<std::string> problems;
  Result<std::vector<nlohmann::json>> stored = dir_.LoadLeases();
  if (!stored) return {stored.error().ToString()};
  std::vector<std::string> licences;
  {
    std::lock_guard lock(mu_);
    for (const nlohmann::json& envelope : *stored) {
      Result<protocol::LeasePayload> lease = OpenLease(identity_, envelope);
      if (!lease) {
        problems.push_back("stored lease refused: " + lease.error().ToString());
        continue;
      }
      Result<HeldLease> held = MakeHeldLease(std::move(lease).value(), envelope);
      if (!held) {
        problems.push_back(held.error().ToString());
        continue;
      }
      const std::string licence = held->lease.licence_id;
      names_[held->lease.model_id] = held->lease.model_name;
      const Status restored = book_.Restore(std::move(held).value());
      if (!restored.ok()) {
        problems.push_back(restored.ToString());
        continue;
      }
      licences.push_back(licence);
    }
  }
  LoadModels(licences);
  return problems;
}

std::vector<std::string> LeaseManager::ApplyLeases(const std::vector<nlohmann::json>& envelopes) {
  std::vector<std::string> problems;
  std::vector<HeldLease> verified;
  for (const nlohmann::json& envelope : envelopes) {
    Result<protocol::LeasePayload> lease = OpenLease(identity_, envelope);
    if (!lease) {
      problems.push_back("lease refused: " + lease.error().ToString());
      continue;
    }
    Result<HeldLease> held = MakeHeldLease(std::move(lease).value(), envelope);
    if (!held) {
      problems.push_back(held.error().ToString());
      continue;
    }
    verified.push_back(std::move(held).value());
  }
  std::sort(verified.begin(), verified.end(), [](const HeldLease& a, const HeldLease& b) {
    return a.lease.sequence < b.lease.sequence;
  });
  std::vector<std::string> to_load;
  {
    std::lock_guard lock(mu_);
    bool changed = false;
    for (HeldLease& held : verified) {
      const std::string licence = held.lease.licence_id;
      const std::string model_id = held.lease.model_id;
      const std::string model_name = held.lease.model_name;
      Result<LeaseBook::Outcome> outcome = book_.Accept(std::move(held));
      if (!outcome) {
        problems.push_back(outcome.error().ToString());
        continue;
      }
      if (*outcome == LeaseBook::Outcome::kDuplicate) continue;
      changed = true;
      names_[model_id] = model_name;
      auto slot = slots_.find(licence);
      // A new lease on a licence whose model is loaded changes limits and times, not the model.
      if (slot == slots_.end() || !slot->second.model) to_load.push_back(licence);
    }
    if (changed) {
      const Status persisted = PersistLocked();
      if (!persisted.ok()) problems.push_back("leases not saved: " + persisted.ToString());
    }
  }
  LoadModels(to_load);
  return problems;
}

Result<std::string> LeaseManager::ApplyRevocation(const nlohmann::json& envelope) {
  CUSTODY_ASSIGN_OR_RETURN(protocol::RevocationPayload r, OpenRevocation(identity_, envelope));
  std::vector<std::shared_ptr<const LoadedModel>> unloading;  // released after the lock
  std::string what;
  {
    std::lock_guard lock(mu_);
    if (r.revocation_epoch <= book_.state().revocation_epoch) return std::string();
    const std::vector<std::string> dropped = book_.Revoke(r);
    for (const std::string& licence : dropped) {
      auto slot = slots_.find(licence);
      if (slot == slots_.end()) continue;
      unloading.push_back(std::move(slot->second.model));
      slots_.erase(slot);
    }
    what = "revoked " + r.scope + " " + r.subject + " (" + r.reason + "): " + Num(dropped.size()) +
           " lease(s) dropped, " + Num(unloading.size()) + " model(s) unloaded";
    CUSTODY_RETURN_IF_ERROR(PersistLocked().WithContext(what + "; saving the state failed"));
  }
  return what;
}

void LeaseManager::RetryFailedLoads() {
  std::vector<std::string> licences;
  {
    std::lock_guard lock(mu_);
    for (const auto& [licence, held] : book_.leases()) {
      auto slot = slots_.find(licence);
      if (slot == slots_.end() || !slot->second.model) licences.push_back(licence);
    }
  }
  LoadModels(licences);
}

void LeaseManager::LoadModels(const std::vector<std::string>& licences) {
  for (const std::string& licence : licences) {
    std::optional<protocol::LeasePayload> lease;
    {
      std::lock_guard lock(mu_);
      auto held = book_.leases().find(licence);
      if (held != book_.leases().end()) lease = held->second.lease;
    }
    if (!lease) continue;
    Slot slot = LoadModel(*lease);
    std::lock_guard lock(mu_);
    auto held = book_.leases().find(licence);
    // Revoked while it loaded: drop it (the model is wiped as `slot` goes).
    if (held == book_.leases().end() || held->second.lease.model_id != lease->model_id) continue;
    slots_[licence] = std::move(slot);
  }
}

LeaseManager::Slot LeaseManager::LoadModel(const protocol::LeasePayload& lease) {
  Slot slot;
  Result<std::string> path = catalog_.Find(lease.model_id);
  if (!path) {
    slot.failure = Refusal::kModelUnavailable;
    slot.failure_message = path.error().message();
    return slot;
  }
  Result<SecretBuffer> dek =
      tpm_.Run(TpmOp::kUnwrap, [&](tpm::Tpm& t) { return UnwrapLeaseKey(t, identity_, lease); });
  if (!dek) {
    const bool platform = dek.error().code() == StatusCode::kPermissionDenied;
    slot.failure = platform ? Refusal::kPlatformRefused : Refusal::kModelUnavailable;
    slot.failure_message =
        platform ? "the TPM refuses to unwrap the model key: this device's platform state (PCRs) "
                   "is not one the vendor approved (" +
                       dek.error().message() + ")"
                 : "the model key could not be unwrapped: " + dek.error().message();
    return slot;
  }
  Result<std::shared_ptr<const LoadedModel>> model =
      LoadSealedModel(*path, *dek, catalog_.vendor(), load_options_);
  if (!model) {
    slot.failure = Refusal::kModelUnavailable;
    slot.failure_message = "the sealed model could not be loaded: " + model.error().message();
    return slot;
  }
  if ((*model)->info.name != lease.model_name || (*model)->info.version != lease.model_version) {
    slot.failure = Refusal::kModelUnavailable;
    slot.failure_message = "the sealed model " + *path + " is " + (*model)->info.name + " " +
                           (*model)->info.version + " but the lease is for " + lease.model_name +
                           " " + lease.model_version;
    return slot;
  }
  slot.model = std::move(model).value();
  return slot;
}

void LeaseManager::UpdateTpmClock(const tpm::TimeInfo& time) {
  std::lock_guard lock(mu_);
  tpm_time_ = time;
  tpm_time_at_ = std::chrono::steady_clock::now();
}

TpmTime LeaseManager::TpmNowLocked() const {
  if (!tpm_time_) return {0, false};
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - tpm_time_at_);
  return {tpm_time_->clock_ms + static_cast<uint64_t>(std::max<int64_t>(elapsed.count(), 0)),
          tpm_time_->safe, tpm_time_->reset_count,
          static_cast<uint32_t>(tpm_time_->reset_count + quoted_reset_offset_)};
}

const HeldLease* LeaseManager::FindLeaseLocked(std::string_view name, std::string_view version,
                                               const Slot** slot) const {
  const HeldLease* found = nullptr;
  for (const auto& [licence, held] : book_.leases()) {
    if (!Matches(held.lease, name, version)) continue;
    auto s = slots_.find(licence);
    const Slot* candidate = s == slots_.end() ? nullptr : &s->second;
    // Prefer a lease whose model is loaded, then the one with the most budget.
    const bool loaded = candidate != nullptr && candidate->model;
    const bool found_loaded = *slot != nullptr && (*slot)->model;
    if (found == nullptr || (loaded && !found_loaded) ||
        (loaded == found_loaded && held.lease.counter_limit > found->lease.counter_limit)) {
      found = &held;
      *slot = candidate;
    }
  }
  return found;
}

Result<Admission> LeaseManager::Admit(std::string_view name, std::string_view version,
                                      uint64_t position, LeaseVerdict* refusal) const {
  std::lock_guard lock(mu_);
  const Slot* slot = nullptr;
  const HeldLease* held = FindLeaseLocked(name, version, &slot);
  if (held == nullptr) {
    std::string model_id;
    for (const auto& [id, n] : names_) {
      if (n == name) model_id = id;
    }
    *refusal = book_.Missing(model_id, name);
    if (refusal->refusal == Refusal::kNoLease) {
      refusal->message = "no lease for a model named '" + std::string(name) +
                         "': the device has not obtained one from the custodian (not attested "
                         "yet, the custodian unreachable since start, or no licence covers it)";
    }
    return refusal->ToStatus();
  }
  *refusal = book_.Check(*held, wall_clock_(), TpmNowLocked(), position);
  if (!refusal->ok()) return refusal->ToStatus();
  if (slot == nullptr || !slot->model) {
    *refusal = slot == nullptr ? LeaseVerdict{Refusal::kModelUnavailable,
                                              "the model is being loaded; retry in a moment"}
                               : LeaseVerdict{slot->failure, slot->failure_message};
    return refusal->ToStatus();
  }
  return Admission{slot->model, held->lease.licence_id, held->lease.model_id,
                   held->lease.counter_limit};
}

std::shared_ptr<const LoadedModel> LeaseManager::Find(std::string_view name,
                                                      std::string_view version) const {
  std::lock_guard lock(mu_);
  const Slot* slot = nullptr;
  const HeldLease* held = FindLeaseLocked(name, version, &slot);
  if (held == nullptr || slot == nullptr) return nullptr;
  return slot->model;
}

std::optional<uint64_t> LeaseManager::MsSinceContact() const {
  std::lock_guard lock(mu_);
  if (book_.leases().empty()) return std::nullopt;
  return book_.Offline(TpmNowLocked()).elapsed_ms;
}

uint64_t LeaseManager::MinOfflineGraceMs() const {
  std::lock_guard lock(mu_);
  return book_.min_offline_grace_ms();
}

bool LeaseManager::device_revoked() const {
  std::lock_guard lock(mu_);
  return book_.device_revocation() != nullptr;
}

std::vector<LowBudget> LeaseManager::BudgetsBelow(uint64_t threshold, uint64_t position) const {
  std::lock_guard lock(mu_);
  std::vector<LowBudget> out;
  for (const auto& [licence, held] : book_.leases()) {
    const uint64_t limit = held.lease.counter_limit;
    const uint64_t remaining = limit > position ? limit - position : 0;
    if (remaining < threshold) out.push_back({licence, limit, remaining});
  }
  return out;
}

nlohmann::json LeaseManager::Describe(uint64_t position) const {
  std::lock_guard lock(mu_);
  const TpmTime tpm = TpmNowLocked();
  const auto now = wall_clock_();
  const OfflineTime offline = book_.Offline(tpm);
  const uint64_t elapsed = offline.elapsed_ms;
  nlohmann::json models = nlohmann::json::array();
  for (const auto& [licence, held] : book_.leases()) {
    const protocol::LeasePayload& l = held.lease;
    auto s = slots_.find(licence);
    const Slot* slot = s == slots_.end() ? nullptr : &s->second;
    LeaseVerdict verdict = book_.Check(held, now, tpm, position);
    if (verdict.ok() && (slot == nullptr || !slot->model)) {
      verdict = slot == nullptr ? LeaseVerdict{Refusal::kModelUnavailable, "loading"}
                                : LeaseVerdict{slot->failure, slot->failure_message};
    }
    nlohmann::json m = {
        {"name", l.model_name},
        {"version", l.model_version},
        {"model_id", l.model_id},
        {"licence_id", l.licence_id},
        {"serving", verdict.ok()},
        {"refusal",
         verdict.ok() ? nlohmann::json(nullptr) : nlohmann::json(RefusalName(verdict.refusal))},
        {"message", verdict.message},
        {"lease",
         {{"lease_id", l.lease_id},
          {"sequence", l.sequence},
          {"issued_at", l.issued_at},
          {"not_after", l.not_after}}},
        {"budget",
         {{"limit", l.counter_limit},
          {"position", position},
          {"remaining", l.counter_limit > position ? l.counter_limit - position : 0}}},
        {"offline_grace",
         {{"grace_ms", l.offline_grace_ms},
          {"since_contact_ms", elapsed},
          {"left_ms", l.offline_grace_ms > elapsed ? l.offline_grace_ms - elapsed : 0}}},
        {"memory_protection", nullptr}};
    if (slot != nullptr && slot->model) {
      const engine::EngineProtection& p = slot->model->protection;
      m["engine"] = slot->model->info.engine;
      m["memory_protection"] = {{"locked", p.memory.locked},
                                {"dontdump", p.memory.dontdump},
                                {"weights_covered", p.weights_covered},
                                {"report", p.report}};
    }
    models.push_back(std::move(m));
  }
  nlohmann::json revocations = nlohmann::json::array();
  for (const RevokedScope& r : book_.state().revoked) {
    revocations.push_back({{"scope", r.scope},
                           {"subject", r.subject},
                           {"reason", r.reason},
                           {"issued_at", r.issued_at}});
  }
  return {{"models", models},
          {"revocations", revocations},
          {"device_revoked", book_.device_revocation() != nullptr},
          {"tpm_clock",
           {{"clock_ms", tpm.clock_ms},
            {"safe", tpm.safe},
            {"contact_ms", offline.contact_ms},
            {"reset_count", tpm.reset_count},
            {"resets_since_contact", offline.resets},
            {"possible_loss_ms", offline.lost_ms}}},
          {"lease_sequence", book_.state().max_sequence},
          {"revocation_epoch", book_.state().revocation_epoch}};
}

}  // namespace custody::agent
