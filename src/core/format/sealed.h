// Sealed model format, version 1 (DESIGN.md §5; byte-level spec in docs/FORMAT.md).
//
// A sealed model is one file that may be shipped in the clear:
//
//   preamble (16) ‖ header body (header_len) ‖ signature (64) ‖ chunk 0 ‖ … ‖ chunk n-1
//
//   preamble    = magic "CUSTODYM" ‖ version u16 ‖ reserved u16 (0) ‖ header_len u32
//   header body = suite u8 ‖ chunk_size_log2 u8 ‖ reserved u16 (0) ‖ plaintext_size u64 ‖
//                 salt[32] ‖ nonce_prefix[7] ‖ reserved u8 (0) ‖ key_commitment[32] ‖
//                 vendor_public_key[32] ‖ metadata_len u32 ‖ metadata (UTF-8 JSON)
//   signature   = Ed25519(vendor key, "custody/sealed-model/v1" ‖ 0x00 ‖ preamble ‖ header body)
//   chunk i     = AES-256-GCM(payload_key, nonce_i, aad = header_hash, plaintext_i) ‖ tag[16]
//   nonce_i     = nonce_prefix ‖ u32 i ‖ (0x01 if i is the last chunk else 0x00)
//   header_hash = SHA-256(preamble ‖ header body)
//   payload_key    = HKDF-SHA256(ikm = DEK, salt, info = "custody/sealed-model/v1/payload-key")
//   key_commitment = HKDF-SHA256(ikm = DEK, salt, info = "custody/sealed-model/v1/key-commitment")
//
// Integers are big-endian. Every chunk holds chunk_size plaintext bytes except the last, which
// holds the rest (an empty model is one empty chunk). The file size is therefore fixed by the
// header, so truncation and appended data are found before any decryption.
//
// Security properties: confidentiality and integrity of every byte; per-file subkey (random
// salt) so nonces never repeat across files sealed with one DEK; STREAM nonces with the header
// hash as AAD so reordering, dropping, duplicating, truncating or splicing chunks between files
// fails; key commitment so a ciphertext cannot open under two keys; vendor signature over the
// header, checked before the header is parsed.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "core/base/bytes.h"
#include "core/base/file.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::format {

// ----- wire constants (docs/FORMAT.md §2) ---------------------------------------------------
inline constexpr std::array<uint8_t, 8> kMagic = {'C', 'U', 'S', 'T', 'O', 'D', 'Y', 'M'};
inline constexpr uint16_t kFormatVersion = 1;
inline constexpr size_t kPreambleBytes = 16;
inline constexpr size_t kHeaderFixedBytes = 120;  // header body up to and including metadata_len
inline constexpr size_t kSignatureBytes = crypto::kEd25519SignatureBytes;
inline constexpr size_t kTagBytes = crypto::kGcmTagBytes;
inline constexpr uint32_t kMaxMetadataBytes = 64 * 1024;
inline constexpr uint8_t kSuiteAes256GcmHkdfSha256Ed25519 = 1;
inline constexpr uint8_t kMinChunkSizeLog2 = 4;       // 16 bytes: legal, used by tests and the spec
inline constexpr uint8_t kMaxChunkSizeLog2 = 24;      // 16 MiB: bounds memory while sealing
inline constexpr uint8_t kDefaultChunkSizeLog2 = 20;  // 1 MiB
inline constexpr uint64_t kMaxChunks = 1ull << 32;    // the chunk index is a u32
inline constexpr size_t kSaltBytes = 32;
inline constexpr size_t kNoncePrefixBytes = 7;
inline constexpr size_t kCommitmentBytes = 32;
inline constexpr size_t kDekBytes = 32;
inline constexpr char kSignatureContext[] = "custody/sealed-model/v1";  // followed by 0x00
inline constexpr char kPayloadKeyInfo[] = "custody/sealed-model/v1/payload-key";
inline constexpr char kCommitmentInfo[] = "custody/sealed-model/v1/key-commitment";

// The signed, human-meaningful part of the header (the metadata JSON object).
struct ModelInfo {
  std::string model_id;  // 32 lower-case hex digits (128 random bits), unique per sealing
  std::string name;      // 1..128 printable characters
  std::string version;   // 1..64 printable characters
  std::string engine;    // [a-z0-9_-]{1,32}: "torchscript", "onnx" or a plugin's name
  std::string created;   // RFC 3339 UTC, seconds: "2026-11-23T19:00:00Z"
  std::optional<std::string> not_after;     // RFC 3339 UTC; absent = no expiry in the file
  std::map<std::string, std::string> meta;  // free metadata (input/output schema, labels...)
};

struct SealedHeader {
  uint16_t version = 0;
  uint8_t suite = 0;
  uint8_t chunk_size_log2 = 0;
  uint64_t plaintext_size = 0;
  std::array<uint8_t, kSaltBytes> salt{};
  std::array<uint8_t, kNoncePrefixBytes> nonce_prefix{};
  std::array<uint8_t, kCommitmentBytes> key_commitment{};
  std::array<uint8_t, crypto::kEd25519PublicKeyBytes> vendor_key{};
  ModelInfo info;
  Bytes signed_region;  // preamble ‖ header body, exactly as in the file
  std::array<uint8_t, kSignatureBytes> signature{};
  crypto::Sha256Digest header_hash{};  // SHA-256(signed_region): AAD of every chunk

