// custody admin …: every capability of the custodian's admin API (docs/api/openapi.json) from the
// command line, and the offline check of an exported audit log.
//
// Security: HTTPS only; the server certificate must chain to the custodian's CA given with --ca
// (there is no switch to skip that check). The bearer token comes from --token-file, --token or
// CUSTODY_TOKEN and is never printed; a token or enrollment token is printed only by the command
// that creates it, once. Text that comes from the server (names, reasons filed by devices) has
// control characters replaced before it reaches the terminal.
//
// Exit codes follow README.md ("Exit codes"): the custodian's refusals map by HTTP status —
// 400 → 2, 401/403 → 7, 404 → 3, 409 → 4, 429/503/504 and transport failures → 8.
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "core/base/file.h"
#include "core/base/secret_buffer.h"
#include "core/format/sealed.h"
#include "core/protocol/audit.h"
#include "core/protocol/json.h"
#include "core/tpm/tpm_types.h"
#include "http/client.h"

namespace custody::cli {
namespace {

using nlohmann::json;

constexpr size_t kMaxTokenFileBytes = 4096;
constexpr size_t kMaxCaFileBytes = 1 << 20;
constexpr uint64_t kAuditPageEntries = 10000;  // the server's largest page

// ----- connection ------------------------------------------------------------------------------

struct ConnectionArgs {
  std::string url;  // --url or CUSTODY_URL
  std::string token;
  std::string token_file;
  std::string ca;  // --ca or CUSTODY_CA
  bool json = false;
};

struct Endpoint {
  std::string host;
  uint16_t port = 443;
};

// "https://HOST[:PORT][/]", HOST a DNS name, an IPv4 literal or a bracketed IPv6 literal.
Result<Endpoint> ParseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "https://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("custodian URL '" + std::string(url) +
                           "' must start with https:// (the admin API is served over TLS only)");
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find_first_of("/?#@ ") != std::string_view::npos) {
    return InvalidArgument("custodian URL '" + std::string(url) +
                           "' must be https://HOST:PORT (no path, query or user)");
  }
  Endpoint e;
  std::string_view port_text;
  bool has_port = false;
  if (!rest.empty() && rest.front() == '[') {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      return InvalidArgument("custodian URL '" + std::string(url) + "': unclosed '['");
    }
    e.host = std::string(rest.substr(1, close - 1));
    std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return InvalidArgument("custodian URL '" + std::string(url) + "': expected :PORT after ]");
      }
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = rest.rfind(':');
    e.host = std::string(rest.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = rest.substr(colon + 1);
      has_port = true;
    }
  }
  if (e.host.empty())
    return InvalidArgument("custodian URL '" + std::string(url) + "' has no host");
  if (has_port) {
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
        port == 0 || port > 65535) {
      return InvalidArgument("custodian URL '" + std::string(url) + "': port must be 1..65535");
    }
    e.port = static_cast<uint16_t>(port);
  }
  return e;
}

std::string TrimRight(std::string s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) {
    s.pop_back();
  }
  return s;
}

// A token file is a credential: refuse one that other users can read, as ssh does with keys.
Result<std::string> ReadTokenFile(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "token file " + path);
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return FailedPrecondition("token file " + path + " is accessible by other users (mode " + mode +
                              "); run: chmod 600 " + path);
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer bytes, ReadSecretFile(path, kMaxTokenFileBytes));
  std::string token = TrimRight(std::string(AsChars(bytes.span())));
  if (token.empty()) return InvalidArgument("token file " + path + " is empty");
  return token;
}

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// Control characters from the server (a device files the reason of an extension request) must
// not reach the terminal, where they could rewrite what the operator sees.
std::string Printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7F ? '?' : c);
  }
  return out;
}

// RFC 3986 unreserved characters pass; everything else in a path segment is %XX.
std::string PathSegment(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

StatusCode CodeForHttpStatus(int status) {
  switch (status) {
    case 400:
    case 413:
    case 414:
    case 431:
      return StatusCode::kInvalidArgument;
    case 401:
      return StatusCode::kUnauthenticated;
    case 403:
      return StatusCode::kPermissionDenied;
    case 404:
      return StatusCode::kNotFound;
    case 409:
      return StatusCode::kAlreadyExists;
    case 429:
    case 502:
    case 503:
    case 504:
      return StatusCode::kUnavailable;
    case 501:
      return StatusCode::kUnimplemented;
    default:
      return StatusCode::kInternal;
  }
}

// "custodian answered HTTP 403 (permission_denied): this route needs the admin role; …"
Status ServerError(const http::ClientResponse& r) {
  std::string code_name;
  std::string message;
  Result<json> body = r.Json();
  if (body && body->contains("error") && (*body)["error"].is_object()) {
    const json& e = (*body)["error"];
    if (e.contains("code") && e["code"].is_string()) code_name = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string()) {
      message = e["message"].get<std::string>();
    }
  }
  if (message.empty()) message = r.body.substr(0, 200);
  std::string text = "custodian answered HTTP " + std::to_string(r.status);
  if (!code_name.empty()) text += " (" + Printable(code_name) + ")";
  text += ": " + Printable(message);
  return Status(CodeForHttpStatus(r.status), text);
}

class AdminClient {
 public:
  static Result<std::unique_ptr<AdminClient>> Connect(const ConnectionArgs& a) {
    std::string url = a.url.empty() ? Getenv("CUSTODY_URL") : a.url;
    if (url.empty()) {
      return InvalidArgument("no custodian given: pass --url https://HOST:PORT or set CUSTODY_URL");
    }
    CUSTODY_ASSIGN_OR_RETURN(Endpoint endpoint, ParseUrl(url));
    std::string ca = a.ca.empty() ? Getenv("CUSTODY_CA") : a.ca;
    if (ca.empty()) {
      return InvalidArgument(
          "no CA certificate given: pass --ca FILE or set CUSTODY_CA (the custodian's "
          "DATA/keys/ca.pem, written by custodian init)");
    }
    CUSTODY_ASSIGN_OR_RETURN(Bytes ca_pem, ReadFile(ca, kMaxCaFileBytes));
    if (!a.token.empty() && !a.token_file.empty()) {
      return InvalidArgument("give either --token or --token-file, not both");
    }
    std::string token;
    if (!a.token_file.empty()) {
      CUSTODY_ASSIGN_OR_RETURN(token, ReadTokenFile(a.token_file));
    } else if (!a.token.empty()) {
      token = a.token;
    } else {
      token = Getenv("CUSTODY_TOKEN");
    }
    if (token.empty()) {
      return InvalidArgument(
          "no API token given: pass --token-file FILE or set CUSTODY_TOKEN (custodian init "
          "printed the first admin token; custody admin tokens create makes more)");
    }
    http::ClientOptions o;
    o.host = endpoint.host;
    o.port = endpoint.port;
    o.ca_pem = std::string(AsChars(ca_pem));
    o.bearer_token = std::move(token);
    o.max_response_body_bytes = 256 << 20;
    Result<std::unique_ptr<http::Client>> client = http::Client::Create(std::move(o));
    if (!client) {
      return Status(client.error().code(), "cannot set up TLS to " + url + " with the CA in " + ca +
                                               ": " + client.error().message());
    }
    return std::unique_ptr<AdminClient>(new AdminClient(std::move(*client)));
  }

