#include "agent/config.h"

#include <grp.h>

#include <charconv>

#include "core/base/bytes.h"
#include "core/base/file.h"
#include "core/config/toml_reader.h"

namespace custody::agent {
namespace {

using config::GetBool;
using config::GetDurationMs;
using config::GetInt;
using config::GetIntArray;
using config::GetString;
using config::GetStringArray;
using config::KeyError;
using config::RejectUnknownKeys;
using config::Section;

Result<std::string> AbsolutePath(const toml::table* t, std::string_view section,
                                 std::string_view key, std::string fallback, bool required) {
  const std::string full =
      section.empty() ? std::string(key) : std::string(section) + "." + std::string(key);
  Result<std::string> path = GetString(t, section, key, std::move(fallback));
  if (!path) return path;
  if (path->empty()) {
    if (required) return KeyError(full, "required");
    return path;
  }
  if (path->front() != '/') return KeyError(full, "must be an absolute path, got '" + *path + "'");
  return path;
}

Result<std::optional<gid_t>> GroupId(const std::string& text) {
  if (text.empty()) return std::optional<gid_t>();
  uint32_t id = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  if (ec == std::errc() && end == text.data() + text.size()) return std::optional<gid_t>(id);
  const group* g = getgrnam(text.c_str());
  if (g == nullptr) {
    return KeyError("serve.socket_group", "no group named '" + text + "' on this system");
  }
  return std::optional<gid_t>(g->gr_gid);
}

Result<uint32_t> Mode(const std::string& text) {
  uint32_t mode = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), mode, 8);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || mode > 0777) {
    return KeyError("serve.socket_mode", "expected an octal mode such as \"0660\"");
  }
  if ((mode & 0007) != 0) {
    return KeyError("serve.socket_mode",
                    "must not give other users access (use socket_group and 0660)");
  }
  return mode;
}

Status ParseServe(const toml::table* t, AgentConfig::Serve& s) {
  if (t != nullptr) {
    CUSTODY_RETURN_IF_ERROR(
        RejectUnknownKeys(*t, "serve",
                          {"socket", "socket_mode", "socket_group", "allow_uids", "allow_gids",
                           "tokens_file", "require_token", "tcp_port", "workers", "max_queue"}));
  }
  CUSTODY_ASSIGN_OR_RETURN(s.socket, AbsolutePath(t, "serve", "socket", s.socket, true));
  CUSTODY_ASSIGN_OR_RETURN(std::string mode, GetString(t, "serve", "socket_mode", "0660"));
  CUSTODY_ASSIGN_OR_RETURN(s.socket_mode, Mode(mode));
  CUSTODY_ASSIGN_OR_RETURN(std::string group, GetString(t, "serve", "socket_group", ""));
  CUSTODY_ASSIGN_OR_RETURN(s.socket_group, GroupId(group));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<int64_t> uids,
                           GetIntArray(t, "serve", "allow_uids", 0, UINT32_MAX - 1));
  for (int64_t u : uids) s.allow_uids.push_back(static_cast<uid_t>(u));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<int64_t> gids,
                           GetIntArray(t, "serve", "allow_gids", 0, UINT32_MAX - 1));
  for (int64_t g : gids) s.allow_gids.push_back(static_cast<gid_t>(g));
  CUSTODY_ASSIGN_OR_RETURN(s.tokens_file, AbsolutePath(t, "serve", "tokens_file", "", false));
  CUSTODY_ASSIGN_OR_RETURN(s.require_token, GetBool(t, "serve", "require_token", false));
  if (s.require_token && s.tokens_file.empty()) {
    return KeyError("serve.require_token", "needs serve.tokens_file");
  }
  CUSTODY_ASSIGN_OR_RETURN(int64_t port, GetInt(t, "serve", "tcp_port", 0, 0, 65535));
  if (port != 0) s.tcp_port = static_cast<uint16_t>(port);
  if (s.tcp_port && s.tokens_file.empty()) {
    return KeyError("serve.tcp_port",
                    "a TCP listener has no peer credentials: it needs serve.tokens_file, and "
                    "only callers with a token are served on it");
  }
  CUSTODY_ASSIGN_OR_RETURN(int64_t workers, GetInt(t, "serve", "workers", 1, 1, 256));
  CUSTODY_ASSIGN_OR_RETURN(int64_t queue, GetInt(t, "serve", "max_queue", 64, 0, 100000));
  s.workers = static_cast<unsigned>(workers);
  s.max_queue = static_cast<size_t>(queue);
  return OkStatus();
}

