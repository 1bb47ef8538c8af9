// A software TPM per test: swtpm on a Unix socket in a fresh temporary directory (absolute
// paths, `--flags not-need-init,startup-clear`), reached with the TCTI "swtpm:path=<dir>/sock".
// swtpm has no resource manager and serves one connection at a time, so a test holds at most one
// custody::tpm::Tpm per Swtpm at a time (and tools run only while no Tpm is open).
//
// With `ek_certificates`, the TPM is first manufactured by swtpm_setup with a private local CA
// (swtpm_localca), as a TPM maker would: an RSA 2048 EK certificate at 0x01C00002, and, made
// here with the same CA because swtpm_setup issues ECC certificates only for P-384, a P-256 EK
// certificate at 0x01C0000A. trusted_ca_dir() then holds the CA's certificates (and nothing
// else), as a custodian's TPM-maker CA directory would.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"

namespace custody::testing {

class Swtpm {
 public:
  struct Options {
    bool ek_certificates = false;
    // Start from a copy of another instance's TPM state (the "copied disk" attack: the same
    // state bytes, but as a second TPM).
    std::string copy_state_from;
    // Log every command and answer in hex (swtpm --log level=20), for BusBytes().
    bool log_bus = false;
  };

  static Result<std::unique_ptr<Swtpm>> Start(Options options);
  static Result<std::unique_ptr<Swtpm>> Start() { return Start(Options{}); }
  ~Swtpm();
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  std::string tcti() const { return "swtpm:path=" + dir_ + "/sock"; }
  const std::string& dir() const { return dir_; }
  std::string state_dir() const { return dir_ + "/state"; }
  std::string trusted_ca_dir() const { return dir_ + "/trusted-ca"; }

  // Stops the emulator and starts it again on the same state: a reboot (startup-clear, so PCRs
  // reset and the TPM reset count grows). `orderly` sends TPM2_Shutdown first, as an OS does at
  // power-off; without it the restart is a power cut: the TPM clock falls back to its last
  // NV-saved value and reports `safe = NO`.
  enum class Shutdown { kOrderly, kPowerCut };
  Status Restart(Shutdown how = Shutdown::kOrderly);

  // Every byte that crossed the TPM's bus so far, commands and answers in order, as the log of a
  // log_bus instance shows them: what an attacker probing the bus would see.
  Result<Bytes> BusBytes() const;

  // Runs a tpm2-tools command against this TPM, e.g. {"tpm2_pcrread", "sha256:0"}; returns its
  // stdout. kInternal with stderr if it fails.
  Result<std::string> Tool(const std::vector<std::string>& argv) const;

 private:
  Swtpm() = default;
  Status Launch();
  Status Stop();
  Status MakeEccEkCertificate();

  std::string dir_;
  bool log_bus_ = false;
  pid_t pid_ = -1;
};

// Runs argv (argv[0] looked up in PATH) with `env` added, waits up to `timeout_s`, and returns
// stdout; kInternal with the exit status and stderr when it does not exit 0.
Result<std::string> RunProgram(const std::vector<std::string>& argv,
                               const std::vector<std::string>& env = {}, int timeout_s = 60);

}  // namespace custody::testing
