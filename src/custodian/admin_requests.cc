#include "custodian/admin_requests.h"

#include <charconv>

#include "core/base/secret_buffer.h"
#include "core/format/sealed.h"
#include "core/protocol/json.h"
#include "core/protocol/messages.h"

namespace custody::custodian {
namespace {

using protocol::JsonObject;

// Parses `body` as the admin request `what` and hands a view of it to `fill`.
template <typename T, typename Fill>
Result<T> ParseBody(std::string_view body, std::string_view what, Fill&& fill) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json json,
                           protocol::ParseJsonObject(body, kMaxAdminBodyBytes, what));
  T out{};
  CUSTODY_RETURN_IF_ERROR(fill(JsonObject(json, ""), out));
  return out;
}

Result<TimePoint> ParseTime(const JsonObject& o, std::string_view key) {
  CUSTODY_ASSIGN_OR_RETURN(std::string text, o.String(key, 32));
  Result<std::chrono::sys_seconds> t = format::ParseTimestamp(text);
  if (!t) {
    return o.FieldError(key,
                        "expected a date (YYYY-MM-DD) or RFC 3339 UTC time "
                        "(YYYY-MM-DDTHH:MM:SSZ)");
  }
  return *t;
}

// Reads an optional {"reason"} body: `fallback` when the body is empty.
Result<std::string> ParseOptionalReason(std::string_view body, std::string_view what,
                                        std::string fallback) {
  if (body.empty()) return fallback;
  return ParseBody<std::string>(body, what, [](const JsonObject& o, std::string& reason) -> Status {
    CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"reason"}));
    CUSTODY_ASSIGN_OR_RETURN(reason, o.String("reason", 512));
    return OkStatus();
  });
}

}  // namespace

Result<ModelRegistration> ParseModelRegistration(std::string_view body) {
  return ParseBody<ModelRegistration>(
      body, "model registration", [](const JsonObject& o, ModelRegistration& m) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"model_id", "name", "version", "dek", "sealed_sha256"}));
        CUSTODY_ASSIGN_OR_RETURN(m.model_id, o.String("model_id", 32));
        CUSTODY_ASSIGN_OR_RETURN(m.name, o.String("name", 128));
        CUSTODY_ASSIGN_OR_RETURN(m.version, o.String("version", 64));
        CUSTODY_ASSIGN_OR_RETURN(Bytes dek, o.Hex("dek", format::kDekBytes));
        Result<SecretBuffer> secret = SecretBuffer::CopyFrom(dek);
        SecureWipe(dek.data(), dek.size());
        if (!secret) return secret.error();
        m.dek = std::move(secret).value();
        CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> sha,
                                 o.OptionalString("sealed_sha256", 64));
        m.sealed_sha256 = sha.value_or("");
        return OkStatus();
      });
}

Result<std::string> ParseModelRetirement(std::string_view body) {
  return ParseOptionalReason(body, "retirement", "retired");
}

Result<GroupSpec> ParseGroupRequest(std::string_view body) {
  return ParseBody<GroupSpec>(body, "group", [](const JsonObject& o, GroupSpec& spec) -> Status {
    CUSTODY_RETURN_IF_ERROR(
        o.RejectUnknown({"name", "pcrs", "allow_tofu", "require_ek_certificate"}));
    CUSTODY_ASSIGN_OR_RETURN(spec.name, o.String("name", 64));
    CUSTODY_ASSIGN_OR_RETURN(std::vector<uint64_t> pcrs, o.Uints("pcrs", 24, 23));
    spec.pcrs.assign(pcrs.begin(), pcrs.end());
    if (o.Has("allow_tofu")) {
      CUSTODY_ASSIGN_OR_RETURN(spec.allow_tofu, o.Bool("allow_tofu"));
    }
    if (o.Has("require_ek_certificate")) {
      CUSTODY_ASSIGN_OR_RETURN(spec.require_ek_certificate, o.Bool("require_ek_certificate"));
    }
    return OkStatus();
  });
}

Result<GoldenSetSpec> ParseGoldenSetRequest(std::string_view body) {
  return ParseBody<GoldenSetSpec>(
      body, "golden set", [](const JsonObject& o, GoldenSetSpec& spec) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"name", "pcrs"}));
        CUSTODY_ASSIGN_OR_RETURN(spec.name, o.String("name", 64));
        CUSTODY_ASSIGN_OR_RETURN(spec.pcrs, protocol::PcrValuesFromJson(o, "pcrs"));
        return OkStatus();
      });
}

Result<EnrollmentTokenSpec> ParseEnrollmentTokenRequest(std::string_view body) {
  return ParseBody<EnrollmentTokenSpec>(
      body, "enrollment token request",
      [](const JsonObject& o, EnrollmentTokenSpec& spec) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"group", "ttl_seconds"}));
        CUSTODY_ASSIGN_OR_RETURN(spec.group, o.String("group", 64));
        CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> ttl,
                                 o.OptionalUint("ttl_seconds", 30 * 24 * 3600));
        spec.ttl = std::chrono::seconds(ttl.value_or(24 * 3600));
        return OkStatus();
      });
}