Status ParseMetering(const toml::table* t, AgentConfig::Metering& m) {
  if (t != nullptr) {
    CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(
        *t, "metering", {"unit", "extension_threshold", "extension_amount", "report_interval"}));
  }
  CUSTODY_ASSIGN_OR_RETURN(int64_t unit, GetInt(t, "metering", "unit", 16, 1, 65536));
  CUSTODY_ASSIGN_OR_RETURN(int64_t threshold,
                           GetInt(t, "metering", "extension_threshold", 0, 0, INT64_MAX));
  CUSTODY_ASSIGN_OR_RETURN(int64_t amount,
                           GetInt(t, "metering", "extension_amount", 0, 0, INT64_MAX));
  if ((threshold == 0) != (amount == 0)) {
    return KeyError("metering.extension_amount",
                    "set both extension_threshold and extension_amount, or neither");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> interval,
                           GetDurationMs(t, "metering", "report_interval"));
  m.unit = static_cast<uint64_t>(unit);
  m.extension_threshold = static_cast<uint64_t>(threshold);
  m.extension_amount = static_cast<uint64_t>(amount);
  m.report_interval_ms = interval.value_or(m.report_interval_ms);
  return OkStatus();
}

Status ParseHardening(const toml::table* t, AgentConfig& c) {
  if (t != nullptr) {
    CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*t, "hardening", {"memory_lock", "seccomp"}));
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string lock,
                           GetString(t, "hardening", "memory_lock", "best-effort"));
  if (lock == "required") {
    c.memory_lock = MemoryLock::kRequired;
  } else if (lock == "best-effort") {
    c.memory_lock = MemoryLock::kBestEffort;
  } else if (lock == "off") {
    c.memory_lock = MemoryLock::kOff;
  } else {
    return KeyError("hardening.memory_lock", "expected \"required\", \"best-effort\" or \"off\"");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string seccomp, GetString(t, "hardening", "seccomp", "errno"));
  if (seccomp == "errno") {
    c.seccomp = SeccompMode::kErrno;
  } else if (seccomp == "kill") {
    c.seccomp = SeccompMode::kKill;
  } else if (seccomp == "off") {
    c.seccomp = SeccompMode::kOff;
  } else {
    return KeyError("hardening.seccomp", "expected \"errno\", \"kill\" or \"off\"");
  }
  return OkStatus();
}

}  // namespace

Status ParseHttpsUrl(std::string_view url, std::string_view key, std::string& host,
                     uint16_t& port) {
  constexpr std::string_view kScheme = "https://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return KeyError(key, "expected https://HOST[:PORT], got '" + std::string(url) + "'");
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) {
    return KeyError(key, "expected https://HOST[:PORT] without a path");
  }
  std::string_view port_text;
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) return KeyError(key, "unterminated [IPv6 address]");
    host = std::string(rest.substr(1, close - 1));
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return KeyError(key, "expected :PORT after ]");
      port_text = rest.substr(close + 2);
    }
  } else {
    const size_t colon = rest.rfind(':');
    host = std::string(rest.substr(0, colon));
    if (colon != std::string_view::npos) port_text = rest.substr(colon + 1);
  }
  if (host.empty()) return KeyError(key, "no host in '" + std::string(url) + "'");
  port = 443;
  if (!port_text.empty()) {
    uint32_t p = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || p == 0 || p > 65535) {
      return KeyError(key, "port must be 1..65535");
    }
    port = static_cast<uint16_t>(p);
  }
  return OkStatus();
}

Status CheckCustodianUrl(const AgentConfig& config, std::string_view url) {
  std::string host;
  uint16_t port = 0;
  CUSTODY_RETURN_IF_ERROR(ParseHttpsUrl(url, "--custodian", host, port));
  if (EqualsIgnoreCase(host, config.custodian.host) && port == config.custodian.port) {
    return OkStatus();
  }
  return InvalidArgument(
      "--custodian " + std::string(url) +
      " is not the custodian the configuration names (custodian.url = " + config.custodian.url +
      "): set custodian.url to the URL the vendor gave you, or drop --custodian");
}

