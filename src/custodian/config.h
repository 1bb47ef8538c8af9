// custodian.toml: the custodian's configuration (docs/OPERATIONS.md, "Running a custodian").
//
//   data_dir = "/var/lib/custody"       # keys/ and the database live here (custodian init)
//
//   [server]
//   listen = "0.0.0.0:8443"             # address:port; "[::]:8443" for IPv6
//   io_threads = 2
//   worker_threads = 8
//   max_body_bytes = 1048576
//   max_header_bytes = 16384
//   max_connections = 20000
//   header_timeout_ms = 10000           # slow clients (slowloris) are cut off after this
//   body_timeout_ms = 30000
//   idle_timeout_ms = 75000
//   rate_per_second = 50                # per client (device, token or address); 0 = off
//   rate_burst = 100
//
//   [store]
//   path = "custodian.db"               # relative to data_dir
//   durability = "power-loss"           # or "process-crash" (faster; survives kill -9)
//
//   [tpm]
//   ek_ca_dir = "/etc/custody/tpm-ca"   # TPM makers' CA certificates for EK checks
//
//   [log]
//   level = "info"                      # debug | info | warn | error
//
// Unknown keys are errors (a misspelt limit must not silently keep its default), and every
// error names the key and says what is expected.
// The text must be ASCII (paths included): the TOML library has undefined behaviour on some
// non-ASCII input, so any non-ASCII byte is refused before it is parsed.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "core/base/log.h"
#include "core/base/status.h"
#include "custodian/store/store.h"
#include "http/server.h"

namespace custody::custodian {

struct Config {
  std::string data_dir;
  http::ServerOptions server;  // listen address/port and limits; TLS material is filled later
  std::string store_path;      // absolute
  Durability durability = Durability::kPowerLoss;
  std::string ek_ca_dir;
  LogLevel log_level = LogLevel::kInfo;
};

// Parses the file at `path`. Relative paths in it are relative to data_dir (which must be
// absolute).
Result<Config> LoadConfig(const std::string& path);
Result<Config> ParseConfig(std::string_view text, std::string_view source);

// The configuration `custodian init` writes.
std::string DefaultConfigText(const std::string& data_dir, const std::string& listen);

}  // namespace custody::custodian
