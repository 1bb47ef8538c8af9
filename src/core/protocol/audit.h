// The custodian's audit log (DESIGN.md §11): append-only and hash-chained, so that an export
// can be checked offline (`custody admin audit verify FILE`) and any altered, inserted, removed
// or reordered row is detected. Pure code, shared by the custodian (which appends) and the CLI
// (which verifies). docs/PROTOCOL.md §15 specifies it:
//
//   hash(e) = SHA-256("custody/audit/v1" 0x00 ‖ prev_hash (32) ‖ uint64 seq ‖
//                     str(time) ‖ str(actor) ‖ str(action) ‖ str(subject) ‖ str(details))
//   str(s)  = uint32 byte length ‖ bytes        (big-endian integers)
//   prev_hash of the first entry = 32 zero bytes; seq starts at 1 and has no gaps
//
// `details` is kept as the exact JSON text that was hashed; nothing is re-serialised to verify.
// Export format: one JSON object per line, {"seq", "time", "actor", "action", "subject",
// "details" (the JSON text, as a string), "prev_hash" (hex), "hash" (hex)}.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::protocol {

struct AuditEntry {
  uint64_t seq = 0;
  std::string time;     // RFC 3339 UTC, seconds
  std::string actor;    // "admin:alice", "device:dev_…", "policy", "system"
  std::string action;   // "model.register", "licence.create", "lease.issue", …
  std::string subject;  // the id acted upon
  std::string details;  // compact JSON object text
  crypto::Sha256Digest prev_hash{};
  crypto::Sha256Digest hash{};
};

// The chained hash of `e` (ignores e.hash).
crypto::Sha256Digest AuditEntryHash(const AuditEntry& e);

// Fills seq, prev_hash and hash of `e` to follow `previous` (nullptr for the first entry).
void ChainAuditEntry(AuditEntry& e, const AuditEntry* previous);

// Checks a contiguous run of entries: each hash, each link, seq without gaps. If the run does
// not start at seq 1, `anchor` (the hash of the entry before it) must be given. kDataLoss names
// the first bad entry and what is wrong with it.
Status VerifyAuditChain(std::span<const AuditEntry> entries,
                        std::optional<crypto::Sha256Digest> anchor = std::nullopt);

// One export line (no trailing newline) and its parser (strict; kInvalidArgument per field).
std::string AuditEntryToJsonLine(const AuditEntry& e);
Result<AuditEntry> AuditEntryFromJsonLine(std::string_view line);

}  // namespace custody::protocol
