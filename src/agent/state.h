// The agent's state directory (docs/OPERATIONS.md, "The device agent"): what enrollment leaves on
// the device and what the agent must remember across restarts. Owned by the agent's user, mode
// 0700; every file 0600, written atomically (temporary file, fsync, rename).
//
//   identity.json   device id, TPM key blobs (loadable only by this TPM), the NV counter's index,
//                   authValue and unit, the PCR selection, the pinned custodian keys and CA, the
//                   device certificate
//   tls-key.sealed  the device's TLS client key (P-256), sealed to this TPM (SealedTlsKey)
//   meter.journal   the metering journal (journal.h)
//   leases.json     the lease envelopes held, as received (their signatures are checked again at
//                   every start)
//   state.json      what the leases and reports rest on: the highest lease sequence accepted, the
//                   sequence of each lease held, the revocation epoch and revoked scopes, the
//                   event cursor, the usage report cursor and the report in flight
//
// Nothing here is secret from the TPM's point of view: the key blobs are useless on another TPM,
// and a copied directory gets no lease (a quote from another TPM does not verify) and no model key
// (the binding key does not load). The counter's authValue and the TLS key are secrets of the
// device (0600); the TLS key opens only in this TPM. See THREATS.md for what root on the device
// can do with them.
//
// Errors: kNotFound (not enrolled: no identity), kDataLoss (a file that does not parse, naming it
// and the field), kPermissionDenied (a directory other users can write to), errno codes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/device_protocol.h"
#include "agent/lease_book.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/protocol/messages.h"

namespace custody::agent {

// A usage report made but not yet acknowledged: sent again, identically, until it is.
struct PendingReport {
  std::string report_id;
  uint64_t after_seq = 0;  // journal records counted: after_seq < seq <= through_seq
  uint64_t through_seq = 0;
  uint64_t position = 0;  // the meter position the counts add up to
  std::vector<protocol::UsageRequest::Count> counts;
  std::string anomaly;  // "" or the meter anomaly the report carries (kMaxAnomalyBytes at most)
};

struct AgentState {
  LeaseBookState book;
  uint64_t events_after = 0;   // the custodian event stream's last_seq applied
  uint64_t report_cursor = 0;  // journal records through this seq were reported
  std::string report_journal;  // ... of the journal with this id (hex); "" before the first report
  std::optional<PendingReport> pending_report;
};

class StateDir {
 public:
  // Creates `path` (mode 0700; its parent must exist). kAlreadyExists if it holds an identity.
  static Result<StateDir> Create(const std::string& path);
  // An existing state directory; refuses one that other users can write to.
  static Result<StateDir> Open(const std::string& path);

  const std::string& path() const { return path_; }
  std::string journal_path() const { return path_ + "/meter.journal"; }
  bool enrolled() const;

  Result<DeviceIdentity> LoadIdentity() const;
  Status SaveIdentity(const DeviceIdentity& id) const;
  Result<SealedTlsKey> LoadTlsKey() const;
  Status SaveTlsKey(const SealedTlsKey& key) const;
  // A missing state file is a fresh state.
  Result<AgentState> LoadState() const;
  Status SaveState(const AgentState& state) const;
  // A missing leases file holds none.
  Result<std::vector<nlohmann::json>> LoadLeases() const;
  Status SaveLeases(const std::vector<nlohmann::json>& envelopes) const;

 private:
  explicit StateDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// state.json's one owner in a running agent: the lease manager and the custodian link both keep
// their part of it here, and every change is written before Update returns. Thread-safe.
class PersistentState {
 public:
  PersistentState(const StateDir& dir, AgentState initial)
      : dir_(dir), state_(std::move(initial)) {}
  AgentState Get() const;
  // Applies `change` and writes the file. If the write fails the change stays in memory (the
  // agent goes on with what it knows) and the error is returned for the log.
  Status Update(const std::function<void(AgentState&)>& change);

 private:
  const StateDir& dir_;
  mutable std::mutex mu_;
  AgentState state_;
};

// The JSON forms (exposed for tests).
nlohmann::json IdentityToJson(const DeviceIdentity& id);
Result<DeviceIdentity> IdentityFromJson(std::string_view text, std::string_view source);
nlohmann::json StateToJson(const AgentState& state);
Result<AgentState> StateFromJson(std::string_view text, std::string_view source);

}  // namespace custody::agent