Result<AgentConfig> ParseAgentConfig(std::string_view text, std::string_view source) {
  CUSTODY_ASSIGN_OR_RETURN(toml::table root, config::Parse(text, source));
  CUSTODY_RETURN_IF_ERROR(
      RejectUnknownKeys(root, "",
                        {"state_dir", "models_dir", "vendor_public_key", "tcti", "custodian",
                         "serve", "metering", "lease", "engine", "hardening", "log"}));
  AgentConfig c;
  CUSTODY_ASSIGN_OR_RETURN(c.state_dir, AbsolutePath(&root, "", "state_dir", "", true));
  CUSTODY_ASSIGN_OR_RETURN(c.models_dir, AbsolutePath(&root, "", "models_dir", "", true));
  CUSTODY_ASSIGN_OR_RETURN(c.vendor_public_key,
                           AbsolutePath(&root, "", "vendor_public_key", "", true));
  CUSTODY_ASSIGN_OR_RETURN(c.tcti, GetString(&root, "", "tcti", c.tcti));

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* custodian, Section(root, "custodian"));
  if (custodian == nullptr) return KeyError("custodian", "required: the [custodian] section");
  CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*custodian, "custodian", {"url", "ca", "server_name"}));
  CUSTODY_ASSIGN_OR_RETURN(c.custodian.url, GetString(custodian, "custodian", "url", ""));
  if (c.custodian.url.empty()) return KeyError("custodian.url", "required");
  CUSTODY_RETURN_IF_ERROR(
      ParseHttpsUrl(c.custodian.url, "custodian.url", c.custodian.host, c.custodian.port));
  CUSTODY_ASSIGN_OR_RETURN(c.custodian.ca_file,
                           AbsolutePath(custodian, "custodian", "ca", "", false));
  CUSTODY_ASSIGN_OR_RETURN(c.custodian.server_name,
                           GetString(custodian, "custodian", "server_name", ""));

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* serve, Section(root, "serve"));
  CUSTODY_RETURN_IF_ERROR(ParseServe(serve, c.serve));
  CUSTODY_ASSIGN_OR_RETURN(const toml::table* metering, Section(root, "metering"));
  CUSTODY_RETURN_IF_ERROR(ParseMetering(metering, c.metering));

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* lease, Section(root, "lease"));
  if (lease != nullptr)
    CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*lease, "lease", {"renew_interval"}));
  CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> renew,
                           GetDurationMs(lease, "lease", "renew_interval"));
  c.renew_interval_ms = renew.value_or(c.renew_interval_ms);

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* engine, Section(root, "engine"));
  if (engine != nullptr) {
    CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*engine, "engine", {"threads", "plugin_dirs"}));
  }
  CUSTODY_ASSIGN_OR_RETURN(int64_t threads, GetInt(engine, "engine", "threads", 0, 0, 256));
  c.engine.threads = static_cast<int>(threads);
  CUSTODY_ASSIGN_OR_RETURN(c.engine.plugin_dirs, GetStringArray(engine, "engine", "plugin_dirs"));
  for (const std::string& d : c.engine.plugin_dirs) {
    if (d.empty() || d[0] != '/') {
      return KeyError("engine.plugin_dirs", "every directory must be an absolute path");
    }
  }

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* hardening, Section(root, "hardening"));
  CUSTODY_RETURN_IF_ERROR(ParseHardening(hardening, c));

  CUSTODY_ASSIGN_OR_RETURN(const toml::table* log, Section(root, "log"));
  if (log != nullptr) CUSTODY_RETURN_IF_ERROR(RejectUnknownKeys(*log, "log", {"level"}));
  CUSTODY_ASSIGN_OR_RETURN(std::string level, GetString(log, "log", "level", "info"));
  Result<LogLevel> parsed = ParseLogLevel(level);
  if (!parsed) return KeyError("log.level", parsed.error().message());
  c.log_level = *parsed;
  return c;
}

Result<AgentConfig> LoadAgentConfig(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes text, ReadFile(path, 1 << 20));
  return ParseAgentConfig(AsChars(text), path);
}

}  // namespace custody::agent