  // A JSON answer; any status but 2xx is a Status naming the HTTP status and the server's message.
  Result<json> Call(const std::string& method, const std::string& target,
                    const std::optional<json>& body = std::nullopt) {
    http::ClientRequest req;
    req.method = method;
    req.target = target;
    if (body) req.body = body->dump();
    Result<http::ClientResponse> r = Send(req);
    SecureWipe(req.body.data(), req.body.size());  // it may carry a model key
    if (!r) return r.error();
    return ParseAnswer(*r);
  }

  Result<http::ClientResponse> Send(const http::ClientRequest& req) {
    CUSTODY_ASSIGN_OR_RETURN(http::ClientResponse r, client_->Send(req));
    if (r.status / 100 != 2) {
      refused_ = true;
      return ServerError(r);
    }
    return r;
  }

  // Whether the last failure was an answer of the custodian (not a local or transport error).
  bool refused() const { return refused_; }

  static Result<json> ParseAnswer(const http::ClientResponse& r) {
    try {
      return json::parse(r.body);
    } catch (const json::exception& e) {
      return Internal(std::string("the custodian's answer is not JSON: ") + e.what());
    }
  }

 private:
  explicit AdminClient(std::unique_ptr<http::Client> client) : client_(std::move(client)) {}
  std::unique_ptr<http::Client> client_;
  bool refused_ = false;
};

// ----- output ---------------------------------------------------------------------------------

// A field of an answer as text: "-" when absent or null.
std::string Field(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return "-";
  const json& v = j[key];
  if (v.is_string()) return Printable(v.get<std::string>());
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return Printable(v.dump());
}

class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  void Row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  void Print(const char* empty_note) const {
    if (rows_.empty()) {
      std::printf("%s\n", empty_note);
      return;
    }
    std::vector<size_t> width(headers_.size());
    for (size_t i = 0; i < headers_.size(); ++i) width[i] = headers_[i].size();
    for (const auto& row : rows_) {
      for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
        width[i] = std::max(width[i], row[i].size());
      }
    }
    auto line = [&](const std::vector<std::string>& cells) {
      std::string out;
      for (size_t i = 0; i < headers_.size(); ++i) {
        const std::string cell = i < cells.size() ? cells[i] : "";
        out += cell;
        if (i + 1 < headers_.size()) out.append(width[i] - cell.size() + 2, ' ');
      }
      std::printf("%s\n", TrimRight(out).c_str());
    };
    line(headers_);
    for (const auto& row : rows_) line(row);
  }

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

Status NeedArray(const json& j, const char* what) {
  if (!j.is_array()) return Internal(std::string("unexpected answer for ") + what + ": not a list");
  return OkStatus();
}

void PrintJson(const json& j) { std::printf("%s\n", j.dump(2).c_str()); }

// Writes a newly created secret to `out` (mode 0600) or stdout; either way it is shown once.
Status EmitSecret(const std::string& secret, const std::string& out, const std::string& what) {
  if (out.empty()) {
    std::printf("%s (shown once; store it safely):\n%s\n", what.c_str(), secret.c_str());
    return OkStatus();
  }
  std::string text = secret + "\n";
  Status s = WriteFileAtomic(out, AsBytes(text), WriteOptions{0600, Overwrite::kRefuse});
  SecureWipe(text.data(), text.size());
  CUSTODY_RETURN_IF_ERROR(s);
  std::printf("%s written to %s (mode 0600)\n", what.c_str(), out.c_str());
  return OkStatus();
}

// "90" (seconds), "90s", "30m", "24h", "7d".
Result<uint64_t> ParseDuration(const std::string& text, const char* option) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  const std::string unit(end, text.data() + text.size());
  uint64_t scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "m") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else if (unit == "d") {
    scale = 86400;
  }
  if (text.empty() || ec != std::errc() || end == text.data() || scale == 0 ||
      n > UINT64_MAX / scale) {
    return InvalidArgument(std::string(option) +
                           " expects a duration such as 90s, 30m, 24h or 7d; got '" + text + "'");
  }
  return n * scale;
}

// ----- the command runner ----------------------------------------------------------------------

// Every admin callback ends here: a Status becomes the documented exit code. The custodian's
// 401 and 403 are "refused" (7); local failures keep the codes of the other commands (a vendor
// key mismatch is 5, an unreadable file 3).
int AdminExitCode(const Status& s, bool from_custodian) {
  if (s.ok()) return kExitOk;
  std::fprintf(stderr, "custody: error: %s\n", s.message().c_str());
  if (from_custodian &&
      (s.code() == StatusCode::kUnauthenticated || s.code() == StatusCode::kPermissionDenied)) {
    return kExitRefused;
  }
  return ExitCodeFor(s.code());
}

struct Context {
  ConnectionArgs conn;
  int* exit_code = nullptr;

  Result<std::unique_ptr<AdminClient>> Client() const { return AdminClient::Connect(conn); }
};

// Registers `cmd`'s callback: connect, run `fn(client)`, map the result.
template <typename Fn>
void OnRun(CLI::App* cmd, const std::shared_ptr<Context>& ctx, Fn fn) {
  cmd->callback([ctx, fn] {
    std::unique_ptr<AdminClient> client;
    Status s = [&]() -> Status {
      CUSTODY_ASSIGN_OR_RETURN(client, ctx->Client());
      try {
        return fn(*client);
      } catch (const json::exception& e) {
        return Internal(std::string("unexpected answer from the custodian: ") + e.what());
      }
    }();
    *ctx->exit_code = AdminExitCode(s, client != nullptr && client->refused());
  });
}