Result<LicenceSpec> ParseLicenceRequest(std::string_view body) {
  return ParseBody<LicenceSpec>(
      body, "licence", [](const JsonObject& o, LicenceSpec& spec) -> Status {
        CUSTODY_RETURN_IF_ERROR(
            o.RejectUnknown({"model_id", "device_id", "group", "budget", "not_after",
                             "offline_grace_seconds", "extension"}));
        CUSTODY_ASSIGN_OR_RETURN(spec.model_id, o.String("model_id", 64));
        CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> device,
                                 o.OptionalString("device_id", 64));
        CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> group, o.OptionalString("group", 64));
        spec.device_id = device.value_or("");
        spec.group = group.value_or("");
        CUSTODY_ASSIGN_OR_RETURN(spec.budget, o.Uint("budget", uint64_t{1} << 48));
        CUSTODY_ASSIGN_OR_RETURN(spec.not_after, ParseTime(o, "not_after"));
        CUSTODY_ASSIGN_OR_RETURN(uint64_t grace,
                                 o.Uint("offline_grace_seconds", 365ull * 24 * 3600));
        spec.offline_grace_ms = grace * 1000;
        CUSTODY_ASSIGN_OR_RETURN(std::optional<JsonObject> ext, o.OptionalObject("extension"));
        if (ext) {
          CUSTODY_RETURN_IF_ERROR(
              ext->RejectUnknown({"manual", "auto_approve_up_to", "period_seconds"}));
          if (ext->Has("manual")) {
            CUSTODY_ASSIGN_OR_RETURN(spec.extension.manual, ext->Bool("manual"));
          }
          CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> up_to,
                                   ext->OptionalUint("auto_approve_up_to", uint64_t{1} << 48));
          CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> period,
                                   ext->OptionalUint("period_seconds", 366ull * 24 * 3600));
          spec.extension.auto_approve_up_to = up_to.value_or(0);
          spec.extension.period_seconds = period.value_or(0);
          if (!ext->Has("manual")) spec.extension.manual = !up_to.has_value();
        }
        return OkStatus();
      });
}

Result<uint64_t> ParseExtensionApproval(std::string_view body) {
  if (body.empty()) return uint64_t{0};
  return ParseBody<uint64_t>(
      body, "approval", [](const JsonObject& o, uint64_t& granted) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"granted"}));
        CUSTODY_ASSIGN_OR_RETURN(std::optional<uint64_t> g,
                                 o.OptionalUint("granted", uint64_t{1} << 40));
        granted = g.value_or(0);
        return OkStatus();
      });
}

Result<std::string> ParseExtensionDenial(std::string_view body) {
  return ParseBody<std::string>(body, "denial",
                                [](const JsonObject& o, std::string& reason) -> Status {
                                  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"reason"}));
                                  CUSTODY_ASSIGN_OR_RETURN(reason, o.String("reason", 512));
                                  return OkStatus();
                                });
}

Result<RevocationSpec> ParseRevocationRequest(std::string_view body) {
  return ParseBody<RevocationSpec>(
      body, "revocation", [](const JsonObject& o, RevocationSpec& spec) -> Status {
        CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"scope", "id", "reason"}));
        CUSTODY_ASSIGN_OR_RETURN(spec.scope, o.String("scope", 16));
        CUSTODY_ASSIGN_OR_RETURN(spec.id, o.String("id", 64));
        CUSTODY_ASSIGN_OR_RETURN(spec.reason, o.String("reason", 512));
        return OkStatus();
      });
}

Result<Role> ParseRole(std::string_view name) {
  if (name == "admin") return Role::kAdmin;
  if (name == "operator") return Role::kOperator;
  if (name == "viewer") return Role::kViewer;
  return InvalidArgument("field 'role': expected admin, operator or viewer");
}

Result<TokenSpec> ParseTokenRequest(std::string_view body) {
  return ParseBody<TokenSpec>(body, "token request",
                              [](const JsonObject& o, TokenSpec& spec) -> Status {
                                CUSTODY_RETURN_IF_ERROR(o.RejectUnknown({"name", "role"}));
                                CUSTODY_ASSIGN_OR_RETURN(spec.name, o.String("name", 64));
                                CUSTODY_ASSIGN_OR_RETURN(std::string role, o.String("role", 16));
                                CUSTODY_ASSIGN_OR_RETURN(spec.role, ParseRole(role));
                                return OkStatus();
                              });
}

Result<uint64_t> QueryUint(const Query& query, const std::string& key, uint64_t fallback,
                           uint64_t max) {
  auto it = query.find(key);
  if (it == query.end()) return fallback;
  uint64_t v = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v > max) {
    return InvalidArgument("query parameter '" + key + "' must be an integer from 0 to " +
                           std::to_string(max));
  }
  return v;
}

Result<std::optional<ExtensionStatus>> ParseExtensionStatusFilter(const Query& query) {
  auto it = query.find("status");
  if (it == query.end()) return std::optional<ExtensionStatus>();
  if (it->second == "pending") return std::optional(ExtensionStatus::kPending);
  if (it->second == "approved") return std::optional(ExtensionStatus::kApproved);
  if (it->second == "denied") return std::optional(ExtensionStatus::kDenied);
  return InvalidArgument("query parameter 'status' must be pending, approved or denied");
}

}  // namespace custody::custodian
