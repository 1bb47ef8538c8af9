// Strict reading of JSON from untrusted peers (devices, operators, files), shared by the
// custodian, the agent and the CLI.
//
// Every message Custody receives is parsed here, so the rules live in one place:
//  - the text is at most a caller-given size and nests at most kMaxJsonDepth levels, checked
//    BEFORE the parser runs (nlohmann::json recurses, and deep nesting would exhaust the stack);
//  - the top level and every nested message is an object; a field of the wrong type, out of
//    range, too long, or missing is kInvalidArgument with the field's full path, e.g.
//    "field 'quote.pcrs.7': expected 64 hex digits";
//  - fields a message does not define are refused (RejectUnknown), so a typo in a request is an
//    error, not a silently ignored setting;
//  - binary values are base64 (Base64Decode, strict) or hex where the protocol says so.
// Nothing here throws: nlohmann's exceptions are never enabled on this path.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"

namespace custody::protocol {

inline constexpr int kMaxJsonDepth = 16;

// Parses `text` (at most `max_bytes`) as a JSON document; `what` names it in errors
// ("enrollment request"). The document must be an object.
Result<nlohmann::json> ParseJsonObject(std::string_view text, size_t max_bytes,
                                       std::string_view what);

// A view of one JSON object at `path` (empty for the top level) with typed, bounded getters.
class JsonObject {
 public:
  // `json` must outlive the view and be an object (ParseJsonObject guarantees the top level).
  JsonObject(const nlohmann::json& json, std::string path) : json_(&json), path_(std::move(path)) {}

  const std::string& path() const { return path_; }
  bool Has(std::string_view key) const;

  // Required fields. Strings must be valid UTF-8 without control characters unless noted.
  Result<std::string> String(std::string_view key, size_t max_len = 256) const;
  Result<uint64_t> Uint(std::string_view key, uint64_t max = UINT64_MAX) const;
  Result<bool> Bool(std::string_view key) const;
  Result<Bytes> Base64(std::string_view key, size_t max_len) const;
  // Exactly `len` bytes as 2*len hex digits.
  Result<Bytes> Hex(std::string_view key, size_t len) const;
  Result<JsonObject> Object(std::string_view key) const;
  // An array of objects (at most max_items).
  Result<std::vector<JsonObject>> Objects(std::string_view key, size_t max_items) const;
  // An array of strings (each at most max_len).
  Result<std::vector<std::string>> Strings(std::string_view key, size_t max_items,
                                           size_t max_len = 256) const;

  // PEM text (newlines allowed, otherwise printable ASCII), at most max_len bytes, starting with
  // "-----BEGIN ".
  Result<std::string> Pem(std::string_view key, size_t max_len) const;
  // An array of non-negative integers (each at most `max`).
  Result<std::vector<uint64_t>> Uints(std::string_view key, size_t max_items,
                                      uint64_t max = UINT64_MAX) const;

  // Optional variants: nullopt when the key is absent or null.
  Result<std::optional<std::string>> OptionalString(std::string_view key,
                                                    size_t max_len = 256) const;
  Result<std::optional<uint64_t>> OptionalUint(std::string_view key,
                                               uint64_t max = UINT64_MAX) const;
  Result<std::optional<Bytes>> OptionalBase64(std::string_view key, size_t max_len) const;
  Result<std::optional<JsonObject>> OptionalObject(std::string_view key) const;

  // Every key of the object (for maps such as PCR values), in order.
  std::vector<std::string> Keys() const;
  // kInvalidArgument naming the first field not in `known`.
  Status RejectUnknown(std::initializer_list<std::string_view> known) const;

  // "field 'a.b': <what>" as kInvalidArgument.
  Status FieldError(std::string_view key, std::string_view what) const;

 private:
  Result<const nlohmann::json*> Get(std::string_view key) const;
  std::string FieldPath(std::string_view key) const;

  const nlohmann::json* json_;
  std::string path_;
};

// True if `s` is valid UTF-8 with no control characters (U+0000..U+001F, U+007F).
bool IsCleanText(std::string_view s);

}  // namespace custody::protocol