// ----- models ----------------------------------------------------------------------------------

struct RegisterArgs {
  std::string sealed;
  std::string key;
  std::string vendor_pub;
};

Result<std::string> FileSha256(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return ErrnoStatus(errno, "open " + path);
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Hasher hasher, crypto::Sha256Hasher::Create());
  std::vector<uint8_t> buf(1 << 20);
  size_t n = 0;
  Status s = OkStatus();
  while (s.ok() && (n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    s = hasher.Update(ByteSpan(buf.data(), n));
  }
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  CUSTODY_RETURN_IF_ERROR(s);
  if (read_error) return Unavailable("read error on " + path);
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest digest, hasher.Finish());
  return HexEncode(digest);
}

Status RegisterModel(AdminClient& c, const RegisterArgs& a, bool as_json) {
  std::optional<crypto::Ed25519PublicKey> trusted;
  if (!a.vendor_pub.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(trusted, LoadVendorPublicKey(a.vendor_pub));
  }
  CUSTODY_ASSIGN_OR_RETURN(format::SealedHeader h,
                           format::ReadHeaderFromFile(a.sealed, trusted ? &*trusted : nullptr));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, format::ReadDekFile(a.key));
  CUSTODY_ASSIGN_OR_RETURN(std::string sha, FileSha256(a.sealed));
  json body{{"model_id", h.info.model_id},
            {"name", h.info.name},
            {"version", h.info.version},
            {"sealed_sha256", sha}};
  std::string dek_hex = HexEncode(dek.span());
  body["dek"] = dek_hex;
  SecureWipe(dek_hex.data(), dek_hex.size());
  Result<json> out = c.Call("POST", "/v1/admin/models", body);
  std::string& stored = body["dek"].get_ref<std::string&>();
  SecureWipe(stored.data(), stored.size());
  CUSTODY_RETURN_IF_ERROR(out.status());
  if (as_json) {
    PrintJson(*out);
    return OkStatus();
  }
  std::printf("registered model %s %s\n", Field(*out, "name").c_str(),
              Field(*out, "version").c_str());
  std::printf("model id:      %s\n", Field(*out, "model_id").c_str());
  std::printf("sealed sha256: %s\n", Field(*out, "sealed_sha256").c_str());
  return OkStatus();
}

Status ListModels(AdminClient& c, bool as_json) {
  CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/models"));
  if (as_json) {
    PrintJson(out);
    return OkStatus();
  }
  CUSTODY_RETURN_IF_ERROR(NeedArray(out, "models"));
  Table t({"MODEL ID", "NAME", "VERSION", "CREATED", "RETIRED"});
  for (const json& m : out) {
    t.Row({Field(m, "model_id"), Field(m, "name"), Field(m, "version"), Field(m, "created"),
           Field(m, "retired")});
  }
  t.Print("no models registered");
  return OkStatus();
}

// ----- groups ----------------------------------------------------------------------------------

struct GroupArgs {
  std::string name;
  std::string pcrs = "0,2,4,7";
  bool allow_tofu = false;
  bool no_ek_certificate = false;
};

struct GoldenSetArgs {
  std::string group;
  std::string name;
  std::vector<std::string> pcr;  // INDEX=HEX
  std::string from;              // JSON file
};

// The PCR values of a golden set: a JSON file ({"0": "hex", …}, or the output of
// `custody tpm info --json`, whose "pcrs_sha256" holds them), overridden by --pcr INDEX=HEX.
Result<json> GoldenPcrs(const GoldenSetArgs& a) {
  json pcrs = json::object();
  if (!a.from.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes text, ReadFile(a.from, 1 << 20));
    CUSTODY_ASSIGN_OR_RETURN(json j, protocol::ParseJsonObject(AsChars(text), 1 << 20, a.from));
    if (j.contains("pcrs_sha256") && j["pcrs_sha256"].is_object()) {
      pcrs = j["pcrs_sha256"];
    } else if (j.contains("pcrs") && j["pcrs"].is_object()) {
      pcrs = j["pcrs"];
    } else {
      pcrs = j;
    }
  }
  for (const std::string& kv : a.pcr) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument("--pcr expects INDEX=HEX (64 hex digits), got '" + kv + "'");
    }
    pcrs[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (pcrs.empty()) return InvalidArgument("no PCR values: give --from FILE or --pcr INDEX=HEX");
  for (const auto& [index, value] : pcrs.items()) {
    unsigned n = 0;
    auto [end, ec] = std::from_chars(index.data(), index.data() + index.size(), n);
    if (ec != std::errc() || end != index.data() + index.size() || n >= tpm::kPcrCount) {
      return InvalidArgument("'" + index + "' is not a PCR index (0..23)");
    }
    if (!value.is_string() || value.get<std::string>().size() != 64 ||
        !HexDecode(value.get<std::string>()).has_value()) {
      return InvalidArgument("PCR " + index + ": expected a SHA-256 value (64 hex digits)");
    }
  }
  return pcrs;
}

void PrintGroup(const json& g) {
  std::string pcrs = "-";
  if (g.contains("pcrs") && g["pcrs"].is_array()) {
    pcrs.clear();
    for (const json& p : g["pcrs"]) pcrs += (pcrs.empty() ? "" : ",") + Printable(p.dump());
  }
  std::printf("group:                  %s\n", Field(g, "name").c_str());
  std::printf("quoted PCRs:            %s\n", pcrs.c_str());
  std::printf("trust on first use:     %s\n", Field(g, "allow_tofu").c_str());
  std::printf("require EK certificate: %s\n", Field(g, "require_ek_certificate").c_str());
}