  uint64_t chunk_size() const { return uint64_t{1} << chunk_size_log2; }
  uint64_t chunk_count() const;
  uint64_t payload_offset() const { return signed_region.size() + kSignatureBytes; }
  uint64_t sealed_size() const;  // total file size implied by the header
  std::string vendor_fingerprint() const;
};

// ----- sealing -----------------------------------------------------------------------------
// Inputs that are random in production; tests and the spec's worked example fix them.
struct SealDeterminism {
  std::optional<std::array<uint8_t, kSaltBytes>> salt;
  std::optional<std::array<uint8_t, kNoncePrefixBytes>> nonce_prefix;
};

struct SealOptions {
  ModelInfo info;  // model_id and created are filled in when empty
  uint8_t chunk_size_log2 = kDefaultChunkSizeLog2;
  // Called after each chunk with (plaintext bytes done, total). May be empty.
  std::function<void(uint64_t, uint64_t)> progress;
  SealDeterminism determinism;
};

// Reads the next `out.size()` plaintext bytes; returns the number read (0 only at the end).
using ChunkSource = std::function<Result<size_t>(MutableByteSpan out)>;
using ByteSink = std::function<Status(ByteSpan bytes)>;

// Streams `plaintext_size` bytes from `source` into `sink` as a sealed model. Memory use is one
// chunk regardless of the model size. Fails with kDataLoss if the source yields a different
// number of bytes than announced (the model changed while being sealed).
Status Seal(const ChunkSource& source, uint64_t plaintext_size, ByteSpan dek,
            const crypto::Ed25519PrivateKey& vendor, const SealOptions& options,
            const ByteSink& sink);

// Convenience wrappers.
Result<Bytes> SealBytes(ByteSpan plaintext, ByteSpan dek, const crypto::Ed25519PrivateKey& vendor,
                        const SealOptions& options);
// Seals the file at model_path into out_path atomically (nothing appears at out_path unless the
// whole file was written and fsync'd).
Status SealFile(const std::string& model_path, const std::string& out_path, ByteSpan dek,
                const crypto::Ed25519PrivateKey& vendor, const SealOptions& options,
                Overwrite overwrite);

// ----- reading -----------------------------------------------------------------------------
// Parses and authenticates the header at the start of `bytes` (which may be the whole file or
// only its first payload_offset() bytes). The signature is verified BEFORE anything but the
// preamble and the fixed-offset vendor key is interpreted:
//  - with `trusted_vendor`, the header must name exactly that key (else kUnauthenticated
//    "sealed by a different vendor key") and the signature must verify under it;
//  - without it (inspection), the signature must verify under the key the header names, which
//    proves integrity but not who sealed it.
// Errors: kInvalidArgument (not a sealed model: bad magic), kUnimplemented (unsupported
// version or suite), kDataLoss (truncated or malformed header), kUnauthenticated (signature).
Result<SealedHeader> ParseHeader(ByteSpan bytes, const crypto::Ed25519PublicKey* trusted_vendor);
Result<SealedHeader> ReadHeaderFromFile(const std::string& path,
                                        const crypto::Ed25519PublicKey* trusted_vendor);

struct OpenOptions {
  int threads = 0;  // 0 = all cores
  SecretBacking backing = SecretBacking::kLocked;
  // The time against which not_after is checked; defaults to now. Injected by tests.
  std::optional<std::chrono::system_clock::time_point> now;
};

struct OpenedModel {
  SealedHeader header;
  SecretBuffer plaintext;  // the model bytes, in protected memory
};

// Authenticates the header, checks the key commitment, the size and the expiry, then decrypts
// every chunk in parallel straight into one SecretBuffer. The buffer is returned only when
// every tag verified; on any failure everything decrypted so far is wiped.
// Errors as ParseHeader, plus kUnauthenticated "key does not match this sealed model (key
// commitment mismatch)", kDataLoss "truncated"/"trailing bytes"/"chunk i of n failed
// authentication", kFailedPrecondition "expired".
Result<OpenedModel> Open(ByteSpan sealed, ByteSpan dek, const crypto::Ed25519PublicKey& vendor,
                         const OpenOptions& options = {});
// The same from a file, read with preadv straight into the destination and decrypted in place.
Result<OpenedModel> OpenFile(const std::string& path, ByteSpan dek,
                             const crypto::Ed25519PublicKey& vendor,
                             const OpenOptions& options = {});

// ----- DEK files ---------------------------------------------------------------------------
// A DEK file holds the 32-byte key as 64 hex digits and a newline, mode 0600.
Result<SecretBuffer> GenerateDek();
Status WriteDekFile(const std::string& path, ByteSpan dek, Overwrite overwrite);
Result<SecretBuffer> ReadDekFile(const std::string& path);

// ----- helpers shared with the CLI -----------------------------------------------------------
// Accepts "YYYY-MM-DD" (meaning the end of that day, 23:59:59Z) or "YYYY-MM-DDTHH:MM:SSZ" and
// returns the normalised RFC 3339 form.
Result<std::string> NormaliseTimestamp(std::string_view text);
// Seconds precision on purpose: the format allows years up to 9999, and a nanosecond
// system_clock::time_point overflows after 2262.
Result<std::chrono::sys_seconds> ParseTimestamp(std::string_view rfc3339);
std::string FormatTimestamp(std::chrono::sys_seconds t);
Status ValidateModelInfo(const ModelInfo& info);
std::string MetadataJson(const ModelInfo& info);

}  // namespace custody::format
