#include "core/crypto/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <utility>

namespace custody::crypto {
namespace {

// EVP_*Update and RAND_bytes take int lengths; larger inputs are fed in pieces of this size.
constexpr size_t kMaxOpenSslChunkBytes = size_t{1} << 30;
// NIST SP 800-38D: at most 2^39 - 256 bits of plaintext under one (key, nonce).
constexpr uint64_t kGcmMaxPlaintextBytes = (uint64_t{1} << 36) - 32;
// RFC 5869: L <= 255 * HashLen.
constexpr size_t kHkdfMaxOutputBytes = 255 * kSha256Bytes;
// OpenSSL 3.0's HKDF refuses more than 1024 bytes of info (HKDF_MAXBUF); we check it up front
// so an oversized context is reported as bad input rather than as an OpenSSL failure.
constexpr size_t kHkdfMaxInfoBytes = 1024;
constexpr size_t kP256CoordinateBytes = 32;
constexpr std::string_view kEciesInfoLabel = "custody/ecies/v1";

// OpenSSL treats a NULL buffer with length 0 inconsistently across APIs (some reject it), and
// an empty std::span may well have a NULL data(). Empty inputs point here instead.
constexpr uint8_t kEmptyInput[1] = {0};

const uint8_t* DataOrEmpty(ByteSpan s) { return s.empty() ? kEmptyInput : s.data(); }

Status OpenSslFailure(std::string_view what) {
  std::string errors = OpenSslErrors();
  if (errors.empty()) errors = "no OpenSSL error queued";
  return Internal(std::string(what) + ": " + errors);
}

// Input from outside (PEM text, points) that OpenSSL refused: the caller's fault, not ours.
Status OpenSslRejected(std::string_view what) {
  std::string errors = OpenSslErrors();
  if (errors.empty()) return InvalidArgument(std::string(what));
  return InvalidArgument(std::string(what) + " (" + errors + ")");
}

// Fetching an algorithm walks the provider tables under a lock; doing it once per process keeps
// it off every Seal/Open/Hkdf call. Function-local statics are initialised thread-safely, and
// OpenSSL's own atexit cleanup was registered before these (the fetch initialises OpenSSL), so
// they are released before it runs.
const EVP_CIPHER* Aes256GcmCipher() {
  static const EvpCipherPtr cipher(EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr));
  return cipher.get();
}

const EVP_MD* Sha256Md() {
  static const EvpMdPtr md(EVP_MD_fetch(nullptr, "SHA256", nullptr));
  return md.get();
}

EVP_KDF* HkdfKdf() {
  static const EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  return kdf.get();
}

Result<BioPtr> ReadOnlyBio(std::string_view text) {
  if (text.size() > static_cast<size_t>(INT_MAX)) {
    return InvalidArgument("PEM text of " + std::to_string(text.size()) + " bytes is too large");
  }
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!bio) return OpenSslFailure("BIO_new_mem_buf");
  return bio;
}

// A password callback that refuses: encrypted PEM is not supported, and OpenSSL's default
// callback would prompt on the terminal.
int NoPassword(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*userdata*/) { return -1; }

Result<EvpPkeyPtr> ReadPublicKeyPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem));
  EvpPkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassword, nullptr));
  if (!key) return OpenSslRejected("not a PEM SubjectPublicKeyInfo public key");
  return key;
}

Result<EvpPkeyPtr> ReadPrivateKeyPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(BioPtr bio, ReadOnlyBio(pem));
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (!key) return OpenSslRejected("not an unencrypted PEM PKCS#8 private key");
  return key;
}

// Public key PEM: not secret, so a plain memory BIO and std::string are fine. Failing to encode
// a key we hold is a broken invariant (the key was validated when it was made).
std::string PublicKeyToPem(EVP_PKEY* key) {
  if (key == nullptr) Panic("PEM encoding of an empty public key object");
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) {
    Panic("PEM_write_bio_PUBKEY failed: " + OpenSslErrors());
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) Panic("PEM_write_bio_PUBKEY produced no output");
  return std::string(data, static_cast<size_t>(len));
}

// Private key PEM goes through a secure-memory BIO: its buffer is wiped when it grows and when
// it is freed, and we wipe it once more after copying out, so no key text stays on the heap.
Result<SecretBuffer> PrivateKeyToPem(EVP_PKEY* key) {
  if (key == nullptr) return FailedPrecondition("PEM encoding of an empty private key object");
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio) return OpenSslFailure("BIO_new(BIO_s_secmem)");
  if (PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslFailure("PEM_write_bio_PKCS8PrivateKey");
  }
  BUF_MEM* mem = nullptr;
  if (BIO_get_mem_ptr(bio.get(), &mem) != 1 || mem == nullptr) {
    return OpenSslFailure("BIO_get_mem_ptr");
  }
  Result<SecretBuffer> out =
      SecretBuffer::CopyFrom(ByteSpan(reinterpret_cast<const uint8_t*>(mem->data), mem->length));
  OPENSSL_cleanse(mem->data, mem->length);
  return out;
}

