#include "custodian/config.h"

#include <toml++/toml.h>

#include <charconv>
#include <cstdio>
#include <set>

#include "core/base/file.h"
#include "core/protocol/json.h"

namespace custody::custodian {
namespace {

Status KeyError(std::string_view key, std::string_view what) {
  return InvalidArgument("config key '" + std::string(key) + "': " + std::string(what));
}

Status RejectUnknownKeys(const toml::table& table, std::string_view section,
                         std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : table) {
    const std::string k(key.str());
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      const std::string full = section.empty() ? k : std::string(section) + "." + k;
      return InvalidArgument("config key '" + full + "' is not known (misspelt?)");
    }
  }
  return OkStatus();
}

Result<const toml::table*> Section(const toml::table& root, std::string_view name) {
  const toml::node* node = root.get(name);
  if (node == nullptr) return static_cast<const toml::table*>(nullptr);
  if (!node->is_table()) return KeyError(name, "expected a section ([" + std::string(name) + "])");
  return node->as_table();
}

Result<std::string> GetString(const toml::table* t, std::string_view section, std::string_view key,
                              std::string fallback) {
  if (t == nullptr) return fallback;
  const toml::node* n = t->get(key);
  const std::string full = std::string(section) + "." + std::string(key);
  if (n == nullptr) return fallback;
  if (!n->is_string()) return KeyError(full, "expected a string");
  return n->as_string()->get();
}

Result<int64_t> GetInt(const toml::table* t, std::string_view section, std::string_view key,
                       int64_t fallback, int64_t min, int64_t max) {
  if (t == nullptr) return fallback;
  const toml::node* n = t->get(key);
  const std::string full = std::string(section) + "." + std::string(key);
  if (n == nullptr) return fallback;
  if (!n->is_integer()) return KeyError(full, "expected an integer");
  const int64_t v = n->as_integer()->get();
  if (v < min || v > max) {
    return KeyError(full, "must be from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return v;
}

Result<double> GetNumber(const toml::table* t, std::string_view section, std::string_view key,
                         double fallback, double min, double max) {
  if (t == nullptr) return fallback;
  const toml::node* n = t->get(key);
  const std::string full = std::string(section) + "." + std::string(key);
  if (n == nullptr) return fallback;
  double v = 0;
  if (n->is_integer()) {
    v = static_cast<double>(n->as_integer()->get());
  } else if (n->is_floating_point()) {
    v = n->as_floating_point()->get();
  } else {
    return KeyError(full, "expected a number");
  }
  if (!(v >= min && v <= max)) {
    return KeyError(full, "must be from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return v;
}

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

// toml++ 3.3 reaches __builtin_unreachable in its non-ASCII whitespace and bare-key tables for
// many code points (e.g. U+00E9 or U+FEDF where whitespace may follow a value), and where it looks
// them up depends on how it recovers from malformed text, so no scan of ours can tell the safe
// places apart. The configuration is therefore ASCII only (every key and value Custody defines
// is). Returns the 1-based line of the first non-ASCII byte, or 0.
size_t FirstNonAsciiLine(std::string_view text) {
  size_t line = 1;
  for (char c : text) {
    if (c == '\n') ++line;
    if (static_cast<unsigned char>(c) >= 0x80) return line;
  }
  return 0;
}

// `s` as the inside of a TOML basic string in ASCII: quotes, backslashes and control characters
// escaped, and non-ASCII code points as \UXXXXXXXX (ParseConfig reads ASCII text only). Bytes
// that are not UTF-8 are kept, and ParseConfig then refuses the file, naming the line.
std::string TomlEscape(std::string_view s) {
  std::string out;
  char buf[16];
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof(buf), "\\u%04X", c);
      out += buf;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
      if (n == 0 || i + n > s.size() || !protocol::IsCleanText(s.substr(i, n))) {
        out += static_cast<char>(c);
        continue;
      }
      uint32_t cp = c & (0xff >> (n + 1));
      for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
      std::snprintf(buf, sizeof(buf), "\\U%08X", static_cast<unsigned>(cp));
      out += buf;
      i += n - 1;
    }
  }
  return out;
}

}  // namespace

Result<Config> ParseConfig(std::string_view text, std::string_view source) {
  if (const size_t line = FirstNonAsciiLine(text); line != 0) {
    return InvalidArgument(std::string(source) + ":" + std::to_string(line) +
                           ": non-ASCII character (the configuration must be ASCII text)");
  }
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return InvalidArgument(std::string(source) + ":" + std::to_string(where.line) + ":" +
                           std::to_string(where.column) + ": " + std::string(e.description()));
  }
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
