// Cryptographic primitives of Custody, all on OpenSSL 3 EVP. Nothing here is hand-rolled.
//
// Contract:
//  - every function returns Status/Result; OpenSSL failures become kInternal with the OpenSSL
//    error queue text, bad caller input becomes kInvalidArgument, failed authentication (tag,
//    signature) becomes kUnauthenticated without saying more than which check failed;
//  - secret outputs (derived keys, decrypted bytes, shared secrets, private key encodings) are
//    returned in SecretBuffer; decrypted output is wiped when the tag does not verify;
//  - all objects are immutable after creation and safe to use from several threads, except
//    AesGcm, which holds a cipher context and must be used from one thread at a time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/openssl_ptr.h"

namespace custody::crypto {

inline constexpr size_t kAes256KeyBytes = 32;
inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;
inline constexpr size_t kSha256Bytes = 32;
inline constexpr size_t kEd25519PublicKeyBytes = 32;
inline constexpr size_t kEd25519SignatureBytes = 64;
inline constexpr size_t kP256PublicKeyBytes = 65;  // uncompressed SEC1 point: 0x04 ‖ X ‖ Y
inline constexpr size_t kP256SharedSecretBytes = 32;
inline constexpr size_t kP256SignatureBytes = 64;  // r ‖ s, 32 bytes each, big-endian

using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// ----- randomness -------------------------------------------------------------------------
// Fills `out` from OpenSSL's CSPRNG (RAND_bytes).
Status RandomBytes(MutableByteSpan out);
Result<Bytes> RandomBytes(size_t n);
Result<SecretBuffer> RandomSecret(size_t n);

// ----- hashing ----------------------------------------------------------------------------
Sha256Digest Sha256(ByteSpan data);

// Incremental SHA-256.
class Sha256Hasher {
 public:
  static Result<Sha256Hasher> Create();
  Status Update(ByteSpan data);
  Result<Sha256Digest> Finish();

 private:
  EvpMdCtxPtr ctx_;
};

// ----- HMAC-SHA256 (RFC 2104) ---------------------------------------------------------------
// Of `data` under `key` (any length, including empty).
Result<Sha256Digest> HmacSha256(ByteSpan key, ByteSpan data);

// ----- HKDF-SHA256 (RFC 5869, extract-then-expand) ------------------------------------------
// Derives out.size() bytes (1..8160) into `out`.
Status HkdfSha256(ByteSpan ikm, ByteSpan salt, ByteSpan info, MutableByteSpan out);
Result<SecretBuffer> HkdfSha256(ByteSpan ikm, ByteSpan salt, ByteSpan info, size_t length);

// ----- AES-256-GCM --------------------------------------------------------------------------
// A reusable keyed AES-256-GCM context (96-bit nonces, 128-bit tags). Create once per key and
// thread; Seal/Open only set the nonce, so per-call cost is the cipher work itself.
class AesGcm {
 public:
  static Result<AesGcm> Create(ByteSpan key);  // key must be 32 bytes

  // ciphertext.size() must equal plaintext.size(). `in` and `out` may be the same buffer.
  Status Seal(ByteSpan nonce, ByteSpan aad, ByteSpan plaintext, MutableByteSpan ciphertext,
              std::span<uint8_t, kGcmTagBytes> tag);
  // Decrypts into `plaintext` and verifies `tag`. On any failure `plaintext` is wiped: a tag
  // mismatch is kUnauthenticated ("authentication tag mismatch"), wrong sizes kInvalidArgument.
  Status Open(ByteSpan nonce, ByteSpan aad, ByteSpan ciphertext, ByteSpan tag,
              MutableByteSpan plaintext);

 private:
  EvpCipherCtxPtr enc_;
  EvpCipherCtxPtr dec_;
};

// One-shot helpers: output is ciphertext ‖ tag.
Result<Bytes> AesGcmSeal(ByteSpan key, ByteSpan nonce, ByteSpan aad, ByteSpan plaintext);
Result<SecretBuffer> AesGcmOpen(ByteSpan key, ByteSpan nonce, ByteSpan aad,
                                ByteSpan ciphertext_and_tag);

// ----- Ed25519 ------------------------------------------------------------------------------
class Ed25519PublicKey {
 public:
  static Result<Ed25519PublicKey> FromRaw(ByteSpan raw);          // 32 bytes
  static Result<Ed25519PublicKey> FromPem(std::string_view pem);  // SubjectPublicKeyInfo
  const std::array<uint8_t, kEd25519PublicKeyBytes>& raw() const { return raw_; }
  std::string ToPem() const;
  // "ed25519:" + first 16 hex digits of SHA-256(raw): short, stable, for display.
  std::string Fingerprint() const;
  // kUnauthenticated "signature does not verify" on mismatch; kInvalidArgument on bad length.
  Status Verify(ByteSpan message, ByteSpan signature) const;

