#include "core/protocol/json.h"

#include <algorithm>

namespace custody::protocol {
namespace {

// Nesting depth of `text`, counting brackets outside strings; -1 if it exceeds `limit` (stops
// early, so the scan is linear and bounded).
int NestingDepth(std::string_view text, int limit) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) return -1;
      max_depth = std::max(max_depth, depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

const char* TypeName(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::string:
      return "a string";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return "a number";
    default:
      return "an unexpected value";
  }
}

}  // namespace

bool IsCleanText(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int extra = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      extra = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<size_t>(extra) >= s.size()) return false;  // truncated sequence
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and values beyond Unicode are not UTF-8.
    const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += static_cast<size_t>(extra) + 1;
  }
  return true;
}

Result<nlohmann::json> ParseJsonObject(std::string_view text, size_t max_bytes,
                                       std::string_view what) {
  if (text.size() > max_bytes) {
    return InvalidArgument(std::string(what) + " is " + std::to_string(text.size()) +
                           " bytes, more than the " + std::to_string(max_bytes) + " allowed");
  }
  if (NestingDepth(text, kMaxJsonDepth) < 0) {
    return InvalidArgument(std::string(what) + " nests deeper than " +
                           std::to_string(kMaxJsonDepth) + " levels");
  }
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(std::string(what) + " is not valid JSON");
  if (!j.is_object()) {
    return InvalidArgument(std::string(what) + " must be a JSON object, got " + TypeName(j));
  }
  return j;
}

std::string JsonObject::FieldPath(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

Status JsonObject::FieldError(std::string_view key, std::string_view what) const {
  return InvalidArgument("field '" + FieldPath(key) + "': " + std::string(what));
}

bool JsonObject::Has(std::string_view key) const {
  auto it = json_->find(key);
  return it != json_->end() && !it->is_null();
}

Result<const nlohmann::json*> JsonObject::Get(std::string_view key) const {
  auto it = json_->find(key);
  if (it == json_->end() || it->is_null()) return FieldError(key, "missing");
  return &*it;
}

Result<std::string> JsonObject::String(std::string_view key, size_t max_len) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_string())
    return FieldError(key, std::string("expected a string, got ") + TypeName(*v));
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > max_len) {
    return FieldError(key, "longer than " + std::to_string(max_len) + " bytes");
  }
  if (!IsCleanText(s)) return FieldError(key, "contains control characters or invalid UTF-8");
  return s;
}

Result<uint64_t> JsonObject::Uint(std::string_view key, uint64_t max) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  uint64_t value = 0;
  if (v->is_number_unsigned()) {
    value = v->get<uint64_t>();
  } else if (v->is_number_integer() && v->get<int64_t>() >= 0) {
    value = static_cast<uint64_t>(v->get<int64_t>());
  } else {
    return FieldError(key, std::string("expected a non-negative integer, got ") + TypeName(*v));
  }
  if (value > max) return FieldError(key, "larger than " + std::to_string(max));
  return value;
}

Result<bool> JsonObject::Bool(std::string_view key) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_boolean())
    return FieldError(key, std::string("expected true or false, got ") + TypeName(*v));
  return v->get<bool>();
}

Result<Bytes> JsonObject::Base64(std::string_view key, size_t max_len) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_string()) return FieldError(key, std::string("expected base64, got ") + TypeName(*v));
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > (max_len + 2) / 3 * 4) {
    return FieldError(key, "longer than " + std::to_string(max_len) + " bytes");
  }
  Result<Bytes> bytes = Base64Decode(s);
  if (!bytes) return FieldError(key, bytes.error().message());
  // The length check above lets up to two bytes more through (4 characters hold 3 bytes).
  if (bytes->size() > max_len) {
    return FieldError(key, "longer than " + std::to_string(max_len) + " bytes");
  }
  return bytes;
}

Result<Bytes> JsonObject::Hex(std::string_view key, size_t len) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  const std::string expected = "expected " + std::to_string(2 * len) + " hex digits";
  if (!v->is_string()) return FieldError(key, expected + ", got " + TypeName(*v));
  const std::string& s = v->get_ref<const std::string&>();
  Result<Bytes> bytes = s.size() == 2 * len ? HexDecode(s) : Result<Bytes>(InvalidArgument(""));
  if (!bytes) return FieldError(key, expected);
  return bytes;
}

Result<JsonObject> JsonObject::Object(std::string_view key) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_object())
    return FieldError(key, std::string("expected an object, got ") + TypeName(*v));
  return JsonObject(*v, FieldPath(key));
}