// The uncompressed SEC1 encoding of an EC public key, built from its affine coordinates so it
// does not depend on the point format the key was loaded with (a PEM may carry a compressed
// point).
Result<std::array<uint8_t, kP256PublicKeyBytes>> P256UncompressedPoint(const EVP_PKEY* key) {
  BIGNUM* raw_x = nullptr;
  BIGNUM* raw_y = nullptr;
  int got_x = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &raw_x);
  BignumPtr x(raw_x);
  int got_y = EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &raw_y);
  BignumPtr y(raw_y);
  if (got_x != 1 || got_y != 1) return OpenSslFailure("reading the P-256 public point");
  std::array<uint8_t, kP256PublicKeyBytes> point{};
  point[0] = 0x04;
  if (BN_bn2binpad(x.get(), point.data() + 1, kP256CoordinateBytes) < 0 ||
      BN_bn2binpad(y.get(), point.data() + 1 + kP256CoordinateBytes, kP256CoordinateBytes) < 0) {
    return OpenSslFailure("encoding the P-256 public point");
  }
  return point;
}

Status CheckIsP256(const EVP_PKEY* key) {
  if (!EVP_PKEY_is_a(key, "EC")) {
    return InvalidArgument(std::string("expected an EC P-256 key, found ") +
                           EVP_PKEY_get0_type_name(key));
  }
  char group[64] = {};
  size_t group_len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                     &group_len) != 1) {
    return OpenSslRejected("EC key without a named curve (explicit parameters are not accepted)");
  }
  std::string_view name(group, group_len);
  if (name != "prime256v1" && name != "P-256") {
    return InvalidArgument("expected an EC key on P-256, found curve " + std::string(name));
  }
  return OkStatus();
}

Result<std::array<uint8_t, kEd25519PublicKeyBytes>> Ed25519RawPublic(const EVP_PKEY* key) {
  std::array<uint8_t, kEd25519PublicKeyBytes> raw{};
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(key, raw.data(), &len) != 1 || len != raw.size()) {
    return OpenSslFailure("reading the Ed25519 public key");
  }
  return raw;
}

bool PartiallyOverlap(ByteSpan a, ByteSpan b) {
  if (a.empty() || b.empty()) return false;
  auto a_begin = reinterpret_cast<uintptr_t>(a.data());
  auto b_begin = reinterpret_cast<uintptr_t>(b.data());
  if (a_begin == b_begin) return false;  // exactly in place: supported
  return a_begin < b_begin + b.size() && b_begin < a_begin + a.size();
}

// Feeds `in` through EVP_CipherUpdate in int-sized pieces. `out` is null for AAD.
bool CipherUpdate(EVP_CIPHER_CTX* ctx, const uint8_t* in, size_t size, uint8_t* out) {
  size_t done = 0;
  while (done < size) {
    size_t n = std::min(size - done, kMaxOpenSslChunkBytes);
    int out_len = 0;
    if (EVP_CipherUpdate(ctx, out == nullptr ? nullptr : out + done, &out_len, in + done,
                         static_cast<int>(n)) != 1) {
      return false;
    }
    // GCM is a stream mode: every ciphertext byte comes out of the update that consumed it.
    if (out != nullptr && static_cast<size_t>(out_len) != n) return false;
    done += n;
  }
  return true;
}

}  // namespace

std::string OpenSslErrors() {
  std::string text;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!text.empty()) text += "; ";
    text += buf;
    if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && data[0] != '\0') {
      text += " (";
      text += data;
      text += ")";
    }
  }
  return text;
}

// ----- randomness -------------------------------------------------------------------------

Status RandomBytes(MutableByteSpan out) {
  size_t done = 0;
  while (done < out.size()) {
    size_t n = std::min(out.size() - done, kMaxOpenSslChunkBytes);
    if (RAND_bytes(out.data() + done, static_cast<int>(n)) != 1) {
      SecureWipe(out.data(), out.size());
      return OpenSslFailure("RAND_bytes");
    }
    done += n;
  }
  return OkStatus();
}

Result<Bytes> RandomBytes(size_t n) {
  Bytes out(n);
  CUSTODY_RETURN_IF_ERROR(RandomBytes(MutableByteSpan(out)));
  return out;
}

Result<SecretBuffer> RandomSecret(size_t n) {
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer out, SecretBuffer::Allocate(n));
  CUSTODY_RETURN_IF_ERROR(RandomBytes(out.span()));
  return out;
}

// ----- hashing ----------------------------------------------------------------------------

Sha256Digest Sha256(ByteSpan data) {
  Sha256Digest digest{};
  unsigned int len = 0;
  const EVP_MD* md = Sha256Md();
  if (md == nullptr ||
      EVP_Digest(DataOrEmpty(data), data.size(), digest.data(), &len, md, nullptr) != 1 ||
      len != digest.size()) {
    // SHA-256 is always available in the default provider; failing here means OpenSSL is broken.
    Panic("SHA-256 failed: " + OpenSslErrors());
  }
  return digest;
}

