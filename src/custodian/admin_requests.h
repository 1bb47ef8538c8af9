// The bodies and query parameters of the custodian's admin API (docs/api/openapi.json,
// /v1/admin/*), parsed into the specs CustodianService takes. Pure functions with no I/O, so every
// rule can be unit-tested and fuzzed without a server (fuzz/admin_request_fuzzer.cc).
//
// Bodies are untrusted input from a token holder: each parser reads the JSON strictly
// (protocol/json.h: at most kMaxAdminBodyBytes, nesting bounded, unknown fields refused, every
// field checked for type, range and length, clean UTF-8 text) and answers kInvalidArgument naming
// the field. Values are returned verbatim, never escaped or interpreted: the store binds them as
// SQL parameters, and the service checks what they refer to (a model id that does not exist, a
// group already taken). Where the first bad field is reported matters to clients, the order of the
// checks is part of the contract and is that of the fields below.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/base/status.h"
#include "core/tpm/tpm_types.h"
#include "custodian/service.h"
#include "custodian/store/store.h"

namespace custody::custodian {

inline constexpr size_t kMaxAdminBodyBytes = 64 * 1024;

// POST /v1/admin/models: {"model_id", "name", "version", "dek" (64 hex digits),
// "sealed_sha256"?}. The DEK is copied into a SecretBuffer; the decoded copy is wiped on every
// path.
Result<ModelRegistration> ParseModelRegistration(std::string_view body);

// POST /v1/admin/models/{model_id}/retire: an empty body or {"reason"}; "retired" by default.
Result<std::string> ParseModelRetirement(std::string_view body);

// POST /v1/admin/groups: {"name", "pcrs" (indices 0..23), "allow_tofu"?,
// "require_ek_certificate"?}.
Result<GroupSpec> ParseGroupRequest(std::string_view body);

// POST /v1/admin/groups/{group}/golden-sets: {"name", "pcrs": {"<index>": "<64 hex>", ...}}.
struct GoldenSetSpec {
  std::string name;
  tpm::PcrValues pcrs;
};
Result<GoldenSetSpec> ParseGoldenSetRequest(std::string_view body);

// POST /v1/admin/enrollment-tokens: {"group", "ttl_seconds"? (at most 30 days; 1 day by
// default)}.
struct EnrollmentTokenSpec {
  std::string group;
  std::chrono::seconds ttl{24 * 3600};
};
Result<EnrollmentTokenSpec> ParseEnrollmentTokenRequest(std::string_view body);

// POST /v1/admin/licences: {"model_id", "device_id"?, "group"?, "budget", "not_after" (a date or
// RFC 3339 UTC time), "offline_grace_seconds", "extension"?: {"manual"?, "auto_approve_up_to"?,
// "period_seconds"?}}. Whether exactly one of device_id and group is given is the service's check.
// Without "manual", an extension policy is manual unless auto_approve_up_to is given.
Result<LicenceSpec> ParseLicenceRequest(std::string_view body);

// POST /v1/admin/extensions/{request_id}/approve: an empty body or {"granted"?}; 0 (grant what
// was requested) by default.
Result<uint64_t> ParseExtensionApproval(std::string_view body);

// POST /v1/admin/extensions/{request_id}/deny: {"reason"}.
Result<std::string> ParseExtensionDenial(std::string_view body);

// POST /v1/admin/revocations: {"scope", "id", "reason"}. Which scopes exist is the service's
// check.
struct RevocationSpec {
  std::string scope;
  std::string id;
  std::string reason;
};
Result<RevocationSpec> ParseRevocationRequest(std::string_view body);

// POST /v1/admin/tokens: {"name", "role" (admin | operator | viewer)}.
struct TokenSpec {
  std::string name;
  Role role = Role::kViewer;
};
Result<TokenSpec> ParseTokenRequest(std::string_view body);
Result<Role> ParseRole(std::string_view name);

// Query parameters (already percent-decoded by the server, http/url.h).
using Query = std::map<std::string, std::string>;

// `key` as a decimal integer from 0 to `max`, or `fallback` when absent. Signs, spaces, hex and
// an empty value are kInvalidArgument.
Result<uint64_t> QueryUint(const Query& query, const std::string& key, uint64_t fallback,
                           uint64_t max);

// GET /v1/admin/extensions?status=pending|approved|denied; nullopt (all) when absent.
Result<std::optional<ExtensionStatus>> ParseExtensionStatusFilter(const Query& query);

}  // namespace custody::custodian
