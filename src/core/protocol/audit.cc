#include "core/protocol/audit.h"

#include <algorithm>

#include "core/protocol/json.h"

namespace custody::protocol {
namespace {

constexpr std::string_view kAuditContext = "custody/audit/v1";
constexpr size_t kMaxAuditLineBytes = 1 << 20;

void AppendString(Bytes& out, std::string_view s) {
  AppendBigEndian32(out, static_cast<uint32_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

Status BadEntry(const AuditEntry& e, const std::string& what) {
  return DataLoss("audit entry " + std::to_string(e.seq) + ": " + what +
                  " (the log was altered, or rows were removed or reordered)");
}

}  // namespace

crypto::Sha256Digest AuditEntryHash(const AuditEntry& e) {
  Bytes msg(kAuditContext.begin(), kAuditContext.end());
  msg.push_back(0);
  msg.insert(msg.end(), e.prev_hash.begin(), e.prev_hash.end());
  AppendBigEndian64(msg, e.seq);
  AppendString(msg, e.time);
  AppendString(msg, e.actor);
  AppendString(msg, e.action);
  AppendString(msg, e.subject);
  AppendString(msg, e.details);
  return crypto::Sha256(msg);
}

void ChainAuditEntry(AuditEntry& e, const AuditEntry* previous) {
  e.seq = previous == nullptr ? 1 : previous->seq + 1;
  e.prev_hash = previous == nullptr ? crypto::Sha256Digest{} : previous->hash;
  e.hash = AuditEntryHash(e);
}

Status VerifyAuditChain(std::span<const AuditEntry> entries,
                        std::optional<crypto::Sha256Digest> anchor) {
  if (entries.empty()) return OkStatus();
  // Entries are numbered from 1; a 0 is an altered entry or a sequence that wrapped around.
  for (const AuditEntry& e : entries) {
    if (e.seq == 0) return BadEntry(e, "entry numbers start at 1");
  }
  if (entries.front().seq != 1 && !anchor) {
    return InvalidArgument("the export starts at entry " + std::to_string(entries.front().seq) +
                           "; give the hash of entry " + std::to_string(entries.front().seq - 1) +
                           " to check it");
  }
  crypto::Sha256Digest expected_prev = anchor.value_or(crypto::Sha256Digest{});
  uint64_t expected_seq = entries.front().seq;
  for (const AuditEntry& e : entries) {
    if (e.seq != expected_seq) {
      return BadEntry(e, "expected entry " + std::to_string(expected_seq) + " here");
    }
    if (e.prev_hash != expected_prev) return BadEntry(e, "does not link to the entry before it");
    if (AuditEntryHash(e) != e.hash) return BadEntry(e, "its content does not match its hash");
    expected_prev = e.hash;
    ++expected_seq;
  }
  return OkStatus();
}

std::string AuditEntryToJsonLine(const AuditEntry& e) {
  nlohmann::json j{{"seq", e.seq},
                   {"time", e.time},
                   {"actor", e.actor},
                   {"action", e.action},
                   {"subject", e.subject},
                   {"details", e.details},
                   {"prev_hash", HexEncode(e.prev_hash)},
                   {"hash", HexEncode(e.hash)}};
  return j.dump();
}

Result<AuditEntry> AuditEntryFromJsonLine(std::string_view line) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json j,
                           ParseJsonObject(line, kMaxAuditLineBytes, "audit entry"));
  JsonObject o(j, "");
  CUSTODY_RETURN_IF_ERROR(o.RejectUnknown(
      {"seq", "time", "actor", "action", "subject", "details", "prev_hash", "hash"}));
  AuditEntry e;
  CUSTODY_ASSIGN_OR_RETURN(e.seq, o.Uint("seq"));
  CUSTODY_ASSIGN_OR_RETURN(e.time, o.String("time", 64));
  CUSTODY_ASSIGN_OR_RETURN(e.actor, o.String("actor", 256));
  CUSTODY_ASSIGN_OR_RETURN(e.action, o.String("action", 128));
  CUSTODY_ASSIGN_OR_RETURN(e.subject, o.String("subject", 256));
  // details is JSON text; it may legitimately hold escaped control characters, never raw ones.
  CUSTODY_ASSIGN_OR_RETURN(e.details, o.String("details", kMaxAuditLineBytes));
  CUSTODY_ASSIGN_OR_RETURN(Bytes prev, o.Hex("prev_hash", 32));
  CUSTODY_ASSIGN_OR_RETURN(Bytes hash, o.Hex("hash", 32));
  std::copy(prev.begin(), prev.end(), e.prev_hash.begin());
  std::copy(hash.begin(), hash.end(), e.hash.begin());
  return e;
}

}  // namespace custody::protocol