Result<Sha256Hasher> Sha256Hasher::Create() {
  const EVP_MD* md = Sha256Md();
  if (md == nullptr) return OpenSslFailure("EVP_MD_fetch(SHA256)");
  Sha256Hasher hasher;
  hasher.ctx_.reset(EVP_MD_CTX_new());
  if (!hasher.ctx_ || EVP_DigestInit_ex2(hasher.ctx_.get(), md, nullptr) != 1) {
    return OpenSslFailure("SHA-256 init");
  }
  return hasher;
}

Status Sha256Hasher::Update(ByteSpan data) {
  // Finish() releases the context, so use after Finish is reported rather than undefined.
  if (!ctx_) return FailedPrecondition("Sha256Hasher used after Finish() or move");
  if (EVP_DigestUpdate(ctx_.get(), DataOrEmpty(data), data.size()) != 1) {
    return OpenSslFailure("SHA-256 update");
  }
  return OkStatus();
}

Result<Sha256Digest> Sha256Hasher::Finish() {
  if (!ctx_) return FailedPrecondition("Sha256Hasher used after Finish() or move");
  Sha256Digest digest{};
  unsigned int len = 0;
  int ok = EVP_DigestFinal_ex(ctx_.get(), digest.data(), &len);
  ctx_.reset();
  if (ok != 1 || len != digest.size()) return OpenSslFailure("SHA-256 final");
  return digest;
}

// ----- HKDF-SHA256 --------------------------------------------------------------------------

Result<Sha256Digest> HmacSha256(ByteSpan key, ByteSpan data) {
  EvpMacPtr mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  if (!mac) return OpenSslFailure("EVP_MAC_fetch(HMAC)");
  EvpMacCtxPtr ctx(EVP_MAC_CTX_new(mac.get()));
  char digest_name[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
                         OSSL_PARAM_construct_end()};
  if (!ctx || EVP_MAC_init(ctx.get(), DataOrEmpty(key), key.size(), params) != 1) {
    return OpenSslFailure("HMAC-SHA256 init");
  }
  Sha256Digest out{};
  size_t len = 0;
  if (EVP_MAC_update(ctx.get(), DataOrEmpty(data), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) != 1 || len != out.size()) {
    return OpenSslFailure("HMAC-SHA256");
  }
  return out;
}

Status HkdfSha256(ByteSpan ikm, ByteSpan salt, ByteSpan info, MutableByteSpan out) {
  if (out.empty() || out.size() > kHkdfMaxOutputBytes) {
    return InvalidArgument("HKDF-SHA256 output length must be 1.." +
                           std::to_string(kHkdfMaxOutputBytes) + " bytes, got " +
                           std::to_string(out.size()));
  }
  if (info.size() > kHkdfMaxInfoBytes) {
    return InvalidArgument("HKDF info is " + std::to_string(info.size()) + " bytes, at most " +
                           std::to_string(kHkdfMaxInfoBytes) + " are supported");
  }
  EVP_KDF* kdf = HkdfKdf();
  if (kdf == nullptr) return OpenSslFailure("EVP_KDF_fetch(HKDF)");
  EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf));
  if (!ctx) return OpenSslFailure("EVP_KDF_CTX_new(HKDF)");

  // OSSL_PARAM takes non-const pointers but only reads through them when setting parameters.
  char digest_name[] = "SHA256";
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest_name, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(
      OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(DataOrEmpty(ikm)), ikm.size());
  // An absent salt is, per RFC 5869, HashLen zero bytes; HMAC pads a short key with zeros, so
  // leaving the parameter out gives exactly that.
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                    const_cast<uint8_t*>(salt.data()), salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                    const_cast<uint8_t*>(info.data()), info.size());
  }
  params[n] = OSSL_PARAM_construct_end();
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    SecureWipe(out.data(), out.size());
    return OpenSslFailure("HKDF-SHA256 derive");
  }
  return OkStatus();
}

Result<SecretBuffer> HkdfSha256(ByteSpan ikm, ByteSpan salt, ByteSpan info, size_t length) {
  if (length == 0 || length > kHkdfMaxOutputBytes) {
    return InvalidArgument("HKDF-SHA256 output length must be 1.." +
                           std::to_string(kHkdfMaxOutputBytes) + " bytes, got " +
                           std::to_string(length));
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer out, SecretBuffer::Allocate(length));
  CUSTODY_RETURN_IF_ERROR(HkdfSha256(ikm, salt, info, out.span()));
  return out;
}

// ----- AES-256-GCM --------------------------------------------------------------------------

Result<AesGcm> AesGcm::Create(ByteSpan key) {
  if (key.size() != kAes256KeyBytes) {
    return InvalidArgument("AES-256-GCM key must be " + std::to_string(kAes256KeyBytes) +
                           " bytes, got " + std::to_string(key.size()));
  }
  const EVP_CIPHER* cipher = Aes256GcmCipher();
  if (cipher == nullptr) return OpenSslFailure("EVP_CIPHER_fetch(AES-256-GCM)");
  // The key schedule and GHASH tables are computed here, once; Seal/Open only load a nonce.
  AesGcm gcm;
  gcm.enc_.reset(EVP_CIPHER_CTX_new());
  gcm.dec_.reset(EVP_CIPHER_CTX_new());
  if (!gcm.enc_ || !gcm.dec_) return OpenSslFailure("EVP_CIPHER_CTX_new");
  if (EVP_EncryptInit_ex2(gcm.enc_.get(), cipher, key.data(), nullptr, nullptr) != 1 ||
      EVP_DecryptInit_ex2(gcm.dec_.get(), cipher, key.data(), nullptr, nullptr) != 1) {
    return OpenSslFailure("AES-256-GCM key setup");
  }
  return gcm;
}

