#include "custodian/config.h"

#include <charconv>
#include <set>

#include "core/base/file.h"
#include "core/config/toml_reader.h"

namespace custody::custodian {
namespace {

using config::GetInt;
using config::GetNumber;
using config::GetString;
using config::KeyError;
using config::RejectUnknownKeys;
using config::Section;
using config::TomlEscape;

// "host:port", "[v6]:port".
Status ParseListen(const std::string& text, http::ServerOptions& out) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return KeyError("server.listen", "expected ADDRESS:PORT, e.g. 0.0.0.0:8443");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  uint32_t port = 0;
  const std::string port_text = text.substr(colon + 1);
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
    return KeyError("server.listen", "port must be 0..65535");
  }
  out.listen_address = host;
  out.port = static_cast<uint16_t>(port);
  return OkStatus();
}

std::string Absolute(const std::string& data_dir, const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  return data_dir + "/" + path;
}

}  // namespace

Result<Config> ParseConfig(std::string_view text, std::string_view source) {
  CUSTODY_ASSIGN_OR_RETURN(toml::table root, config::Parse(text, source));
  CUSTODY_RETURN_IF_ERROR(
      RejectUnknownKeys(root, "", {"data_dir", "server", "store", "tpm", "log"}));
  Config c;
  const toml::node* data_dir = root.get("data_dir");
  if (data_dir == nullptr || !data_dir->is_string()) {
    return KeyError("data_dir", "required: the directory custodian init created");
  }
  c.data_dir = data_dir->as_string()->get();
  if (c.data_dir.empty() || c.data_dir[0] != '/') {
    return KeyError("data_dir", "must be an absolute path");
  }

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* server, Section(root, "server"));
  if (server != nullptr) {
    CUSTODY_RETURN_IF_ERROR(
        RejectUnknownKeys(*server, "server",
                          {"listen", "io_threads", "worker_threads", "max_body_bytes",
                           "max_header_bytes", "max_connections", "header_timeout_ms",
                           "body_timeout_ms", "idle_timeout_ms", "rate_per_second", "rate_burst"}));
  }
  http::ServerOptions& s = c.server;
  CUSTODY_ASSIGN_OR_RETURN(std::string listen,
                           GetString(server, "server", "listen", "127.0.0.1:8443"));
  CUSTODY_RETURN_IF_ERROR(ParseListen(listen, s));
  CUSTODY_ASSIGN_OR_RETURN(int64_t io, GetInt(server, "server", "io_threads", 2, 1, 256));
  CUSTODY_ASSIGN_OR_RETURN(int64_t workers, GetInt(server, "server", "worker_threads", 8, 1, 1024));
  CUSTODY_ASSIGN_OR_RETURN(int64_t body,
                           GetInt(server, "server", "max_body_bytes", 1 << 20, 1024, 64 << 20));
  CUSTODY_ASSIGN_OR_RETURN(int64_t header,
                           GetInt(server, "server", "max_header_bytes", 16 << 10, 1024, 1 << 20));
  CUSTODY_ASSIGN_OR_RETURN(int64_t conns,
                           GetInt(server, "server", "max_connections", 20000, 1, 1000000));
  CUSTODY_ASSIGN_OR_RETURN(int64_t header_ms,
                           GetInt(server, "server", "header_timeout_ms", 10000, 100, 600000));
  CUSTODY_ASSIGN_OR_RETURN(int64_t body_ms,
                           GetInt(server, "server", "body_timeout_ms", 30000, 100, 600000));
  CUSTODY_ASSIGN_OR_RETURN(int64_t idle_ms,
                           GetInt(server, "server", "idle_timeout_ms", 75000, 100, 3600000));
  CUSTODY_ASSIGN_OR_RETURN(s.rate_per_second,
                           GetNumber(server, "server", "rate_per_second", 50, 0, 1e6));
  CUSTODY_ASSIGN_OR_RETURN(s.rate_burst, GetNumber(server, "server", "rate_burst", 100, 1, 1e7));
  s.io_threads = static_cast<unsigned>(io);
  s.worker_threads = static_cast<unsigned>(workers);
  s.max_body_bytes = static_cast<size_t>(body);
  s.max_header_bytes = static_cast<size_t>(header);
  s.max_connections = static_cast<size_t>(conns);
  s.header_timeout = std::chrono::milliseconds(header_ms);
  s.body_timeout = std::chrono::milliseconds(body_ms);
  s.idle_timeout = std::chrono::milliseconds(idle_ms);

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* store, Section(root, "store"));
  if (store != nullptr)
    CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*store, "store", {"path", "durability"}));
  CUSTODY_ASSIGN_OR_RETURN(std::string path, GetString(store, "store", "path", "custodian.db"));
  c.store_path = Absolute(c.data_dir, path);
  CUSTODY_ASSIGN_OR_RETURN(std::string durability,
                           GetString(store, "store", "durability", "power-loss"));
  if (durability == "power-loss") {
    c.durability = Durability::kPowerLoss;
  } else if (durability == "process-crash") {
    c.durability = Durability::kProcessCrash;
  } else {
    return KeyError("store.durability", "expected \"power-loss\" or \"process-crash\"");
  }

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* tpm, Section(root, "tpm"));
  if (tpm != nullptr) CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*tpm, "tpm", {"ek_ca_dir"}));
  CUSTODY_ASSIGN_OR_RETURN(std::string ek_ca, GetString(tpm, "tpm", "ek_ca_dir", ""));
  c.ek_ca_dir = ek_ca.empty() ? "" : Absolute(c.data_dir, ek_ca);

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* log, Section(root, "log"));
  if (log != nullptr) CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*log, "log", {"level"}));
  CUSTODY_ASSIGN_OR_RETURN(std::string level, GetString(log, "log", "level", "info"));
  Result<LogLevel> parsed = ParseLogLevel(level);
  if (!parsed) return KeyError("log.level", parsed.error().message());
  c.log_level = *parsed;
  return c;
}

Result<Config> LoadConfig(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes text, ReadFile(path, 1 << 20));
  return ParseConfig(AsChars(text), path);
}

std::string DefaultConfigText(const std::string& data_dir, const std::string& listen) {
  return "# Custody custodian configuration (docs/OPERATIONS.md, \"Running a custodian\").\n"
         "data_dir = \"" +
         TomlEscape(data_dir) +
         "\"\n\n"
         "[server]\n"
         "listen = \"" +
         TomlEscape(listen) +
         "\"\n"
         "io_threads = 2\n"
         "worker_threads = 8\n"
         "max_body_bytes = 1048576\n"
         "max_connections = 20000\n"
         "header_timeout_ms = 10000\n"
         "idle_timeout_ms = 75000\n"
         "rate_per_second = 50\n"
         "rate_burst = 100\n\n"
         "[store]\n"
         "path = \"custodian.db\"\n"
         "durability = \"power-loss\"\n\n"
         "[tpm]\n"
         "# TPM makers' CA certificates (PEM or DER), to check devices' EK certificates.\n"
         "ek_ca_dir = \"tpm-ca\"\n\n"
         "[log]\n"
         "level = \"info\"\n";
}

}  // namespace custody::custodian