Status ListGroups(AdminClient& c, bool as_json) {
  CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/groups"));
  if (as_json) {
    PrintJson(out);
    return OkStatus();
  }
  CUSTODY_RETURN_IF_ERROR(NeedArray(out, "groups"));
  Table t({"GROUP", "PCRS", "TOFU", "EK CERT", "GOLDEN SETS", "CREATED"});
  for (const json& g : out) {
    std::string pcrs, sets;
    if (g.contains("pcrs") && g["pcrs"].is_array()) {
      for (const json& p : g["pcrs"]) pcrs += (pcrs.empty() ? "" : ",") + Printable(p.dump());
    }
    if (g.contains("golden_sets") && g["golden_sets"].is_array()) {
      for (const json& s : g["golden_sets"]) sets += (sets.empty() ? "" : ",") + Field(s, "name");
    }
    t.Row({Field(g, "name"), pcrs.empty() ? "-" : pcrs, Field(g, "allow_tofu"),
           Field(g, "require_ek_certificate"), sets.empty() ? "(none)" : sets,
           Field(g, "created")});
  }
  t.Print("no groups");
  return OkStatus();
}

Status ListGoldenSets(AdminClient& c, const std::string& group, bool as_json) {
  CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/groups"));
  CUSTODY_RETURN_IF_ERROR(NeedArray(out, "groups"));
  for (const json& g : out) {
    if (!g.is_object() || Field(g, "name") != group) continue;
    const json sets = g.contains("golden_sets") ? g["golden_sets"] : json::array();
    if (as_json) {
      PrintJson(sets);
      return OkStatus();
    }
    Table t({"SET", "PCR", "SHA-256"});
    if (sets.is_array()) {
      for (const json& s : sets) {
        if (!s.contains("pcrs") || !s["pcrs"].is_object()) continue;
        for (const auto& [index, value] : s["pcrs"].items()) {
          t.Row({Field(s, "name"), Printable(index),
                 value.is_string() ? Printable(value.get<std::string>()) : "-"});
        }
      }
    }
    t.Print("no golden sets: devices of this group get no lease until one is added");
    return OkStatus();
  }
  return NotFound("group '" + group + "' does not exist");
}

// ----- licences, devices, extensions -----------------------------------------------------------

struct LicenceArgs {
  std::string model;
  std::string device;
  std::string group;
  uint64_t budget = 0;
  std::string not_after;
  std::string offline_grace;
  bool manual = false;
  std::optional<uint64_t> auto_approve;
  std::string period;
};

Result<json> LicenceBody(const LicenceArgs& a) {
  if (a.device.empty() == a.group.empty()) {
    return InvalidArgument("a licence is for exactly one of --device ID or --group NAME");
  }
  CUSTODY_ASSIGN_OR_RETURN(std::string not_after, format::NormaliseTimestamp(a.not_after));
  CUSTODY_ASSIGN_OR_RETURN(uint64_t grace, ParseDuration(a.offline_grace, "--offline-grace"));
  json body{{"model_id", a.model},
            {"budget", a.budget},
            {"not_after", not_after},
            {"offline_grace_seconds", grace}};
  if (!a.device.empty()) body["device_id"] = a.device;
  if (!a.group.empty()) body["group"] = a.group;
  if (a.auto_approve) {
    if (a.manual) return InvalidArgument("--manual and --auto-approve exclude each other");
    if (a.period.empty()) {
      return InvalidArgument("--auto-approve N needs --period (e.g. 30d): N per period");
    }
    CUSTODY_ASSIGN_OR_RETURN(uint64_t period, ParseDuration(a.period, "--period"));
    body["extension"] = {{"auto_approve_up_to", *a.auto_approve}, {"period_seconds", period}};
  } else {
    if (!a.period.empty()) return InvalidArgument("--period goes with --auto-approve N");
    body["extension"] = {{"manual", true}};
  }
  return body;
}

// The largest whole unit: 259200 → "3d", 5400 → "90m".
std::string HumanSeconds(uint64_t s) {
  if (s != 0 && s % 86400 == 0) return std::to_string(s / 86400) + "d";
  if (s != 0 && s % 3600 == 0) return std::to_string(s / 3600) + "h";
  if (s != 0 && s % 60 == 0) return std::to_string(s / 60) + "m";
  return std::to_string(s) + "s";
}

std::string ExtensionPolicyText(const json& l) {
  if (!l.contains("extension") || !l["extension"].is_object()) return "-";
  const json& e = l["extension"];
  if (!e.contains("manual") || !e["manual"].is_boolean() || e["manual"].get<bool>()) {
    return "manual";
  }
  std::string period = Field(e, "period_seconds");
  if (e.contains("period_seconds") && e["period_seconds"].is_number_unsigned()) {
    period = HumanSeconds(e["period_seconds"].get<uint64_t>());
  }
  return "auto " + Field(e, "auto_approve_up_to") + " per " + period;
}

void LicenceTable(const json& list, bool with_remaining) {
  std::vector<std::string> headers{"LICENCE",   "MODEL", "FOR",        "BUDGET",
                                   "NOT AFTER", "GRACE", "EXTENSIONS", "REVOKED"};
  if (with_remaining) headers.insert(headers.begin() + 4, "REMAINING");
  Table t(headers);
  for (const json& l : list) {
    const std::string who =
        l.contains("device_id") ? "device " + Field(l, "device_id") : "group " + Field(l, "group");
    std::string grace = "-";
    if (l.contains("offline_grace_ms") && l["offline_grace_ms"].is_number_unsigned()) {
      grace = HumanSeconds(l["offline_grace_ms"].get<uint64_t>() / 1000);
    }
    std::vector<std::string> row{Field(l, "licence_id"), Field(l, "model_id"),  who,
                                 Field(l, "budget"),     Field(l, "not_after"), grace,
                                 ExtensionPolicyText(l), Field(l, "revoked")};
    if (with_remaining) row.insert(row.begin() + 4, Field(l, "remaining"));
    t.Row(row);
  }
  t.Print("no licences");
}

