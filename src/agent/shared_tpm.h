// The agent's one connection to its TPM, shared by its threads. A TPM executes one command at a
// time, and swtpm (with no resource manager in front of it) even serves one connection at a time,
// so every TPM call of the agent goes through Run, which holds a mutex for the whole operation
// (several commands, e.g. a policy session and the ECDH it authorises).
//
// What runs here is never on the request path except the meter's block advance (DESIGN.md §7).
#pragma once

#include <memory>
#include <mutex>
#include <utility>

#include "core/tpm/device.h"

namespace custody::agent {

class SharedTpm {
 public:
  explicit SharedTpm(std::unique_ptr<tpm::Tpm> tpm) : tpm_(std::move(tpm)) {}
  SharedTpm(const SharedTpm&) = delete;
  SharedTpm& operator=(const SharedTpm&) = delete;

  // Runs `f(tpm::Tpm&)` with the TPM to itself and returns what it returns.
  template <typename F>
  auto Run(F&& f) {
    std::lock_guard lock(mu_);
    return std::forward<F>(f)(*tpm_);
  }

 private:
  std::mutex mu_;
  std::unique_ptr<tpm::Tpm> tpm_;
};

}  // namespace custody::agent