Status AesGcm::Seal(ByteSpan nonce, ByteSpan aad, ByteSpan plaintext, MutableByteSpan ciphertext,
                    std::span<uint8_t, kGcmTagBytes> tag) {
  if (!enc_) return FailedPrecondition("AesGcm used after move");
  if (nonce.size() != kGcmNonceBytes) {
    return InvalidArgument("AES-GCM nonce must be " + std::to_string(kGcmNonceBytes) +
                           " bytes, got " + std::to_string(nonce.size()));
  }
  if (ciphertext.size() != plaintext.size()) {
    return InvalidArgument("AES-GCM ciphertext buffer is " + std::to_string(ciphertext.size()) +
                           " bytes, plaintext is " + std::to_string(plaintext.size()));
  }
  if (plaintext.size() > kGcmMaxPlaintextBytes) {
    return InvalidArgument("AES-GCM plaintext of " + std::to_string(plaintext.size()) +
                           " bytes exceeds the GCM limit");
  }
  if (PartiallyOverlap(plaintext, ciphertext)) {
    return InvalidArgument("AES-GCM plaintext and ciphertext overlap without being in place");
  }
  EVP_CIPHER_CTX* ctx = enc_.get();
  int final_len = 0;
  uint8_t final_block[16];
  OSSL_PARAM get_tag[] = {
      OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag.data(), tag.size()),
      OSSL_PARAM_construct_end()};
  if (EVP_EncryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) != 1 ||
      !CipherUpdate(ctx, aad.data(), aad.size(), nullptr) ||
      !CipherUpdate(ctx, plaintext.data(), plaintext.size(), ciphertext.data()) ||
      EVP_EncryptFinal_ex(ctx, final_block, &final_len) != 1 || final_len != 0 ||
      EVP_CIPHER_CTX_get_params(ctx, get_tag) != 1) {
    // Sealing in place may have left a mix of plaintext and ciphertext: wipe rather than let a
    // caller that ignores the error write it out.
    SecureWipe(ciphertext.data(), ciphertext.size());
    SecureWipe(tag.data(), tag.size());
    return OpenSslFailure("AES-256-GCM seal");
  }
  return OkStatus();
}

Status AesGcm::Open(ByteSpan nonce, ByteSpan aad, ByteSpan ciphertext, ByteSpan tag,
                    MutableByteSpan plaintext) {
  // Every early exit wipes `plaintext` too: a caller must never find usable bytes in it unless
  // the tag verified.
  auto fail = [&plaintext](Status status) {
    SecureWipe(plaintext.data(), plaintext.size());
    return status;
  };
  if (!dec_) return fail(FailedPrecondition("AesGcm used after move"));
  if (nonce.size() != kGcmNonceBytes) {
    return fail(InvalidArgument("AES-GCM nonce must be " + std::to_string(kGcmNonceBytes) +
                                " bytes, got " + std::to_string(nonce.size())));
  }
  if (tag.size() != kGcmTagBytes) {
    return fail(InvalidArgument("AES-GCM tag must be " + std::to_string(kGcmTagBytes) +
                                " bytes, got " + std::to_string(tag.size())));
  }
  if (plaintext.size() != ciphertext.size()) {
    return fail(InvalidArgument("AES-GCM plaintext buffer is " + std::to_string(plaintext.size()) +
                                " bytes, ciphertext is " + std::to_string(ciphertext.size())));
  }
  if (ciphertext.size() > kGcmMaxPlaintextBytes) {
    return fail(InvalidArgument("AES-GCM ciphertext of " + std::to_string(ciphertext.size()) +
                                " bytes exceeds the GCM limit"));
  }
  if (PartiallyOverlap(ciphertext, plaintext)) {
    return fail(InvalidArgument("AES-GCM ciphertext and plaintext overlap without being in place"));
  }
  EVP_CIPHER_CTX* ctx = dec_.get();
  OSSL_PARAM set_tag[] = {
      OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG,
                                        const_cast<uint8_t*>(tag.data()), tag.size()),
      OSSL_PARAM_construct_end()};
  if (EVP_DecryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) != 1 ||
      !CipherUpdate(ctx, aad.data(), aad.size(), nullptr) ||
      !CipherUpdate(ctx, ciphertext.data(), ciphertext.size(), plaintext.data()) ||
      EVP_CIPHER_CTX_set_params(ctx, set_tag) != 1) {
    return fail(OpenSslFailure("AES-256-GCM open"));
  }
  int final_len = 0;
  uint8_t final_block[16];
  if (EVP_DecryptFinal_ex(ctx, final_block, &final_len) != 1 || final_len != 0) {
    // The only way the final step fails once the updates succeeded is a tag mismatch. Nothing
    // more is said: which bytes were wrong is not ours to reveal.
    ERR_clear_error();
    return fail(Unauthenticated("authentication tag mismatch"));
  }
  return OkStatus();
}