Result<std::vector<JsonObject>> JsonObject::Objects(std::string_view key, size_t max_items) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_array()) return FieldError(key, std::string("expected an array, got ") + TypeName(*v));
  if (v->size() > max_items) {
    return FieldError(key, "more than " + std::to_string(max_items) + " items");
  }
  std::vector<JsonObject> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& item = (*v)[i];
    const std::string item_path = FieldPath(key) + "[" + std::to_string(i) + "]";
    if (!item.is_object()) {
      return InvalidArgument("field '" + item_path + "': expected an object, got " +
                             TypeName(item));
    }
    out.emplace_back(item, item_path);
  }
  return out;
}

Result<std::vector<std::string>> JsonObject::Strings(std::string_view key, size_t max_items,
                                                     size_t max_len) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_array()) return FieldError(key, std::string("expected an array, got ") + TypeName(*v));
  if (v->size() > max_items) {
    return FieldError(key, "more than " + std::to_string(max_items) + " items");
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& item = (*v)[i];
    const std::string item_path = FieldPath(key) + "[" + std::to_string(i) + "]";
    if (!item.is_string() || item.get_ref<const std::string&>().size() > max_len ||
        !IsCleanText(item.get_ref<const std::string&>())) {
      return InvalidArgument("field '" + item_path + "': expected a string of at most " +
                             std::to_string(max_len) + " printable bytes");
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

Result<std::string> JsonObject::Pem(std::string_view key, size_t max_len) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_string())
    return FieldError(key, std::string("expected PEM text, got ") + TypeName(*v));
  const std::string& s = v->get_ref<const std::string&>();
  if (s.size() > max_len)
    return FieldError(key, "longer than " + std::to_string(max_len) + " bytes");
  const bool printable = std::all_of(
      s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r' || (c >= 0x20 && c < 0x7f); });
  if (!printable || s.rfind("-----BEGIN ", 0) != 0) return FieldError(key, "expected PEM text");
  return s;
}

Result<std::vector<uint64_t>> JsonObject::Uints(std::string_view key, size_t max_items,
                                                uint64_t max) const {
  CUSTODY_ASSIGN_OR_RETURN(const nlohmann::json* v, Get(key));
  if (!v->is_array()) return FieldError(key, std::string("expected an array, got ") + TypeName(*v));
  if (v->size() > max_items) {
    return FieldError(key, "more than " + std::to_string(max_items) + " items");
  }
  std::vector<uint64_t> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& item = (*v)[i];
    const bool ok =
        item.is_number_unsigned() || (item.is_number_integer() && item.get<int64_t>() >= 0);
    if (!ok || item.get<uint64_t>() > max) {
      return InvalidArgument("field '" + FieldPath(key) + "[" + std::to_string(i) +
                             "]': expected an integer from 0 to " + std::to_string(max));
    }
    out.push_back(item.get<uint64_t>());
  }
  return out;
}

Result<std::optional<std::string>> JsonObject::OptionalString(std::string_view key,
                                                              size_t max_len) const {
  if (!Has(key)) return std::optional<std::string>();
  CUSTODY_ASSIGN_OR_RETURN(std::string s, String(key, max_len));
  return std::optional<std::string>(std::move(s));
}

Result<std::optional<uint64_t>> JsonObject::OptionalUint(std::string_view key, uint64_t max) const {
  if (!Has(key)) return std::optional<uint64_t>();
  CUSTODY_ASSIGN_OR_RETURN(uint64_t v, Uint(key, max));
  return std::optional<uint64_t>(v);
}

Result<std::optional<Bytes>> JsonObject::OptionalBase64(std::string_view key,
                                                        size_t max_len) const {
  if (!Has(key)) return std::optional<Bytes>();
  CUSTODY_ASSIGN_OR_RETURN(Bytes b, Base64(key, max_len));
  return std::optional<Bytes>(std::move(b));
}

Result<std::optional<JsonObject>> JsonObject::OptionalObject(std::string_view key) const {
  if (!Has(key)) return std::optional<JsonObject>();
  CUSTODY_ASSIGN_OR_RETURN(JsonObject o, Object(key));
  return std::optional<JsonObject>(std::move(o));
}

std::vector<std::string> JsonObject::Keys() const {
  std::vector<std::string> keys;
  for (auto it = json_->begin(); it != json_->end(); ++it) keys.push_back(it.key());
  return keys;
}

Status JsonObject::RejectUnknown(std::initializer_list<std::string_view> known) const {
  for (auto it = json_->begin(); it != json_->end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) == known.end()) {
      return InvalidArgument("field '" + FieldPath(it.key()) +
                             "' is not part of this message (misspelled?)");
    }
  }
  return OkStatus();
}

}  // namespace custody::protocol
