// custody-agent: the device daemon's parts wired together in the order they depend on each other
// (DESIGN.md §6-§9), and torn down in reverse. main.cc is this plus the command line and signals;
// tests run it in-process too.
//
// Enroll (once): state directory -> TPM (AK, NV counter, binding key) -> the custodian's two
// enrollment round trips -> TLS key, identity and the metering journal on disk.
//
// Start: state directory and identity -> TPM -> meter (journal reconciled with the counter) ->
// leases stored (verified again) and their models -> local server -> custodian link. Stop: link,
// server (requests in progress finish), models unloaded and wiped, journal synced, TPM closed.
//
// Callers are authorised by their Unix peer credentials (the agent's own uid, serve.allow_uids,
// serve.allow_gids) and, when application tokens are configured, by "Authorization: Bearer
// <token>" (required with serve.require_token, and always on loopback TCP, where there are no
// peer credentials). The journal counts each request under the caller's name: "app:<name>" for a
// token, else "uid:<uid>".
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/config.h"
#include "agent/hardening.h"
#include "core/base/bytes.h"
#include "core/base/log.h"
#include "core/base/status.h"

namespace custody::agent {

struct EnrollOptions {
  std::string token;  // the one-time enrollment token
};

// `custody-agent enroll`: returns the new device id.
Result<std::string> Enroll(const AgentConfig& config, const EnrollOptions& options, Logger& log);

// An application token (serve.tokens_file: "name sha256-hex" per line, '#' comments).
struct AppToken {
  std::string name;
  Bytes sha256;
};
Result<std::vector<AppToken>> LoadAppTokens(const std::string& path);

class Agent {
 public:
  // `hardening`: what main applied to the process (reported in the status and the log).
  static Result<std::unique_ptr<Agent>> Start(const AgentConfig& config,
                                              const HardeningReport& hardening, Logger& log);
  ~Agent();  // Stop() if still running
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Orderly shutdown: requests in progress finish (up to `grace`), models are unloaded and
  // their memory wiped, the journal is synced.
  void Stop(std::chrono::milliseconds grace);

  // The loopback TCP port, when configured.
  std::optional<uint16_t> tcp_port() const;
  // What GET /v1/status returns.
  nlohmann::json Describe() const;
  // What main did about the seccomp filter after start-up, for the status ("installed (errno)",
  // "off by configuration", or the failure).
  void SetSeccompState(std::string state);

  struct Parts;

 private:
  explicit Agent(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace custody::agent