Result<Bytes> AesGcmSeal(ByteSpan key, ByteSpan nonce, ByteSpan aad, ByteSpan plaintext) {
  CUSTODY_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(key));
  Bytes out(plaintext.size() + kGcmTagBytes);
  MutableByteSpan all(out);
  CUSTODY_RETURN_IF_ERROR(gcm.Seal(nonce, aad, plaintext, all.first(plaintext.size()),
                                   all.subspan(plaintext.size()).first<kGcmTagBytes>()));
  return out;
}

Result<SecretBuffer> AesGcmOpen(ByteSpan key, ByteSpan nonce, ByteSpan aad,
                                ByteSpan ciphertext_and_tag) {
  if (ciphertext_and_tag.size() < kGcmTagBytes) {
    return InvalidArgument("AES-GCM input is " + std::to_string(ciphertext_and_tag.size()) +
                           " bytes, shorter than the " + std::to_string(kGcmTagBytes) +
                           "-byte tag");
  }
  size_t ciphertext_size = ciphertext_and_tag.size() - kGcmTagBytes;
  CUSTODY_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(key));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer out, SecretBuffer::Allocate(ciphertext_size));
  CUSTODY_RETURN_IF_ERROR(gcm.Open(nonce, aad, ciphertext_and_tag.first(ciphertext_size),
                                   ciphertext_and_tag.subspan(ciphertext_size), out.span()));
  return out;
}

// ----- Ed25519 ------------------------------------------------------------------------------

Result<Ed25519PublicKey> Ed25519PublicKey::FromRaw(ByteSpan raw) {
  if (raw.size() != kEd25519PublicKeyBytes) {
    return InvalidArgument("Ed25519 public key must be " + std::to_string(kEd25519PublicKeyBytes) +
                           " bytes, got " + std::to_string(raw.size()));
  }
  EvpPkeyPtr key(
      EVP_PKEY_new_raw_public_key_ex(nullptr, "ED25519", nullptr, raw.data(), raw.size()));
  if (!key) return OpenSslRejected("not an Ed25519 public key");
  Ed25519PublicKey out;
  std::copy(raw.begin(), raw.end(), out.raw_.begin());
  out.key_ = std::move(key);
  return out;
}

Result<Ed25519PublicKey> Ed25519PublicKey::FromPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyPtr key, ReadPublicKeyPem(pem));
  if (!EVP_PKEY_is_a(key.get(), "ED25519")) {
    return InvalidArgument(std::string("expected an Ed25519 public key, found ") +
                           EVP_PKEY_get0_type_name(key.get()));
  }
  Ed25519PublicKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.raw_, Ed25519RawPublic(key.get()));
  out.key_ = std::move(key);
  return out;
}

std::string Ed25519PublicKey::ToPem() const { return PublicKeyToPem(key_.get()); }

std::string Ed25519PublicKey::Fingerprint() const {
  Sha256Digest digest = Sha256(raw_);
  return "ed25519:" + HexEncode(ByteSpan(digest).first(8));
}

Status Ed25519PublicKey::Verify(ByteSpan message, ByteSpan signature) const {
  if (!key_) return FailedPrecondition("Ed25519 verify with an empty public key object");
  if (signature.size() != kEd25519SignatureBytes) {
    return InvalidArgument("Ed25519 signature must be " + std::to_string(kEd25519SignatureBytes) +
                           " bytes, got " + std::to_string(signature.size()));
  }
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, key_.get(),
                                      nullptr) != 1) {
    return OpenSslFailure("Ed25519 verify init");
  }
  int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), DataOrEmpty(message),
                            message.size());
  if (rc != 1) {
    // 0 is a mismatch; a negative value is a malformed signature (e.g. S out of range), which
    // for the caller is the same thing: it does not verify.
    ERR_clear_error();
    return Unauthenticated("signature does not verify");
  }
  return OkStatus();
}

namespace {

Result<Ed25519PublicKey> Ed25519PublicOf(const EVP_PKEY* key) {
  CUSTODY_ASSIGN_OR_RETURN(auto raw, Ed25519RawPublic(key));
  return Ed25519PublicKey::FromRaw(raw);
}

}  // namespace

Result<Ed25519PrivateKey> Ed25519PrivateKey::Generate() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (!key) return OpenSslFailure("Ed25519 key generation");
  Ed25519PrivateKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_, Ed25519PublicOf(key.get()));
  out.key_ = std::move(key);
  return out;
}

