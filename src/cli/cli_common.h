// Shared pieces of the custody CLI: exit codes a script can rely on, error printing, key file
// loading and the progress bar.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::cli {

// Exit codes (documented in README.md and docs/OPERATIONS.md). Stable: scripts depend on them.
enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,      // a bug or an unexpected library failure
  kExitUsage = 2,         // bad command line or invalid argument
  kExitNotFound = 3,      // a file is missing or unreadable; the custodian has no such object (404)
  kExitExists = 4,        // an output exists and --force was not given; a conflict (HTTP 409)
  kExitVerifyFailed = 5,  // authentication or integrity failure: wrong key, tampered file
  kExitUnsupported = 6,   // a format version, suite or engine this build does not support
  kExitRefused = 7,       // refused: expired model, unsafe key permissions, the custodian refused
                          // the API token (HTTP 401/403)
  kExitUnavailable = 8,   // a resource ran out or a dependency is unavailable
};

int ExitCodeFor(StatusCode code);

// Prints "custody: error: <message>" to stderr and returns the exit code for the status.
int Fail(const Status& status);

// Loads the vendor's Ed25519 private key from PEM, refusing a key file that other users can
// read (like ssh does), because a leaked sealing key lets anyone sign models as the vendor.
Result<crypto::Ed25519PrivateKey> LoadSigningKey(const std::string& path);
Result<crypto::Ed25519PublicKey> LoadVendorPublicKey(const std::string& path);

// A progress bar on stderr, drawn only when stderr is a terminal, at most ten times a second.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  void Update(uint64_t done, uint64_t total);

 private:
  std::string label_;
  bool enabled_;
  int64_t start_ms_;
  int64_t last_draw_ms_ = 0;
  bool drawn_ = false;
};

std::string HumanBytes(uint64_t n);

// Each command group registers its subcommands; main.cc wires them together.
void RegisterModelCommands(CLI::App& app, int& exit_code);
void RegisterRunCommand(CLI::App& app, int& exit_code);
void RegisterTpmCommands(CLI::App& app, int& exit_code);
// custody admin …: the custodian's admin API (admin_commands.cc).
void RegisterAdminCommands(CLI::App& app, int& exit_code);
// custody infer, custody status: the local custody-agent's API (agent_commands.cc).
void RegisterAgentCommands(CLI::App& app, int& exit_code);

}  // namespace custody::cli
