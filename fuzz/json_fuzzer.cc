// libFuzzer target for the strict JSON reader every Custody message goes through
// (src/core/protocol/json.h): ParseJsonObject's size and depth limits, and each typed getter of
// JsonObject on every key of every nested object, whatever its type.
//
// The first input byte picks the getters' limits (so both "fits" and "too long" paths run), the
// rest is the document.
// Properties beyond "no crash, no sanitizer report": what a getter returns obeys its contract
// (clean text within max_len, exactly `len` bytes of hex, base64 within max_len, integers within
// max), an accepted document nests at most kMaxJsonDepth levels, and IsCleanText agrees with a
// round trip through nlohmann's strict UTF-8 dump.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/protocol/json.h"

namespace {

using namespace custody;
using namespace custody::protocol;

int Depth(const nlohmann::json& j) {
  int deepest = 0;
  if (j.is_object() || j.is_array()) {
    for (const auto& child : j) deepest = std::max(deepest, Depth(child));
    return deepest + 1;
  }
  return 0;
}

void Getters(const JsonObject& o, size_t limit, int depth) {
  if (depth > kMaxJsonDepth) std::abort();
  const uint64_t max = uint64_t{1} << (limit % 64);
  for (const std::string& key : o.Keys()) {
    if (auto s = o.String(key, limit)) {
      if (s->size() > limit || !IsCleanText(*s)) std::abort();
    }
    if (auto u = o.Uint(key, max); u && *u > max) std::abort();
    o.Bool(key).status().IgnoreError();
    if (auto b = o.Base64(key, limit); b && b->size() > limit) std::abort();
    if (auto h = o.Hex(key, limit % 40); h && h->size() != limit % 40) std::abort();
    if (auto p = o.Pem(key, limit * 8);
        p && (p->size() > limit * 8 || p->rfind("-----BEGIN ", 0) != 0))
      std::abort();
    if (auto us = o.Uints(key, limit % 30, max)) {
      if (us->size() > limit % 30) std::abort();
      for (uint64_t u : *us) {
        if (u > max) std::abort();
      }
    }
    if (auto ss = o.Strings(key, limit % 30, limit)) {
      for (const std::string& s : *ss) {
        if (s.size() > limit || !IsCleanText(s)) std::abort();
      }
    }
    o.OptionalString(key, limit).status().IgnoreError();
    o.OptionalUint(key, max).status().IgnoreError();
    o.OptionalBase64(key, limit).status().IgnoreError();
    o.OptionalObject(key).status().IgnoreError();
    if (auto child = o.Object(key)) Getters(*child, limit, depth + 1);
    if (auto children = o.Objects(key, limit % 30)) {
      for (const JsonObject& child : *children) Getters(child, limit, depth + 1);
    }
  }
  o.RejectUnknown({"a", "b"}).IgnoreError();
  (void)o.Has("");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t limit = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

  // IsCleanText on raw bytes: clean text is valid UTF-8, which nlohmann's strict dump accepts.
  if (IsCleanText(text)) {
    nlohmann::json s = std::string(text);
    (void)s.dump();  // throws (and so aborts) on invalid UTF-8
  }

  Result<nlohmann::json> doc = ParseJsonObject(text, 64 * 1024, "fuzz input");
  if (!doc) return 0;
  if (!doc->is_object() || Depth(*doc) > kMaxJsonDepth) std::abort();
  Getters(JsonObject(*doc, ""), limit, 1);
  return 0;
}