Result<Ed25519PrivateKey> Ed25519PrivateKey::FromSeed(ByteSpan seed) {
  if (seed.size() != 32) {
    return InvalidArgument("Ed25519 seed must be 32 bytes, got " + std::to_string(seed.size()));
  }
  EvpPkeyPtr key(
      EVP_PKEY_new_raw_private_key_ex(nullptr, "ED25519", nullptr, seed.data(), seed.size()));
  if (!key) return OpenSslFailure("Ed25519 key from seed");
  Ed25519PrivateKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_, Ed25519PublicOf(key.get()));
  out.key_ = std::move(key);
  return out;
}

Result<Ed25519PrivateKey> Ed25519PrivateKey::FromPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyPtr key, ReadPrivateKeyPem(pem));
  if (!EVP_PKEY_is_a(key.get(), "ED25519")) {
    return InvalidArgument(std::string("expected an Ed25519 private key, found ") +
                           EVP_PKEY_get0_type_name(key.get()));
  }
  Ed25519PrivateKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_, Ed25519PublicOf(key.get()));
  out.key_ = std::move(key);
  return out;
}

Result<SecretBuffer> Ed25519PrivateKey::ToPem() const { return PrivateKeyToPem(key_.get()); }

Result<std::array<uint8_t, kEd25519SignatureBytes>> Ed25519PrivateKey::Sign(
    ByteSpan message) const {
  if (!key_) return FailedPrecondition("Ed25519 sign with an empty private key object");
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, key_.get(),
                                    nullptr) != 1) {
    return OpenSslFailure("Ed25519 sign init");
  }
  std::array<uint8_t, kEd25519SignatureBytes> signature{};
  size_t len = signature.size();
  if (EVP_DigestSign(ctx.get(), signature.data(), &len, DataOrEmpty(message), message.size()) !=
          1 ||
      len != signature.size()) {
    return OpenSslFailure("Ed25519 sign");
  }
  return signature;
}

// ----- ECDH and ECDSA on P-256 -------------------------------------------------------------

Result<P256PublicKey> P256PublicKey::FromUncompressed(ByteSpan point) {
  if (point.size() != kP256PublicKeyBytes || point[0] != 0x04) {
    return InvalidArgument("P-256 public key must be a " + std::to_string(kP256PublicKeyBytes) +
                           "-byte uncompressed point (0x04 || X || Y), got " +
                           std::to_string(point.size()) + " bytes" +
                           (point.empty() ? "" : " starting with 0x" + HexEncode(point.first(1))));
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) return OpenSslFailure("EC fromdata init");
  char group[] = "prime256v1";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, const_cast<uint8_t*>(point.data()),
                                        point.size()),
      OSSL_PARAM_construct_end()};
  EVP_PKEY* raw_key = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw_key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    // Decoding the point already checks the curve equation, so this is the usual path for a
    // point that is not on P-256.
    ERR_clear_error();
    return InvalidArgument("P-256 public key is not a point on the curve");
  }
  EvpPkeyPtr key(raw_key);
  // Belt and braces, and independent of how a given OpenSSL version decodes points: on the
  // curve and not the point at infinity. P-256 has cofactor 1, so every such point is in the
  // prime-order subgroup; the full check would add n·Q = O, a scalar multiplication as costly as
  // a signature verification, on every key a verifier parses.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check) return OpenSslFailure("EVP_PKEY_CTX_new_from_pkey");
  if (EVP_PKEY_public_check_quick(check.get()) != 1) {
    ERR_clear_error();
    return InvalidArgument("P-256 public key is not a point on the curve");
  }
  P256PublicKey out;
  std::copy(point.begin(), point.end(), out.point_.begin());
  out.key_ = std::move(key);
  return out;
}

Result<P256PublicKey> P256PublicKey::FromPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyPtr key, ReadPublicKeyPem(pem));
  CUSTODY_RETURN_IF_ERROR(CheckIsP256(key.get()));
  // Re-import through FromUncompressed so every P256PublicKey went through the same checks.
  CUSTODY_ASSIGN_OR_RETURN(auto point, P256UncompressedPoint(key.get()));
  return FromUncompressed(point);
}

std::string P256PublicKey::ToPem() const { return PublicKeyToPem(key_.get()); }

Result<P256PrivateKey> P256PrivateKey::Generate() {
  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return OpenSslFailure("P-256 key generation");
  CUSTODY_ASSIGN_OR_RETURN(auto point, P256UncompressedPoint(key.get()));
  P256PrivateKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_, P256PublicKey::FromUncompressed(point));
  out.key_ = std::move(key);
  return out;
}

Result<P256PrivateKey> P256PrivateKey::FromPem(std::string_view pem) {
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyPtr key, ReadPrivateKeyPem(pem));
  CUSTODY_RETURN_IF_ERROR(CheckIsP256(key.get()));
  // Scalar in range and the stored public point equal to d·G: a key file that does not hold
  // together is refused here, not discovered as a failed unwrap later.
  EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check) return OpenSslFailure("EVP_PKEY_CTX_new_from_pkey");
  if (EVP_PKEY_check(check.get()) != 1) return OpenSslRejected("inconsistent P-256 private key");
  CUSTODY_ASSIGN_OR_RETURN(auto point, P256UncompressedPoint(key.get()));
  P256PrivateKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.public_, P256PublicKey::FromUncompressed(point));
  out.key_ = std::move(key);
  return out;
}

