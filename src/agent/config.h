// agent.toml: the device agent's configuration (docs/OPERATIONS.md, "The device agent"; a
// commented example is packaging/agent.toml).
//
//   state_dir = "/var/lib/custody-agent"     # identity, journal, leases (custody-agent enroll)
//   models_dir = "/var/lib/custody-agent/models"   # sealed models, found by their header's id
//   vendor_public_key = "/etc/custody/vendor.pub"  # who may have sealed them
//   tcti = "device:/dev/tpmrm0"
//
//   [custodian]
//   url = "https://custodian.example.com:8443"
//   ca = "/etc/custody/custodian-ca.pem"     # for enrollment; the CA it returns is then pinned
//   server_name = ""                         # the name its certificate carries, if not the URL's
//
//   [serve]
//   socket = "/run/custody-agent/agent.sock"
//   socket_mode = "0660"
//   socket_group = ""                        # group name or number whose members may connect
//   allow_uids = []                          # peer uids allowed (SO_PEERCRED), besides the
//   allow_gids = []                          #   agent's own; and peer primary gids
//   tokens_file = ""                         # "name sha256-hex" lines: per-application tokens
//   require_token = false                    # every caller must present one
//   tcp_port = 0                             # loopback TCP too (127.0.0.1); 0 or absent: off
//   workers = 1                              # inference threads (OPERATIONS.md)
//   max_queue = 64
//
//   [metering]
//   unit = 16                                # requests per TPM counter step (fixed at enrollment)
//   extension_threshold = 0                  # ask for more when this little is left (0: off)
//   extension_amount = 0                     # how much to ask for
//   report_interval = "60s"
//
//   [lease]
//   renew_interval = "1h"                    # attest again at least this often
//
//   [engine]
//   threads = 0
//   plugin_dirs = []
//
//   [hardening]
//   memory_lock = "best-effort"              # "required" | "best-effort" | "off"
//   seccomp = "errno"                        # "errno" | "kill" | "off"
//
//   [log]
//   level = "info"
//
// Unknown keys are errors, every error names the key, and the text must be ASCII
// (core/config/toml_reader.h). Paths must be absolute.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/hardening.h"
#include "core/base/log.h"
#include "core/base/status.h"

namespace custody::agent {

enum class SeccompMode { kOff, kErrno, kKill };

struct AgentConfig {
  std::string state_dir;
  std::string models_dir;
  std::string vendor_public_key;
  std::string tcti = "device:/dev/tpmrm0";

  struct Custodian {
    std::string url;  // https://host:port
    std::string host;
    uint16_t port = 443;
    std::string ca_file;
    std::string server_name;  // "" = host
  } custodian;

  struct Serve {
    std::string socket = "/run/custody-agent/agent.sock";
    uint32_t socket_mode = 0660;
    std::optional<gid_t> socket_group;
    std::vector<uid_t> allow_uids;
    std::vector<gid_t> allow_gids;
    std::string tokens_file;
    bool require_token = false;
    std::optional<uint16_t> tcp_port;
    unsigned workers = 1;
    size_t max_queue = 64;
  } serve;

  struct Metering {
    uint64_t unit = 16;
    uint64_t extension_threshold = 0;
    uint64_t extension_amount = 0;
    uint64_t report_interval_ms = 60'000;
  } metering;

  uint64_t renew_interval_ms = 3'600'000;

  struct Engine {
    int threads = 0;
    std::vector<std::string> plugin_dirs;
  } engine;

  MemoryLock memory_lock = MemoryLock::kBestEffort;
  SeccompMode seccomp = SeccompMode::kErrno;
  LogLevel log_level = LogLevel::kInfo;
};

Result<AgentConfig> ParseAgentConfig(std::string_view text, std::string_view source);
Result<AgentConfig> LoadAgentConfig(const std::string& path);

// "https://host:port" -> host and port (443 when absent). kInvalidArgument naming `key`.
Status ParseHttpsUrl(std::string_view url, std::string_view key, std::string& host, uint16_t& port);

// `custody-agent enroll --custodian URL`: the URL the operator was given must name the custodian
// the configuration names (host case-insensitively, same port), so that enrollment and every
// later run talk to the same server. kInvalidArgument saying which to fix otherwise.
Status CheckCustodianUrl(const AgentConfig& config, std::string_view url);

}  // namespace custody::agent
