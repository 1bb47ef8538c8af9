// libFuzzer target for the device agent's metering journal (src/agent/journal.h): the file the
// agent reads at every start, which a failing disk or anyone with the state directory can change.
//
// Each input is a journal file. It is scanned as it is, and again "re-chained": the header hash,
// each record's second length field and each record hash recomputed, so mutated contents get past
// the checksums to the checks behind them (record structure, sequence, block order, allowance,
// names).
// Properties beyond "no crash, no sanitizer report": whatever a scan accepts is canonical
// (encoding its header and records again gives exactly the verified bytes, and the same chain);
// its counts add up and stay under the last block; the verified bytes alone scan the same with no
// torn tail; and when two records or more verified, changing any one byte before the last record
// is refused.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "agent/journal.h"

namespace {

using namespace custody;
using namespace custody::agent;

Bytes Rechained(ByteSpan input) {
  Bytes out(input.begin(), input.end());
  if (out.size() < kJournalHeaderBytes) return out;
  crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(out).first(kJournalHeaderHashedBytes));
  std::copy(chain.begin(), chain.end(), out.begin() + kJournalHeaderHashedBytes);
  size_t at = kJournalHeaderBytes;
  while (out.size() - at >= 8) {
    const uint32_t length = LoadBigEndian32(&out[at]);
    if (length < kJournalMinRecordBytes || length > kJournalMaxRecordBytes ||
        length > out.size() - at) {
      break;
    }
    StoreBigEndian32(&out[at + 4], ~length);
    const size_t hash_at = at + length - crypto::kSha256Bytes;
    chain = JournalRecordHash(chain, ByteSpan(out).subspan(at, hash_at - at));
    std::copy(chain.begin(), chain.end(), out.begin() + static_cast<ptrdiff_t>(hash_at));
    at += length;
  }
  return out;
}

void Check(ByteSpan file, size_t seed) {
  std::vector<JournalRecord> records;
  Result<JournalScan> scan =
      ScanJournal(file, "fuzz", [&](const JournalRecord& r) { records.push_back(r); });
  if (!scan) return;
  const JournalState& s = scan->state;
  if (s.bytes + scan->torn_tail_bytes != file.size()) std::abort();
  if ((scan->torn_tail_bytes == 0) != scan->torn_tail.empty()) std::abort();
  if (s.last_seq != records.size()) std::abort();
  uint64_t sum = 0;
  for (const auto& entry : s.served) {
    if (entry.second == 0) std::abort();
    sum += entry.second;
  }
  if (sum != s.served_total || s.last_block < s.counter_base || s.position() > s.last_block) {
    std::abort();
  }

  // Canonical: one encoding per journal.
  Bytes again = EncodeJournalHeader(s.counter_base, s.journal_id);
  crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(again).first(kJournalHeaderHashedBytes));
  size_t last_start = kJournalHeaderBytes;
  for (const JournalRecord& r : records) {
    last_start = again.size();
    EncodeJournalRecord(r, chain, again);
  }
  const ByteSpan verified = file.first(static_cast<size_t>(s.bytes));
  if (chain != s.chain ||
      !std::equal(again.begin(), again.end(), verified.begin(), verified.end())) {
    std::abort();
  }

  // The verified part alone: the same journal, nothing torn.
  Result<JournalScan> prefix = ScanJournal(verified, "fuzz");
  if (!prefix || prefix->torn_tail_bytes != 0 || prefix->state.last_seq != s.last_seq ||
      prefix->state.chain != s.chain || prefix->state.last_block != s.last_block ||
      prefix->state.served != s.served) {
    std::abort();
  }

  // Any change before the last record is refused, never taken for a torn tail.
  if (records.size() >= 2) {
    again[seed % last_start] ^= static_cast<uint8_t>(1 + (seed >> 8) % 255);
    if (ScanJournal(again, "fuzz").has_value()) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ByteSpan input(data, size);
  size_t seed = size;
  for (size_t i = 0; i < std::min<size_t>(size, 16); ++i) seed = seed * 131 + data[i];
  Check(input, seed);
  Check(Rechained(input), seed * 7 + 3);
  return 0;
}