Result<SecretBuffer> P256PrivateKey::ToPem() const { return PrivateKeyToPem(key_.get()); }

Result<SecretBuffer> P256PrivateKey::Ecdh(const P256PublicKey& peer) const {
  if (!key_) return FailedPrecondition("ECDH with an empty P-256 private key object");
  if (peer.get() == nullptr) return InvalidArgument("ECDH with an empty P-256 public key object");
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
  // The peer was validated when the P256PublicKey was made (it cannot exist otherwise), so the
  // derive does not check it a second time.
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer_ex(ctx.get(), peer.get(), /*validate_peer=*/0) != 1) {
    return OpenSslFailure("ECDH setup");
  }
  size_t len = 0;
  if (EVP_PKEY_derive(ctx.get(), nullptr, &len) != 1) return OpenSslFailure("ECDH size");
  if (len != kP256SharedSecretBytes) {
    return Internal("ECDH produced " + std::to_string(len) + " bytes, expected " +
                    std::to_string(kP256SharedSecretBytes));
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer z, SecretBuffer::Allocate(kP256SharedSecretBytes));
  if (EVP_PKEY_derive(ctx.get(), z.data(), &len) != 1 || len != kP256SharedSecretBytes) {
    return OpenSslFailure("ECDH derive");
  }
  return z;
}

namespace {

// EVP_PKEY_sign/verify on an EC key operate on a digest the caller supplies and speak DER
// (ECDSA-Sig-Value); ECDSA_SIG is only the bridge between DER and the fixed r ‖ s form.
Result<EvpPkeyCtxPtr> EcdsaContext(EVP_PKEY* key, bool sign) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (!ctx) return OpenSslFailure("EVP_PKEY_CTX_new_from_pkey");
  int rc = sign ? EVP_PKEY_sign_init(ctx.get()) : EVP_PKEY_verify_init(ctx.get());
  // Naming the digest makes OpenSSL check that the input is exactly 32 bytes.
  if (rc != 1 || EVP_PKEY_CTX_set_signature_md(ctx.get(), Sha256Md()) != 1) {
    return OpenSslFailure(sign ? "ECDSA sign init" : "ECDSA verify init");
  }
  return ctx;
}

}  // namespace

Status P256PublicKey::VerifyDigest(const Sha256Digest& digest, ByteSpan r_s) const {
  if (!key_) return FailedPrecondition("ECDSA verify with an empty P-256 public key object");
  if (r_s.size() != kP256SignatureBytes) {
    return InvalidArgument("ECDSA P-256 signature must be " + std::to_string(kP256SignatureBytes) +
                           " bytes (r || s), got " + std::to_string(r_s.size()));
  }
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BignumPtr r(BN_bin2bn(r_s.data(), kP256CoordinateBytes, nullptr));
  BignumPtr s(BN_bin2bn(r_s.data() + kP256CoordinateBytes, kP256CoordinateBytes, nullptr));
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return OpenSslFailure("building an ECDSA signature");
  }
  // ECDSA_SIG_set0 took ownership of r and s.
  (void)r.release();
  (void)s.release();
  int der_len = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (der_len <= 0) return OpenSslFailure("encoding an ECDSA signature");
  Bytes der(static_cast<size_t>(der_len));
  unsigned char* der_end = der.data();
  if (i2d_ECDSA_SIG(sig.get(), &der_end) != der_len) {
    return OpenSslFailure("encoding an ECDSA signature");
  }
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyCtxPtr ctx, EcdsaContext(key_.get(), /*sign=*/false));
  int rc = EVP_PKEY_verify(ctx.get(), der.data(), der.size(), digest.data(), digest.size());
  if (rc != 1) {
    // 0 is a mismatch; a negative value is r or s out of [1, n-1], which does not verify either.
    ERR_clear_error();
    return Unauthenticated("signature does not verify");
  }
  return OkStatus();
}

Result<P256Signature> P256PrivateKey::SignDigest(const Sha256Digest& digest) const {
  if (!key_) return FailedPrecondition("ECDSA sign with an empty P-256 private key object");
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyCtxPtr ctx, EcdsaContext(key_.get(), /*sign=*/true));
  size_t der_len = 0;
  if (EVP_PKEY_sign(ctx.get(), nullptr, &der_len, digest.data(), digest.size()) != 1) {
    return OpenSslFailure("ECDSA signature size");
  }
  Bytes der(der_len);
  if (EVP_PKEY_sign(ctx.get(), der.data(), &der_len, digest.data(), digest.size()) != 1) {
    return OpenSslFailure("ECDSA sign");
  }
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_len)));
  if (!sig) return OpenSslFailure("decoding the ECDSA signature OpenSSL produced");
  P256Signature out{};
  if (BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), out.data(), kP256CoordinateBytes) < 0 ||
      BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), out.data() + kP256CoordinateBytes,
                   kP256CoordinateBytes) < 0) {
    return OpenSslFailure("encoding r and s");
  }
  return out;
}

