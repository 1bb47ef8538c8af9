// The agent's side of the custodian protocol, over mutual TLS (DESIGN.md §6; PROTOCOL.md
// §12-§14): everything the device initiates, on two threads so that the stop switch is never
// behind a slow report.
//
//   events thread       holds the long-poll (GET /v1/events) and applies what arrives at once:
//                       revocations (the model is unloaded before the next request), leases
//                       pushed by the custodian (approved extensions, policy updates, new
//                       licences).
//   maintenance thread  about once a second: reads the TPM clock for the lease manager; attests
//                       when no lease is held, when half the shortest offline grace has passed
//                       since the last attestation, or every renew_interval (a fresh lease is what
//                       keeps the offline grace from running out while online); reports usage
//                       every report_interval (counts from the journal, the counter certified by
//                       the TPM); files a budget extension request when a licence's remaining
//                       budget falls below the threshold (once per lease, after a usage report so
//                       the custodian counts from fresh numbers); retries failed model loads.
//
// When the custodian is unreachable, each thread retries with exponential backoff (1 s doubling
// to 60 s) and jitter (±20%), and the device keeps serving until its leases' offline grace runs
// out (lease_book.h). Usage reports are idempotent: a report is saved before it is sent and sent
// again, identically, until the custodian acknowledges it.
//
// Threading: Start once, Stop once (from another thread); Describe from any thread.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/lease_manager.h"
#include "agent/meter.h"
#include "agent/shared_tpm.h"
#include "agent/state.h"
#include "core/base/log.h"
#include "http/client.h"

namespace custody::agent {

struct LinkOptions {
  http::ClientOptions client;  // host, port, pinned CA, mutual TLS identity
  uint64_t report_interval_ms = 60'000;
  uint64_t renew_interval_ms = 3'600'000;
  uint64_t extension_threshold = 0;  // 0: never ask
  uint64_t extension_amount = 0;
  int poll_wait_ms = 25'000;
  std::chrono::milliseconds tick{1000};
  std::chrono::milliseconds min_backoff{1000};
  std::chrono::milliseconds max_backoff{60'000};
};

class CustodianLink {
 public:
  CustodianLink(LinkOptions options, const DeviceIdentity& identity, SharedTpm& tpm, Meter& meter,
                LeaseManager& leases, PersistentState& state, Logger& log);
  ~CustodianLink();  // Stop()
  CustodianLink(const CustodianLink&) = delete;
  CustodianLink& operator=(const CustodianLink&) = delete;

  // Reads the TPM clock once (so that the first requests are judged on it) and starts the threads.
  Status Start();
  // Ends the long-poll and any request in progress, and joins the threads.
  void Stop();

  // Connection state for the status endpoint.
  nlohmann::json Describe() const;

 private:
  // Each thread backs off on its own; when one reaches the custodian again after failing, it
  // clears the other's backoff (`poked`), so a revocation or a lease does not wait out a backoff
  // grown while the custodian was down.
  struct Backoff {
    std::chrono::steady_clock::time_point next{};
    std::chrono::milliseconds delay{0};
    bool poked = false;  // guarded by mu_
  };

  void EventsLoop();
  void MaintenanceLoop();
  // Waits until `deadline`, Stop, or a poke of `b` (which clears its backoff); false when
  // stopping.
  bool WaitUntil(std::chrono::steady_clock::time_point deadline, Backoff& b);
  void Failed(Backoff& b, const Status& s, std::string_view what);
  // `b` reached the custodian; if it had been failing, `other` retries now.
  void Succeeded(Backoff& b, Backoff& other);
  void ReadClock();
  Status Attest(http::Client& client);
  // Sends any pending report, then reports the journal's records since the cursor and any
  // anomaly not reported yet.
  Status Report(http::Client& client);
  Status SendReport(http::Client& client, const PendingReport& report);
  Status RequestExtensions(http::Client& client);
  Result<Bytes> Nonce(http::Client& client);
  bool NeedsAttestation() const;

  LinkOptions options_;  // client.client_key_pem is wiped once Start made the clients
  const DeviceIdentity& identity_;
  SharedTpm& tpm_;
  Meter& meter_;
  LeaseManager& leases_;
  PersistentState& state_;
  Logger& log_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::unique_ptr<http::Client> events_client_;
  std::unique_ptr<http::Client> client_;
  std::thread events_thread_;
  std::thread maintenance_thread_;
  Backoff events_backoff_;       // events thread only, but for `poked`
  Backoff maintenance_backoff_;  // maintenance thread only, but for `poked`

  // Maintenance thread only.
  bool force_attest_ = true;  // at start: attest at once
  std::chrono::steady_clock::time_point last_report_{};
  std::chrono::steady_clock::time_point last_retry_{};
  std::map<std::string, uint64_t> extension_asked_;  // licence -> counter limit asked at

  mutable std::mutex status_mu_;
  bool connected_ = false;    // the latest request to the custodian succeeded
  std::string last_contact_;  // RFC 3339, wall clock
  std::string last_error_;
  std::string last_attestation_;
  std::string last_report_at_;
  nlohmann::json extensions_ = nlohmann::json::object();  // licence -> last answer
};

}  // namespace custody::agent
