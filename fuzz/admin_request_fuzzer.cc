// libFuzzer target for the custodian's admin API requests (src/custodian/admin_requests.h): every
// POST body and the query parameters of the admin reads, as a token holder sends them.
//
// The first input byte picks the parser, the rest is the body (or the query string):
//   0 model registration   1 model retirement   2 group   3 golden set   4 enrollment token
//   5 licence   6 extension approval   7 extension denial   8 revocation   9 API token
//   10 a query string, split and decoded as the server does (http::ParseQuery), then read by
//      QueryUint (the audit and event parameters) and ParseExtensionStatusFilter.
// Properties beyond "no crash, no sanitizer report, no leak": every accepted spec is within the
// limits the service relies on (lengths, ranges, PCR indices, a 32-byte DEK).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/protocol/json.h"
#include "custodian/admin_requests.h"
#include "http/url.h"

namespace {

using namespace custody;
using namespace custody::custodian;

void Check(bool ok) {
  if (!ok) std::abort();
}

bool Text(const std::string& s, size_t max_len) {
  return s.size() <= max_len && protocol::IsCleanText(s);
}

void ReadQuery(std::string_view text) {
  Result<std::map<std::string, std::string>> query = http::ParseQuery(text);
  if (!query) return;
  for (const auto& [key, value] : *query) Check(Text(key, SIZE_MAX) && Text(value, SIZE_MAX));
  if (auto after = QueryUint(*query, "after", 0, UINT64_MAX)) {
    Check(query->count("after") == 1 || *after == 0);
  }
  if (auto limit = QueryUint(*query, "limit", 1000, 10000)) Check(*limit <= 10000);
  if (auto wait = QueryUint(*query, "wait_ms", 25000, 55000)) Check(*wait <= 55000);
  ParseExtensionStatusFilter(*query).status().IgnoreError();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 11) {
    case 0:
      if (auto m = ParseModelRegistration(body)) {
        Check(Text(m->model_id, 32) && Text(m->name, 128) && Text(m->version, 64) &&
              m->dek.size() == 32 && Text(m->sealed_sha256, 64));
      }
      break;
    case 1:
      if (auto reason = ParseModelRetirement(body)) Check(Text(*reason, 512));
      break;
    case 2:
      if (auto g = ParseGroupRequest(body)) {
        Check(Text(g->name, 64) && g->pcrs.size() <= 24);
        for (uint32_t pcr : g->pcrs) Check(pcr <= 23);
      }
      break;
    case 3:
      if (auto s = ParseGoldenSetRequest(body)) {
        Check(Text(s->name, 64));
        for (const auto& [index, value] : s->pcrs) Check(index < tpm::kPcrCount);
      }
      break;
    case 4:
      if (auto t = ParseEnrollmentTokenRequest(body)) {
        Check(Text(t->group, 64) && t->ttl.count() >= 0 && t->ttl.count() <= 30 * 24 * 3600);
      }
      break;
    case 5:
      if (auto l = ParseLicenceRequest(body)) {
        Check(Text(l->model_id, 64) && Text(l->device_id, 64) && Text(l->group, 64) &&
              l->budget <= (uint64_t{1} << 48) &&
              l->offline_grace_ms <= 365ull * 24 * 3600 * 1000 &&
              l->extension.auto_approve_up_to <= (uint64_t{1} << 48) &&
              l->extension.period_seconds <= 366ull * 24 * 3600);
      }
      break;
    case 6:
      if (auto granted = ParseExtensionApproval(body)) Check(*granted <= (uint64_t{1} << 40));
      break;
    case 7:
      if (auto reason = ParseExtensionDenial(body)) Check(Text(*reason, 512));
      break;
    case 8:
      if (auto r = ParseRevocationRequest(body)) {
        Check(Text(r->scope, 16) && Text(r->id, 64) && Text(r->reason, 512));
      }
      break;
    case 9:
      if (auto t = ParseTokenRequest(body)) Check(Text(t->name, 64));
      break;
    case 10:
      ReadQuery(body);
      break;
  }
  return 0;
}