// ----- ECIES --------------------------------------------------------------------------------

namespace {

constexpr size_t kEciesEphemeralOffset = 1;
constexpr size_t kEciesCiphertextOffset = kEciesEphemeralOffset + kP256PublicKeyBytes;
constexpr size_t kEciesOkmBytes = kAes256KeyBytes + kGcmNonceBytes;

// The envelope key and nonce. The nonce can be derived rather than random because the key is
// fresh for every envelope (a new ephemeral key each time), so a (key, nonce) pair never repeats.
Result<SecretBuffer> EciesKeySchedule(ByteSpan z, ByteSpan ephemeral, ByteSpan recipient,
                                      ByteSpan context) {
  Bytes salt;
  salt.reserve(ephemeral.size() + recipient.size());
  AppendBytes(salt, ephemeral);
  AppendBytes(salt, recipient);
  Bytes info;
  info.reserve(kEciesInfoLabel.size() + 1 + context.size());
  AppendBytes(info, AsBytes(kEciesInfoLabel));
  info.push_back(0x00);
  AppendBytes(info, context);
  return HkdfSha256(z, salt, info, kEciesOkmBytes);
}

}  // namespace

Result<Bytes> EciesWrap(const P256PublicKey& recipient, ByteSpan plaintext, ByteSpan context) {
  if (recipient.get() == nullptr) {
    return InvalidArgument("ECIES wrap to an empty P-256 public key object");
  }
  CUSTODY_ASSIGN_OR_RETURN(P256PrivateKey ephemeral, P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer z, ephemeral.Ecdh(recipient));
  const auto& ephemeral_point = ephemeral.public_key().uncompressed();
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer okm, EciesKeySchedule(z.span(), ephemeral_point,
                                                              recipient.uncompressed(), context));
  ByteSpan okm_span = okm.span();
  CUSTODY_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(okm_span.first(kAes256KeyBytes)));

  Bytes envelope(kEciesOverheadBytes + plaintext.size());
  envelope[0] = kEciesVersion;
  std::copy(ephemeral_point.begin(), ephemeral_point.end(),
            envelope.begin() + kEciesEphemeralOffset);
  MutableByteSpan body = MutableByteSpan(envelope).subspan(kEciesCiphertextOffset);
  CUSTODY_RETURN_IF_ERROR(gcm.Seal(okm_span.subspan(kAes256KeyBytes, kGcmNonceBytes), context,
                                   plaintext, body.first(plaintext.size()),
                                   body.subspan(plaintext.size()).first<kGcmTagBytes>()));
  return envelope;
}

Result<SecretBuffer> EciesUnwrapWith(const EcdhFunction& zgen, const P256PublicKey& recipient,
                                     ByteSpan envelope, ByteSpan context) {
  if (recipient.get() == nullptr) {
    return InvalidArgument("ECIES unwrap for an empty P-256 public key object");
  }
  if (envelope.size() < kEciesOverheadBytes) {
    return InvalidArgument("ECIES envelope is " + std::to_string(envelope.size()) +
                           " bytes, expected at least " + std::to_string(kEciesOverheadBytes));
  }
  if (envelope[0] != kEciesVersion) {
    return InvalidArgument("ECIES envelope version is " + std::to_string(envelope[0]) +
                           ", expected " + std::to_string(kEciesVersion));
  }
  ByteSpan ephemeral_point = envelope.subspan(kEciesEphemeralOffset, kP256PublicKeyBytes);
  Result<P256PublicKey> ephemeral = P256PublicKey::FromUncompressed(ephemeral_point);
  if (!ephemeral) return ephemeral.error().WithContext("ECIES ephemeral key");
  if (!zgen) return InvalidArgument("ECIES unwrap without an ECDH function");
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer z, zgen(*ephemeral));
  if (z.size() != kP256SharedSecretBytes) {
    return Internal("ECDH function returned " + std::to_string(z.size()) + " bytes, expected " +
                    std::to_string(kP256SharedSecretBytes));
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer okm, EciesKeySchedule(z.span(), ephemeral_point,
                                                              recipient.uncompressed(), context));
  ByteSpan okm_span = okm.span();
  CUSTODY_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(okm_span.first(kAes256KeyBytes)));

  ByteSpan body = envelope.subspan(kEciesCiphertextOffset);
  size_t plaintext_size = body.size() - kGcmTagBytes;
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer plaintext, SecretBuffer::Allocate(plaintext_size));
  CUSTODY_RETURN_IF_ERROR(gcm.Open(okm_span.subspan(kAes256KeyBytes, kGcmNonceBytes), context,
                                   body.first(plaintext_size), body.subspan(plaintext_size),
                                   plaintext.span()));
  return plaintext;
}

Result<SecretBuffer> EciesUnwrap(const P256PrivateKey& recipient, ByteSpan envelope,
                                 ByteSpan context) {
  return EciesUnwrapWith(
      [&recipient](const P256PublicKey& ephemeral) { return recipient.Ecdh(ephemeral); },
      recipient.public_key(), envelope, context);
}

}  // namespace custody::crypto
