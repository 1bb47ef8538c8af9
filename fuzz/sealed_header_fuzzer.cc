// libFuzzer target for the sealed-model reader (docs/FORMAT.md §2–§5).
//
// Each input is treated as a whole sealed file and read three ways:
//  1. ParseHeader without a trusted key (what `custody inspect` does);
//  2. Open under the fixed DEK and vendor key of fuzz_fixtures.h, so mutations of a valid seed
//     that leave the header intact reach key derivation and the chunk path (sizes, tags, the
//     parallel error reporting);
//  3. the same after re-signing: the input's vendor key field is replaced by the fixed key and
//     its signed region signed again, so mutated headers get past the signature check and
//     exercise what sits behind it (field checks, the metadata JSON parser, size arithmetic).
// Properties checked beyond "no crash, no sanitizer report": whatever opens returns exactly
// plaintext_size bytes, and a header that parses has a sealed_size equal to the input's size
// whenever Open succeeded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/format/sealed.h"
#include "fuzz_fixtures.h"

namespace {

using namespace custody;

void CheckOpened(const Result<format::OpenedModel>& opened, size_t input_size) {
  if (!opened) return;
  const format::SealedHeader& h = opened->header;
  if (opened->plaintext.size() != h.plaintext_size) std::abort();
  if (h.sealed_size() != input_size) std::abort();
}

// Returns the input with its vendor key replaced by the fixed one and the signature redone, or
// an empty vector when the preamble does not frame a header and signature inside the input.
Bytes Resign(ByteSpan in) {
  if (in.size() < format::kPreambleBytes) return {};
  const uint64_t header_len = LoadBigEndian32(in.data() + 12);
  const uint64_t signed_len = format::kPreambleBytes + header_len;
  if (header_len < format::kHeaderFixedBytes ||
      header_len > format::kHeaderFixedBytes + format::kMaxMetadataBytes ||
      in.size() < signed_len + format::kSignatureBytes) {
    return {};
  }
  Bytes out(in.begin(), in.end());
  const auto& vendor = fuzz::FixedVendor();
  constexpr size_t kVendorKeyOffset = format::kPreambleBytes + 84;  // FORMAT.md §2.2
  std::memcpy(out.data() + kVendorKeyOffset, vendor.public_key().raw().data(),
              crypto::kEd25519PublicKeyBytes);
  Bytes message(format::kSignatureContext,
                format::kSignatureContext + sizeof(format::kSignatureContext));  // with its 0x00
  message.insert(message.end(), out.begin(), out.begin() + static_cast<ptrdiff_t>(signed_len));
  auto signature = vendor.Sign(message);
  if (!signature) std::abort();
  std::memcpy(out.data() + signed_len, signature->data(), signature->size());
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto dek = fuzz::FixedDek();
  const auto& vendor = fuzz::FixedVendor().public_key();
  const ByteSpan in(data, size);

  // 1. Inspection.
  auto header = format::ParseHeader(in, nullptr);
  if (header) {
    (void)header->chunk_count();
    (void)header->sealed_size();
    (void)header->vendor_fingerprint();
  }

  // 2. A device opening it with the right keys.
  format::OpenOptions options;
  options.threads = 1;
  options.now = fuzz::FixedNow();
  CheckOpened(format::Open(in, dek, vendor, options), size);

  // 3. Behind the signature. Two threads on odd sizes so the parallel path and its "lowest
  // failing chunk" reporting are fuzzed as well.
  Bytes resigned = Resign(in);
  if (!resigned.empty() && format::ParseHeader(resigned, &vendor)) {
    options.threads = 1 + static_cast<int>(size & 1);
    CheckOpened(format::Open(resigned, dek, vendor, options), size);
  }
  return 0;
}
