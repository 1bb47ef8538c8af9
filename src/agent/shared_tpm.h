// The agent's one connection to its TPM, shared by its threads. A TPM executes one command at a
// time, and swtpm (with no resource manager in front of it) even serves one connection at a time,
// so every TPM call of the agent goes through Run, which holds a mutex for the whole operation
// (several commands, e.g. a policy session and the ECDH it authorises).
//
// What runs here is never on the request path except the meter's block advance (DESIGN.md §7).
// Each operation is counted by kind, and the status endpoint shows the counts, so that claim can
// be checked on a running agent (bench/agent_bench.cc does).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string_view>
#include <utility>

#include "core/tpm/device.h"

namespace custody::agent {

enum class TpmOp : size_t {
  kEnroll,          // enrollment: keys, counter, credential activation
  kClockRead,       // ReadClock (once a second, for the offline grace)
  kCounterRead,     // the usage counter, at start
  kCounterAdvance,  // one block of requests (the only one on the request path)
  kCounterCertify,  // NV_Certify for a usage report
  kAttest,          // a quote for the custodian
  kUnwrap,          // a lease's DEK through the binding key; the TLS key at start
  kCount,
};

constexpr std::array<std::string_view, static_cast<size_t>(TpmOp::kCount)> kTpmOpNames = {
    "enroll",          "clock_read", "counter_read", "counter_advance",
    "counter_certify", "attest",     "unwrap"};

class SharedTpm {
 public:
  explicit SharedTpm(std::unique_ptr<tpm::Tpm> tpm) : tpm_(std::move(tpm)) {}
  SharedTpm(const SharedTpm&) = delete;
  SharedTpm& operator=(const SharedTpm&) = delete;

  // Runs `f(tpm::Tpm&)` with the TPM to itself and returns what it returns; counts it as `op`.
  template <typename F>
  auto Run(TpmOp op, F&& f) {
    std::lock_guard lock(mu_);
    counts_[static_cast<size_t>(op)].fetch_add(1, std::memory_order_relaxed);
    return std::forward<F>(f)(*tpm_);
  }

  // Operations of `op` run so far.
  uint64_t count(TpmOp op) const {
    return counts_[static_cast<size_t>(op)].load(std::memory_order_relaxed);
  }

 private:
  std::mutex mu_;
  std::unique_ptr<tpm::Tpm> tpm_;
  std::array<std::atomic<uint64_t>, static_cast<size_t>(TpmOp::kCount)> counts_{};
};

}  // namespace custody::agent
