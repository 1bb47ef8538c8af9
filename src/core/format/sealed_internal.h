// Internals of sealed format v1 shared by the writer and the reader (not a public API).
#pragma once

#include "core/format/sealed.h"

namespace custody::format {

struct PreambleFields {
  uint16_t version = 0;
  uint32_t header_len = 0;
};

struct DerivedKeys {
  SecretBuffer payload_key;
  std::array<uint8_t, kCommitmentBytes> commitment{};
};

uint64_t ChunkCount(uint64_t plaintext_size, uint8_t chunk_size_log2);
Result<PreambleFields> ParsePreamble(ByteSpan bytes);
Result<ModelInfo> ParseMetadataJson(std::string_view text);
// preamble ‖ header body for `h` (metadata re-encoded from h.info).
Result<Bytes> EncodeSignedRegion(const SealedHeader& h);
// "custody/sealed-model/v1" ‖ 0x00 ‖ signed_region.
Bytes SignatureMessage(ByteSpan signed_region);
Result<DerivedKeys> DeriveKeys(ByteSpan dek, ByteSpan salt);
// The decryption step of Open() into a caller-provided buffer of plaintext_size bytes; wipes
// `plain` on any failure. Exposed so tests can observe the wipe.
Status DecryptBytesInto(const SealedHeader& header, ByteSpan sealed, ByteSpan dek,
                        const OpenOptions& options, SecretBuffer& plain);
void ChunkNonce(const SealedHeader& h, uint64_t index, uint8_t out[crypto::kGcmNonceBytes]);

}  // namespace custody::format