Status ShowDevice(AdminClient& c, const std::string& id, bool as_json) {
  CUSTODY_ASSIGN_OR_RETURN(json d, c.Call("GET", "/v1/admin/devices/" + PathSegment(id)));
  if (as_json) {
    PrintJson(d);
    return OkStatus();
  }
  std::printf("device:           %s\n", Field(d, "device_id").c_str());
  std::printf("group:            %s\n", Field(d, "group").c_str());
  std::printf("enrolled:         %s\n", Field(d, "enrolled").c_str());
  std::printf("last seen:        %s\n", Field(d, "last_seen").c_str());
  std::printf("TPM counter:      %s (NV index %s)\n", Field(d, "last_counter").c_str(),
              Field(d, "counter_index").c_str());
  std::printf("lease sequence:   %s\n", Field(d, "lease_sequence").c_str());
  std::printf("revocation epoch: %s\n", Field(d, "revocation_epoch").c_str());
  if (Field(d, "revoked") != "-") {
    std::printf("REVOKED:          %s (%s)\n", Field(d, "revoked").c_str(),
                Field(d, "revoked_reason").c_str());
  }
  std::printf("EK name:          %s\n", Field(d, "ek_name").c_str());
  std::printf("\nlicences:\n");
  LicenceTable(d.contains("licences") && d["licences"].is_array() ? d["licences"] : json::array(),
               /*with_remaining=*/true);
  std::printf("\nusage:\n");
  Table u({"MODEL", "CLIENT", "INFERENCES"});
  if (d.contains("usage") && d["usage"].is_array()) {
    for (const json& x : d["usage"]) {
      u.Row({Field(x, "model_id"), Field(x, "client"), Field(x, "count")});
    }
  }
  u.Print("no usage reported");
  return OkStatus();
}

void PrintExtension(const json& e) {
  std::printf("extension request %s: %s\n", Field(e, "request_id").c_str(),
              Field(e, "status").c_str());
  std::printf("device %s, licence %s, requested %s, granted %s\n", Field(e, "device_id").c_str(),
              Field(e, "licence_id").c_str(), Field(e, "requested").c_str(),
              Field(e, "granted").c_str());
}

// ----- audit -----------------------------------------------------------------------------------

struct AuditExportArgs {
  std::string out;
  uint64_t after = 0;
  bool force = false;
};

Status ExportAudit(AdminClient& c, const AuditExportArgs& a) {
  std::string all;
  uint64_t after = a.after, count = 0, first = 0;
  for (;;) {
    http::ClientRequest req;
    req.method = "GET";
    req.target = "/v1/admin/audit?after=" + std::to_string(after) +
                 "&limit=" + std::to_string(kAuditPageEntries);
    CUSTODY_ASSIGN_OR_RETURN(http::ClientResponse r, c.Send(req));
    uint64_t page = 0;
    size_t pos = 0;
    while (pos < r.body.size()) {
      size_t nl = r.body.find('\n', pos);
      if (nl == std::string::npos) nl = r.body.size();
      const std::string_view line(r.body.data() + pos, nl - pos);
      pos = nl + 1;
      if (line.empty()) continue;
      Result<protocol::AuditEntry> e = protocol::AuditEntryFromJsonLine(line);
      if (!e) return DataLoss("the custodian sent a malformed audit line: " + e.error().message());
      if (e->seq <= after) {
        return DataLoss("the custodian sent audit entry " + std::to_string(e->seq) +
                        " out of order (after " + std::to_string(after) + ")");
      }
      if (count == 0) first = e->seq;
      after = e->seq;
      all.append(line);
      all.push_back('\n');
      ++page;
      ++count;
    }
    if (page < kAuditPageEntries) break;
  }
  const bool to_file = !a.out.empty() && a.out != "-";
  if (!to_file) {
    std::fwrite(all.data(), 1, all.size(), stdout);
  } else {
    CUSTODY_RETURN_IF_ERROR(WriteFileAtomic(
        a.out, AsBytes(all), WriteOptions{0600, a.force ? Overwrite::kAllow : Overwrite::kRefuse}));
  }
  if (count == 0) {
    std::fprintf(stderr, "no audit entries after %llu\n", static_cast<unsigned long long>(a.after));
  } else {
    std::fprintf(stderr, "exported %llu audit entries (%llu..%llu)%s%s\n",
                 static_cast<unsigned long long>(count), static_cast<unsigned long long>(first),
                 static_cast<unsigned long long>(after), to_file ? " to " : "",
                 to_file ? a.out.c_str() : "");
  }
  return OkStatus();
}

struct AuditVerifyArgs {
  std::string file;
  std::string anchor;
  bool json = false;
};

// Offline: no server, no token. Every line must parse, and the chain must be intact.
Status VerifyAudit(const AuditVerifyArgs& a) {
  std::ifstream in(a.file, std::ios::binary);
  if (!in) return ErrnoStatus(errno, "audit export " + a.file);
  std::vector<protocol::AuditEntry> entries;
  std::string line;
  uint64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    Result<protocol::AuditEntry> e = protocol::AuditEntryFromJsonLine(line);
    if (!e) {
      return DataLoss(a.file + " line " + std::to_string(line_no) + ": not a valid audit entry (" +
                      e.error().message() + "); the export was altered or damaged");
    }
    entries.push_back(std::move(*e));
  }
  if (in.bad()) return Unavailable("read error on " + a.file);
  if (entries.empty()) return InvalidArgument(a.file + " holds no audit entries");
  std::optional<crypto::Sha256Digest> anchor;
  if (!a.anchor.empty()) {
    Result<Bytes> h = HexDecode(a.anchor);
    if (!h || h->size() != crypto::kSha256Bytes) {
      return InvalidArgument(
          "--anchor expects the 64-hex-digit hash of the entry before the export");
    }
    anchor.emplace();
    std::copy(h->begin(), h->end(), anchor->begin());
  }
  CUSTODY_RETURN_IF_ERROR(protocol::VerifyAuditChain(entries, anchor));
  const protocol::AuditEntry& last = entries.back();
  if (a.json) {
    PrintJson({{"ok", true},
               {"entries", entries.size()},
               {"first_seq", entries.front().seq},
               {"last_seq", last.seq},
               {"last_hash", HexEncode(last.hash)}});
    return OkStatus();
  }
  std::printf("%s: %zu audit entries checked (%llu..%llu); the hash chain is intact\n",
              a.file.c_str(), entries.size(), static_cast<unsigned long long>(entries.front().seq),
              static_cast<unsigned long long>(last.seq));
  std::printf("last entry hash: %s\n", HexEncode(last.hash).c_str());
  return OkStatus();
}

// ----- registration ------------------------------------------------------------------------------

void AddModelCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* models = admin->add_subcommand("models", "Register, list and retire sealed models");
  models->require_subcommand(1);

  auto ra = std::make_shared<RegisterArgs>();
  CLI::App* reg = models->add_subcommand(
      "register", "Give the custodian a sealed model's key (it is stored encrypted)");
  reg->add_option("sealed", ra->sealed, "Sealed model (from custody seal --out)")->required();
  reg->add_option("--key", ra->key, "Its model key file (from custody seal --dek-out)")->required();
  reg->add_option("--vendor-pub", ra->vendor_pub, "Also check the model was signed by this key");
  OnRun(reg, ctx, [ra, ctx](AdminClient& c) { return RegisterModel(c, *ra, ctx->conn.json); });

  CLI::App* list = models->add_subcommand("list", "List registered models");
  OnRun(list, ctx, [ctx](AdminClient& c) { return ListModels(c, ctx->conn.json); });

  auto retire_id = std::make_shared<std::string>();
  auto retire_reason = std::make_shared<std::string>();
  CLI::App* retire = models->add_subcommand(
      "retire", "Retire a model: every device holding a lease for it is revoked for it");
  retire->add_option("model_id", *retire_id, "Model id (custody admin models list)")->required();
  retire->add_option("--reason", *retire_reason, "Why (audited; default: retired)");
  OnRun(retire, ctx, [ctx, retire_id, retire_reason](AdminClient& c) -> Status {
    std::optional<json> body;
    if (!retire_reason->empty()) body = json{{"reason", *retire_reason}};
    CUSTODY_ASSIGN_OR_RETURN(
        json out, c.Call("POST", "/v1/admin/models/" + PathSegment(*retire_id) + "/retire", body));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      std::printf("model %s retired\n", Printable(*retire_id).c_str());
    }
    return OkStatus();
  });
}

void AddGroupCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* groups =
      admin->add_subcommand("groups", "Device groups and their golden (approved) PCR sets");
  groups->require_subcommand(1);

  auto ga = std::make_shared<GroupArgs>();
  CLI::App* create = groups->add_subcommand("create", "Create a device group");
  create->add_option("name", ga->name, "Group name")->required();
  create->add_option("--pcrs", ga->pcrs, "PCRs its devices quote (SHA-256 bank; default 0,2,4,7)");
  create->add_flag("--allow-tofu", ga->allow_tofu,
                   "Trust on first use: accept the PCR values a device shows at enrollment");
  create->add_flag("--no-ek-certificate", ga->no_ek_certificate,
                   "Accept TPMs without an EK certificate from a trusted TPM maker (labs, swtpm)");
  OnRun(create, ctx, [ga, ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection sel, tpm::PcrSelection::Parse(ga->pcrs));
    json body{{"name", ga->name},
              {"pcrs", sel.pcrs},
              {"allow_tofu", ga->allow_tofu},
              {"require_ek_certificate", !ga->no_ek_certificate}};
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("POST", "/v1/admin/groups", body));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      std::printf("created group %s\n", Field(out, "name").c_str());
      PrintGroup(out);
      std::printf("next: custody admin groups golden-set add %s --name NAME --from PCRS.json\n",
                  Field(out, "name").c_str());
    }
    return OkStatus();
  });

  CLI::App* list = groups->add_subcommand("list", "List groups");
  OnRun(list, ctx, [ctx](AdminClient& c) { return ListGroups(c, ctx->conn.json); });

  CLI::App* golden = groups->add_subcommand(
      "golden-set", "Approved platform states (PCR values) of a group's devices");
  golden->require_subcommand(1);
  auto gs = std::make_shared<GoldenSetArgs>();
  CLI::App* add = golden->add_subcommand(
      "add",
      "Add (or replace) a golden PCR set and approve it: the custodian's policy key signs it, so "
      "devices of the group may use their keys in that state (an OS update is this, not a "
      "re-enrollment)");
  add->alias("approve");
  add->add_option("group", gs->group, "Group name")->required();
  add->add_option("--name", gs->name, "Name of the set (e.g. factory, os-2026-03)")->required();
  add->add_option("--from", gs->from,
                  "JSON file of PCR values: {\"0\": \"hex\", …} or the output of "
                  "custody tpm info --json on a reference device");
  add->add_option("--pcr", gs->pcr, "INDEX=HEX (64 hex digits); repeatable, overrides --from");
  OnRun(add, ctx, [gs, ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(json pcrs, GoldenPcrs(*gs));
    CUSTODY_ASSIGN_OR_RETURN(
        json out, c.Call("POST", "/v1/admin/groups/" + PathSegment(gs->group) + "/golden-sets",
                         json{{"name", gs->name}, {"pcrs", pcrs}}));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      std::printf("golden set %s of group %s approved (policy digest %s)\n",
                  Field(out, "set").c_str(), Field(out, "group").c_str(),
                  Field(out, "approved_digest").c_str());
    }
    return OkStatus();
  });
  auto list_group = std::make_shared<std::string>();
  CLI::App* glist = golden->add_subcommand("list", "Show a group's golden sets");
  glist->add_option("group", *list_group, "Group name")->required();
  OnRun(glist, ctx, [ctx, list_group](AdminClient& c) {
    return ListGoldenSets(c, *list_group, ctx->conn.json);
  });
}

void AddEnrollmentCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* enrollment =
      admin->add_subcommand("enrollment-tokens", "One-time tokens that let a device enroll");
  enrollment->require_subcommand(1);
  struct Args {
    std::string group;
    std::string expires = "24h";
    std::string out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* create =
      enrollment->add_subcommand("create", "Create a one-time enrollment token (printed once)");
  create->add_option("--group", a->group, "Group the device joins")->required();
  create->add_option("--expires", a->expires, "Lifetime: 60s to 30d (default 24h)");
  create->add_option("--out", a->out, "Write the token to this file (mode 0600) instead");
  OnRun(create, ctx, [a, ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(uint64_t ttl, ParseDuration(a->expires, "--expires"));
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("POST", "/v1/admin/enrollment-tokens",
                                              json{{"group", a->group}, {"ttl_seconds", ttl}}));
    if (ctx->conn.json && a->out.empty()) {
      PrintJson(out);
      return OkStatus();
    }
    if (!out.contains("token") || !out["token"].is_string()) {
      return Internal("the custodian's answer has no token");
    }
    std::printf("enrollment token for group %s, valid until %s\n", Field(out, "group").c_str(),
                Field(out, "expires").c_str());
    return EmitSecret(out["token"].get<std::string>(), a->out, "enrollment token");
  });
}

void AddDeviceCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* devices = admin->add_subcommand("devices", "Enrolled devices");
  devices->require_subcommand(1);
  CLI::App* list = devices->add_subcommand("list", "List enrolled devices");
  OnRun(list, ctx, [ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/devices"));
    if (ctx->conn.json) {
      PrintJson(out);
      return OkStatus();
    }
    CUSTODY_RETURN_IF_ERROR(NeedArray(out, "devices"));
    Table t({"DEVICE", "GROUP", "ENROLLED", "LAST SEEN", "COUNTER", "REVOKED"});
    for (const json& d : out) {
      t.Row({Field(d, "device_id"), Field(d, "group"), Field(d, "enrolled"), Field(d, "last_seen"),
             Field(d, "last_counter"), Field(d, "revoked")});
    }
    t.Print("no devices enrolled");
    return OkStatus();
  });
  auto id = std::make_shared<std::string>();
  CLI::App* show =
      devices->add_subcommand("show", "One device: state, licences, remaining budgets, usage");
  show->add_option("device_id", *id, "Device id (dev_…)")->required();
  OnRun(show, ctx, [ctx, id](AdminClient& c) { return ShowDevice(c, *id, ctx->conn.json); });
}

void AddLicenceCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* licences = admin->add_subcommand("licences", "Grants of a model to devices");
  licences->alias("licenses");
  licences->require_subcommand(1);
  auto a = std::make_shared<LicenceArgs>();
  CLI::App* create = licences->add_subcommand(
      "create", "Grant a model to a device or a group, with a budget and an end");
  create->add_option("--model", a->model, "Model id")->required();
  create->add_option("--device", a->device, "For one device (dev_…)");
  create->add_option("--group", a->group, "For every device of a group");
  create->add_option("--budget", a->budget, "Inferences each device may run")->required();
  create
      ->add_option("--not-after", a->not_after,
                   "Last day: YYYY-MM-DD (end of day, UTC) or YYYY-MM-DDTHH:MM:SSZ")
      ->required();
  create
      ->add_option("--offline-grace", a->offline_grace,
                   "How long a device may serve without reaching the custodian (e.g. 72h)")
      ->required();
  create->add_flag("--manual", a->manual,
                   "Every budget extension waits for an operator (the default)");
  create->add_option("--auto-approve", a->auto_approve,
                     "Approve extensions automatically up to N inferences per --period");
  create->add_option("--period", a->period, "The period of --auto-approve (e.g. 30d)");
  OnRun(create, ctx, [a, ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(json body, LicenceBody(*a));
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("POST", "/v1/admin/licences", body));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      std::printf("created licence %s\n", Field(out, "licence_id").c_str());
      LicenceTable(json::array({out}), /*with_remaining=*/false);
    }
    return OkStatus();
  });
  CLI::App* list = licences->add_subcommand("list", "List licences");
  OnRun(list, ctx, [ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/licences"));
    if (ctx->conn.json) {
      PrintJson(out);
      return OkStatus();
    }
    CUSTODY_RETURN_IF_ERROR(NeedArray(out, "licences"));
    LicenceTable(out, /*with_remaining=*/false);
    return OkStatus();
  });
}

void AddExtensionCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* ext = admin->add_subcommand("extensions", "Budget extension requests from devices");
  ext->require_subcommand(1);
  auto status = std::make_shared<std::string>();
  CLI::App* list = ext->add_subcommand("list", "List extension requests");
  list->add_option("--status", *status, "Only requests in this state")
      ->check(CLI::IsMember({"pending", "approved", "denied"}));
  OnRun(list, ctx, [ctx, status](AdminClient& c) -> Status {
    std::string target = "/v1/admin/extensions";
    if (!status->empty()) target += "?status=" + *status;
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", target));
    if (ctx->conn.json) {
      PrintJson(out);
      return OkStatus();
    }
    CUSTODY_RETURN_IF_ERROR(NeedArray(out, "extensions"));
    Table t(
        {"REQUEST", "STATUS", "DEVICE", "LICENCE", "REQUESTED", "GRANTED", "CREATED", "REASON"});
    for (const json& e : out) {
      t.Row({Field(e, "request_id"), Field(e, "status"), Field(e, "device_id"),
             Field(e, "licence_id"), Field(e, "requested"), Field(e, "granted"),
             Field(e, "created"), Field(e, "reason")});
    }
    const std::string none =
        status->empty() ? "no extension requests" : "no " + *status + " extension requests";
    t.Print(none.c_str());
    return OkStatus();
  });

  struct Decision {
    std::string id;
    std::optional<uint64_t> granted;
    std::string reason;
  };
  auto approve_args = std::make_shared<Decision>();
  CLI::App* approve =
      ext->add_subcommand("approve", "Approve a request; the device gets a raised lease at once");
  approve->add_option("request_id", approve_args->id, "Request id (ext_…)")->required();
  approve->add_option("--granted", approve_args->granted,
                      "Grant this many inferences instead of what was requested");
  OnRun(approve, ctx, [ctx, approve_args](AdminClient& c) -> Status {
    std::optional<json> body;
    if (approve_args->granted) body = json{{"granted", *approve_args->granted}};
    CUSTODY_ASSIGN_OR_RETURN(
        json out,
        c.Call("POST", "/v1/admin/extensions/" + PathSegment(approve_args->id) + "/approve", body));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      PrintExtension(out);
    }
    return OkStatus();
  });
  auto deny_args = std::make_shared<Decision>();
  CLI::App* deny = ext->add_subcommand("deny", "Deny a request");
  deny->add_option("request_id", deny_args->id, "Request id (ext_…)")->required();
  deny->add_option("--reason", deny_args->reason, "Why (audited)")->required();
  OnRun(deny, ctx, [ctx, deny_args](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(
        json out, c.Call("POST", "/v1/admin/extensions/" + PathSegment(deny_args->id) + "/deny",
                         json{{"reason", deny_args->reason}}));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      PrintExtension(out);
    }
    return OkStatus();
  });
}

void AddRevokeCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* revoke = admin->add_subcommand(
      "revoke",
      "The stop switch: revoke a device, a licence or a model; affected devices learn it on "
      "their next event and wipe the model");
  revoke->require_subcommand(1);
  for (const char* scope : {"device", "licence", "model"}) {
    struct Args {
      std::string id;
      std::string reason;
    };
    auto a = std::make_shared<Args>();
    const std::string scope_name = scope;
    CLI::App* cmd = revoke->add_subcommand(scope_name, "Revoke a " + scope_name);
    if (scope_name == "licence") cmd->alias("license");
    cmd->add_option("id", a->id, scope_name + " id")->required();
    cmd->add_option("--reason", a->reason, "Why (audited; required)")->required();
    OnRun(cmd, ctx, [ctx, a, scope_name](AdminClient& c) -> Status {
      CUSTODY_ASSIGN_OR_RETURN(
          json out, c.Call("POST", "/v1/admin/revocations",
                           json{{"scope", scope_name}, {"id", a->id}, {"reason", a->reason}}));
      if (ctx->conn.json) {
        PrintJson(out);
      } else {
        std::printf("revoked %s %s; %s device(s) notified\n", scope_name.c_str(),
                    Field(out, "id").c_str(), Field(out, "devices_notified").c_str());
      }
      return OkStatus();
    });
  }
}

void AddTokenCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* tokens = admin->add_subcommand("tokens", "API tokens for people and automation");
  tokens->require_subcommand(1);
  struct Args {
    std::string name;
    std::string role;
    std::string out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* create = tokens->add_subcommand("create", "Create an API token (printed once)");
  create->add_option("--name", a->name, "Who or what uses it (audited)")->required();
  create
      ->add_option("--role", a->role,
                   "viewer (reads), operator (licences, enrollment, extensions, stop switch) "
                   "or admin (everything)")
      ->required()
      ->check(CLI::IsMember({"admin", "operator", "viewer"}));
  create->add_option("--out", a->out, "Write the token to this file (mode 0600) instead");
  OnRun(create, ctx, [a, ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(
        json out, c.Call("POST", "/v1/admin/tokens", json{{"name", a->name}, {"role", a->role}}));
    if (ctx->conn.json && a->out.empty()) {
      PrintJson(out);
      return OkStatus();
    }
    if (!out.contains("token") || !out["token"].is_string()) {
      return Internal("the custodian's answer has no token");
    }
    std::printf("token %s (%s, role %s)\n", Field(out, "id").c_str(), Field(out, "name").c_str(),
                Field(out, "role").c_str());
    return EmitSecret(out["token"].get<std::string>(), a->out, "API token");
  });
  CLI::App* list = tokens->add_subcommand("list", "List API tokens (never their secrets)");
  OnRun(list, ctx, [ctx](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(json out, c.Call("GET", "/v1/admin/tokens"));
    if (ctx->conn.json) {
      PrintJson(out);
      return OkStatus();
    }
    CUSTODY_RETURN_IF_ERROR(NeedArray(out, "tokens"));
    Table t({"TOKEN ID", "NAME", "ROLE", "CREATED", "REVOKED"});
    for (const json& k : out) {
      t.Row({Field(k, "id"), Field(k, "name"), Field(k, "role"), Field(k, "created"),
             Field(k, "revoked")});
    }
    t.Print("no tokens");
    return OkStatus();
  });
  auto revoke_id = std::make_shared<std::string>();
  CLI::App* revoke = tokens->add_subcommand("revoke", "Revoke an API token");
  revoke->add_option("token_id", *revoke_id, "Token id (tok_…)")->required();
  OnRun(revoke, ctx, [ctx, revoke_id](AdminClient& c) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(
        json out, c.Call("POST", "/v1/admin/tokens/" + PathSegment(*revoke_id) + "/revoke"));
    if (ctx->conn.json) {
      PrintJson(out);
    } else {
      std::printf("token %s revoked\n", Printable(*revoke_id).c_str());
    }
    return OkStatus();
  });
}

void AddAuditCommands(CLI::App* admin, const std::shared_ptr<Context>& ctx) {
  CLI::App* audit = admin->add_subcommand("audit", "The hash-chained audit log");
  audit->require_subcommand(1);
  auto ea = std::make_shared<AuditExportArgs>();
  CLI::App* exp = audit->add_subcommand("export", "Download the audit log as JSON lines");
  exp->add_option("--out", ea->out, "File to write (mode 0600); default: standard output");
  exp->add_option("--after", ea->after,
                  "Only entries after this sequence number (verify with --anchor)");
  exp->add_flag("--force", ea->force, "Overwrite an existing --out file");
  OnRun(exp, ctx, [ea](AdminClient& c) { return ExportAudit(c, *ea); });

  auto va = std::make_shared<AuditVerifyArgs>();
  CLI::App* verify = audit->add_subcommand(
      "verify", "Check an exported audit log's hash chain, offline (no server needed)");
  verify->add_option("file", va->file, "Export from custody admin audit export")->required();
  verify->add_option("--anchor", va->anchor,
                     "For an export that does not start at entry 1: the hash of the entry "
                     "before it");
  verify->callback([ctx, va] {
    va->json = ctx->conn.json;
    *ctx->exit_code = AdminExitCode(VerifyAudit(*va), /*from_custodian=*/false);
  });
}

}  // namespace

void RegisterAdminCommands(CLI::App& app, int& exit_code) {
  auto ctx = std::make_shared<Context>();
  ctx->exit_code = &exit_code;
  CLI::App* admin =
      app.add_subcommand("admin",
                         "Drive a custodian: models, groups, enrollment, devices, licences, budget "
                         "extensions, the stop switch, API tokens and the audit log");
  admin->require_subcommand(1);
  // Connection options may come before or after the command: `custody admin models list --json`.
  admin->fallthrough();
  admin->add_option("--url", ctx->conn.url, "Custodian https://HOST:PORT (env CUSTODY_URL)");
  admin->add_option("--token-file", ctx->conn.token_file,
                    "File holding the API token (mode 0600); preferred over --token");
  admin->add_option("--token", ctx->conn.token,
                    "API token (env CUSTODY_TOKEN); a file or the environment keeps it out of "
                    "shell history");
  admin->add_option("--ca", ctx->conn.ca,
                    "The custodian's CA certificate, DATA/keys/ca.pem (env CUSTODY_CA)");
  admin->add_flag("--json", ctx->conn.json, "Print the custodian's JSON answer");
  AddModelCommands(admin, ctx);
  AddGroupCommands(admin, ctx);
  AddEnrollmentCommands(admin, ctx);
  AddDeviceCommands(admin, ctx);
  AddLicenceCommands(admin, ctx);
  AddExtensionCommands(admin, ctx);
  AddRevokeCommands(admin, ctx);
  AddTokenCommands(admin, ctx);
  AddAuditCommands(admin, ctx);
}

}  // namespace custody::cli