 private:
  std::array<uint8_t, kEd25519PublicKeyBytes> raw_{};
  std::shared_ptr<EVP_PKEY> key_;
};

class Ed25519PrivateKey {
 public:
  static Result<Ed25519PrivateKey> Generate();
  static Result<Ed25519PrivateKey> FromSeed(ByteSpan seed);        // 32-byte RFC 8032 seed
  static Result<Ed25519PrivateKey> FromPem(std::string_view pem);  // PKCS#8, unencrypted
  Result<SecretBuffer> ToPem() const;                              // PKCS#8 PEM text
  const Ed25519PublicKey& public_key() const { return public_; }
  Result<std::array<uint8_t, kEd25519SignatureBytes>> Sign(ByteSpan message) const;

 private:
  std::shared_ptr<EVP_PKEY> key_;
  Ed25519PublicKey public_;
};

// ----- ECDH and ECDSA on P-256 -------------------------------------------------------------
// ECDSA here signs and verifies a SHA-256 digest the caller computed (the TPM signs digests:
// TPM2_Quote's attestation hash, TPM2_PolicyAuthorize's aHash). Signatures are the fixed-size
// r ‖ s form TPMT_SIGNATURE carries, not DER.
using P256Signature = std::array<uint8_t, kP256SignatureBytes>;

class P256PublicKey {
 public:
  // Accepts an uncompressed SEC1 point (65 bytes) and checks it is on the curve.
  static Result<P256PublicKey> FromUncompressed(ByteSpan point);
  static Result<P256PublicKey> FromPem(std::string_view pem);
  const std::array<uint8_t, kP256PublicKeyBytes>& uncompressed() const { return point_; }
  std::string ToPem() const;
  EVP_PKEY* get() const { return key_.get(); }
  // ECDSA verification of `r_s` (r ‖ s, 64 bytes) over `digest`. kUnauthenticated "signature
  // does not verify" on mismatch (including r or s out of range); kInvalidArgument on a length
  // other than 64.
  Status VerifyDigest(const Sha256Digest& digest, ByteSpan r_s) const;

 private:
  std::array<uint8_t, kP256PublicKeyBytes> point_{};
  std::shared_ptr<EVP_PKEY> key_;
};

class P256PrivateKey {
 public:
  static Result<P256PrivateKey> Generate();
  static Result<P256PrivateKey> FromPem(std::string_view pem);  // PKCS#8, unencrypted
  Result<SecretBuffer> ToPem() const;
  const P256PublicKey& public_key() const { return public_; }
  // The OpenSSL key (private and public parts), for APIs that sign with it (X509_sign). Owned by
  // this object; do not free.
  EVP_PKEY* get() const { return key_.get(); }
  // The raw ECDH shared secret: the X coordinate of d·Q (32 bytes), as TPM2_ECDH_ZGen returns.
  Result<SecretBuffer> Ecdh(const P256PublicKey& peer) const;
  // ECDSA signature over a SHA-256 digest, as r ‖ s (each left-padded to 32 bytes). The nonce
  // comes from OpenSSL's CSPRNG, so two signatures of one digest differ.
  Result<P256Signature> SignDigest(const Sha256Digest& digest) const;

 private:
  std::shared_ptr<EVP_PKEY> key_;
  P256PublicKey public_;
};

// ----- ECIES: wrapping a short secret (a DEK) to a P-256 public key --------------------------
// Envelope v1 (all sizes in bytes; spec in docs/FORMAT.md "ECIES key wrapping"):
//   version (1) = 0x01 ‖ ephemeral public key (65, uncompressed) ‖ ciphertext (n) ‖ tag (16)
// Key schedule: Z = ECDH(ephemeral, recipient) X coordinate;
//   okm = HKDF-SHA256(ikm = Z, salt = ephemeral ‖ recipient, info = "custody/ecies/v1" ‖ 0x00 ‖
//   context, L = 44); key = okm[0..32), nonce = okm[32..44); AAD = context.
// `context` (at most 1007 bytes: OpenSSL caps HKDF info at 1024) binds the envelope to its purpose
// (e.g. "lease-dek" ‖ device id); a different context fails to unwrap.
inline constexpr uint8_t kEciesVersion = 1;
inline constexpr size_t kEciesOverheadBytes = 1 + kP256PublicKeyBytes + kGcmTagBytes;

Result<Bytes> EciesWrap(const P256PublicKey& recipient, ByteSpan plaintext, ByteSpan context);
Result<SecretBuffer> EciesUnwrap(const P256PrivateKey& recipient, ByteSpan envelope,
                                 ByteSpan context);
// Unwrap where the ECDH happens elsewhere (TPM2_ECDH_ZGen inside the TPM): `zgen` receives the
// ephemeral public key and returns the shared X coordinate.
using EcdhFunction = std::function<Result<SecretBuffer>(const P256PublicKey& ephemeral)>;
Result<SecretBuffer> EciesUnwrapWith(const EcdhFunction& zgen, const P256PublicKey& recipient,
                                     ByteSpan envelope, ByteSpan context);

// The OpenSSL error queue as text (and cleared), for kInternal messages.
std::string OpenSslErrors();

}  // namespace custody::crypto
