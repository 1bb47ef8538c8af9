// libFuzzer target for the audit-log export (src/core/protocol/audit.h): the JSON-lines file
// `custody admin audit verify FILE` reads, which may come from anywhere.
//
// Each input is an export: lines are parsed with AuditEntryFromJsonLine and the entries that parse
// are checked with VerifyAuditChain, from seq 1 and behind a fixed anchor. Then the same entries
// are chained afresh (ChainAuditEntry), so mutated contents reach the hash and link checks of a
// chain that is otherwise valid, and again continuing from the export's first seq behind the
// anchor.
// Properties beyond "no crash, no sanitizer report": every parsed entry writes and reads back
// identically; a chain VerifyAuditChain accepts has strictly increasing seq from 1 (or from the
// entry after the anchor); a freshly chained run verifies, from its start and from any entry with
// the hash before it as the anchor, and stops verifying when any entry is changed.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "core/protocol/audit.h"

namespace {

using namespace custody;
using namespace custody::protocol;

bool SameEntry(const AuditEntry& a, const AuditEntry& b) {
  return a.seq == b.seq && a.time == b.time && a.actor == b.actor && a.action == b.action &&
         a.subject == b.subject && a.details == b.details && a.prev_hash == b.prev_hash &&
         a.hash == b.hash;
}

// What an accepted chain must look like: seq without gaps or wrap-around.
void CheckAccepted(std::span<const AuditEntry> entries, bool anchored) {
  if (entries.empty()) return;
  if (entries.front().seq == 0 || (!anchored && entries.front().seq != 1)) std::abort();
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].seq != entries[i - 1].seq + 1 || entries[i].seq == 0) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<AuditEntry> entries;
  while (!text.empty() && entries.size() < 64) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    Result<AuditEntry> e = AuditEntryFromJsonLine(line);
    if (!e) continue;
    Result<AuditEntry> again = AuditEntryFromJsonLine(AuditEntryToJsonLine(*e));
    if (!again || !SameEntry(*again, *e)) std::abort();
    entries.push_back(std::move(e).value());
  }

  // As exported.
  if (VerifyAuditChain(entries).ok()) CheckAccepted(entries, false);
  crypto::Sha256Digest anchor{};
  anchor.fill(0xa5);
  if (VerifyAuditChain(entries, anchor).ok()) CheckAccepted(entries, true);
  if (entries.empty()) return 0;

  // Chained afresh from seq 1: must verify, also as a tail behind its predecessor's hash.
  std::vector<AuditEntry> chained = entries;
  for (size_t i = 0; i < chained.size(); ++i) {
    ChainAuditEntry(chained[i], i == 0 ? nullptr : &chained[i - 1]);
  }
  if (!VerifyAuditChain(chained).ok()) std::abort();
  const size_t cut = size % chained.size();
  if (cut > 0) {
    std::span<const AuditEntry> tail(chained.begin() + static_cast<ptrdiff_t>(cut), chained.end());
    if (!VerifyAuditChain(tail, chained[cut - 1].hash).ok()) std::abort();
    if (VerifyAuditChain(tail).ok()) std::abort();  // no anchor for a tail
  }
  // Chained afresh behind the anchor, continuing from the first entry's seq as exported.
  std::vector<AuditEntry> continued = entries;
  AuditEntry before;
  before.seq = entries.front().seq - 1;
  before.hash = anchor;
  for (size_t i = 0; i < continued.size(); ++i) {
    ChainAuditEntry(continued[i], i == 0 ? &before : &continued[i - 1]);
  }
  if (VerifyAuditChain(continued, anchor).ok()) CheckAccepted(continued, true);

  // Any change to one entry breaks it.
  AuditEntry& victim = chained[size % chained.size()];
  victim.details += ' ';
  if (VerifyAuditChain(chained).ok()) std::abort();
  return 0;
}
