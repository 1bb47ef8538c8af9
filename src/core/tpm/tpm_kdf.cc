#include "core/tpm/tpm_kdf.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "core/tpm/tss_status.h"

namespace custody::tpm {
namespace {

// KDFa and KDFe carry the output size in bits in a 32-bit field, but every TPM structure a key
// ends up in has a 16-bit byte count; 8 KiB of output is far beyond any use here.
constexpr size_t kMaxKdfBits = 65536;
constexpr size_t kAes128KeyBytes = 16;
constexpr size_t kAesBlockBytes = 16;
constexpr size_t kEcdsaCoordinateBytes = 32;
constexpr size_t kMinRsaModulusBytes = 128;
constexpr size_t kMaxRsaModulusBytes = 512;
constexpr uint32_t kRsaDefaultExponent = 65537;

// OpenSSL may reject a NULL pointer even with a zero length; empty inputs point here instead.
constexpr uint8_t kEmptyInput[1] = {0};

Status OpenSslFailure(std::string_view what) {
  std::string errors = crypto::OpenSslErrors();
  return Internal(std::string(what) + ": " + (errors.empty() ? "no OpenSSL error queued" : errors));
}

Status CheckKdfBits(size_t bits) {
  if (bits == 0 || bits % 8 != 0 || bits > kMaxKdfBits) {
    return InvalidArgument("KDF output must be a positive multiple of 8 bits up to " +
                           std::to_string(kMaxKdfBits) + ", got " + std::to_string(bits));
  }
  return OkStatus();
}

OSSL_PARAM OctetParam(const char* name, ByteSpan bytes) {
  // OSSL_PARAM takes a non-const pointer but only reads through it when parameters are set.
  return OSSL_PARAM_construct_octet_string(
      name, const_cast<uint8_t*>(bytes.empty() ? kEmptyInput : bytes.data()), bytes.size());
}

Result<SecretBuffer> Derive(const char* kdf_name, OSSL_PARAM* params, size_t bytes) {
  crypto::EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, kdf_name, nullptr));
  if (!kdf) return OpenSslFailure(std::string("EVP_KDF_fetch(") + kdf_name + ")");
  crypto::EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return OpenSslFailure("EVP_KDF_CTX_new");
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer out, SecretBuffer::Allocate(bytes));
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return OpenSslFailure(std::string(kdf_name) + " derive");
  }
  return out;
}

}  // namespace

Result<SecretBuffer> KdfA(ByteSpan key, std::string_view label, ByteSpan context_u,
                          ByteSpan context_v, size_t bits) {
  CUSTODY_RETURN_IF_ERROR(CheckKdfBits(bits));
  if (key.empty()) return InvalidArgument("KDFa needs a non-empty key");
  if (label.empty()) return InvalidArgument("KDFa needs a non-empty label");
  // OpenSSL's KBKDF in counter mode computes HMAC(key, [i]_32 ‖ Label ‖ 0x00 ‖ Context ‖ [L]_32)
  // with a 32-bit counter, the separator byte and L in bits as a 32-bit big-endian value: exactly
  // KDFa, where the separator is the label's terminating NUL and Context = contextU ‖ contextV.
  // The known-answer test in tpm_kdf_test.cc pins this against the TPM reference vector.
  Bytes context;
  context.reserve(context_u.size() + context_v.size());
  AppendBytes(context, context_u);
  AppendBytes(context, context_v);
  char mode[] = "counter";
  char mac[] = "HMAC";
  char digest[] = "SHA256";
  int use_separator = 1;
  int use_l = 1;
  OSSL_PARAM params[9];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, mode, 0);
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, mac, 0);
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OctetParam(OSSL_KDF_PARAM_KEY, key);
  params[n++] = OctetParam(OSSL_KDF_PARAM_SALT, AsBytes(label));
  if (!context.empty()) params[n++] = OctetParam(OSSL_KDF_PARAM_INFO, context);
  params[n++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_KBKDF_USE_SEPARATOR, &use_separator);
  params[n++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_KBKDF_USE_L, &use_l);
  params[n] = OSSL_PARAM_construct_end();
  return Derive("KBKDF", params, bits / 8);
}

Result<SecretBuffer> KdfE(ByteSpan z, std::string_view label, ByteSpan party_u, ByteSpan party_v,
                          size_t bits) {
  CUSTODY_RETURN_IF_ERROR(CheckKdfBits(bits));
  if (z.empty()) return InvalidArgument("KDFe needs a non-empty shared secret");
  if (label.empty()) return InvalidArgument("KDFe needs a non-empty label");
  // OpenSSL's single-step KDF with a digest is SHA-256([i]_32 ‖ Z ‖ FixedInfo); KDFe's FixedInfo
  // is the label with its NUL, then PartyUInfo and PartyVInfo, unprefixed.
  Bytes info;
  info.reserve(label.size() + 1 + party_u.size() + party_v.size());
  AppendBytes(info, AsBytes(label));
  info.push_back(0x00);
  AppendBytes(info, party_u);
  AppendBytes(info, party_v);
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
                         OctetParam(OSSL_KDF_PARAM_SECRET, z),
                         OctetParam(OSSL_KDF_PARAM_INFO, info), OSSL_PARAM_construct_end()};
  return Derive("SSKDF", params, bits / 8);
}

Result<Bytes> Aes128CfbEncrypt(ByteSpan key, ByteSpan iv, ByteSpan plaintext) {
  if (key.size() != kAes128KeyBytes || iv.size() != kAesBlockBytes) {
    return InvalidArgument("AES-128-CFB needs a 16-byte key and a 16-byte IV, got " +
                           std::to_string(key.size()) + " and " + std::to_string(iv.size()));
  }
  if (plaintext.size() > static_cast<size_t>(INT32_MAX)) {
    return InvalidArgument("AES-128-CFB input of " + std::to_string(plaintext.size()) +
                           " bytes is too large");
  }
  crypto::EvpCipherPtr cipher(EVP_CIPHER_fetch(nullptr, "AES-128-CFB", nullptr));
  if (!cipher) return OpenSslFailure("EVP_CIPHER_fetch(AES-128-CFB)");
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex2(ctx.get(), cipher.get(), key.data(), iv.data(), nullptr) != 1) {
    return OpenSslFailure("AES-128-CFB init");
  }
  // CFB is a stream mode: every byte comes out of the update that consumed it, and the final
  // call adds nothing.
  Bytes out(plaintext.size());
  int len = 0;
  int final_len = 0;
  if (EVP_EncryptUpdate(ctx.get(), out.data(), &len,
                        plaintext.empty() ? kEmptyInput : plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1 ||
      static_cast<size_t>(len) != plaintext.size() ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + len, &final_len) != 1 || final_len != 0) {
    return OpenSslFailure("AES-128-CFB encrypt");
  }
  return out;
}

Result<crypto::EvpPkeyPtr> RsaPublicKeyFromTpm(ByteSpan modulus, uint32_t exponent) {
  if (modulus.size() < kMinRsaModulusBytes || modulus.size() > kMaxRsaModulusBytes ||
      modulus[0] == 0) {
    return InvalidArgument("RSA modulus must be 128..512 bytes without a leading zero, got " +
                           std::to_string(modulus.size()) + " bytes");
  }
  const uint32_t e = exponent == 0 ? kRsaDefaultExponent : exponent;
  crypto::BignumPtr n_bn(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  crypto::BignumPtr e_bn(BN_new());
  crypto::OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!n_bn || !e_bn || !bld || BN_set_word(e_bn.get(), e) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n_bn.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e_bn.get()) != 1) {
    return OpenSslFailure("building RSA key parameters");
  }
  crypto::OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    return OpenSslFailure("RSA fromdata init");
  }
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return OpenSslFailure("RSA public key from modulus and exponent");
  }
  crypto::EvpPkeyPtr key(raw);
  // n odd and e odd and greater than 1: a TPM never produces anything else, so a key that fails
  // this came from somewhere else.
  crypto::EvpPkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!check) return OpenSslFailure("EVP_PKEY_CTX_new_from_pkey");
  if (EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    return InvalidArgument("not a valid RSA public key (modulus or exponent)");
  }
  return key;
}

Result<Bytes> RsaOaepSha256Encrypt(EVP_PKEY* key, ByteSpan label, ByteSpan plaintext) {
  if (key == nullptr) return InvalidArgument("RSA-OAEP with no key");
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  char pad[] = OSSL_PKEY_RSA_PAD_MODE_OAEP;
  char digest[] = "SHA256";
  // The label parameter is copied by OpenSSL (unlike EVP_PKEY_CTX_set0_rsa_oaep_label, which
  // takes ownership of a buffer it will free).
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, pad, 0),
      OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, digest, 0),
      OSSL_PARAM_construct_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, digest, 0),
      OctetParam(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, label), OSSL_PARAM_construct_end()};
  if (!ctx || EVP_PKEY_encrypt_init_ex(ctx.get(), params) != 1) {
    return OpenSslFailure("RSA-OAEP init");
  }
  size_t len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, plaintext.data(), plaintext.size()) != 1) {
    return OpenSslFailure("RSA-OAEP size");
  }
  Bytes out(len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, plaintext.data(), plaintext.size()) != 1) {
    return OpenSslFailure("RSA-OAEP encrypt");
  }
  out.resize(len);
  return out;
}

std::string AlgHex(uint16_t value) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%04x", value);
  return buf;
}

Status CheckEcdsaSha256(uint16_t scheme, uint16_t hash, std::string_view what) {
  if (scheme != TPM2_ALG_ECDSA) {
    return InvalidArgument(std::string(what) + " scheme is " + AlgHex(scheme) +
                           ", expected ECDSA (0x0018)");
  }
  if (hash != TPM2_ALG_SHA256) {
    return InvalidArgument(std::string(what) + " hash is " + AlgHex(hash) +
                           ", expected SHA-256 (0x000b)");
  }
  return OkStatus();
}

Result<Bytes> MarshalEcdsaSignature(const crypto::P256Signature& r_s) {
  TPMT_SIGNATURE sig{};
  sig.sigAlg = TPM2_ALG_ECDSA;
  sig.signature.ecdsa.hash = TPM2_ALG_SHA256;
  sig.signature.ecdsa.signatureR.size = kEcdsaCoordinateBytes;
  std::memcpy(sig.signature.ecdsa.signatureR.buffer, r_s.data(), kEcdsaCoordinateBytes);
  sig.signature.ecdsa.signatureS.size = kEcdsaCoordinateBytes;
  std::memcpy(sig.signature.ecdsa.signatureS.buffer, r_s.data() + kEcdsaCoordinateBytes,
              kEcdsaCoordinateBytes);
  return MarshalTss(sig, Tss2_MU_TPMT_SIGNATURE_Marshal, "TPMT_SIGNATURE");
}

Result<crypto::P256Signature> ParseEcdsaSignature(ByteSpan tpmt_signature) {
  if (tpmt_signature.empty()) return InvalidArgument("not a TPMT_SIGNATURE: no bytes");
  TPMT_SIGNATURE sig{};
  size_t offset = 0;
  TSS2_RC rc =
      Tss2_MU_TPMT_SIGNATURE_Unmarshal(tpmt_signature.data(), tpmt_signature.size(), &offset, &sig);
  if (rc != TSS2_RC_SUCCESS) {
    return InvalidArgument("not a TPMT_SIGNATURE (" + std::to_string(tpmt_signature.size()) +
                           " bytes): " + RcHex(rc));
  }
  if (offset != tpmt_signature.size()) {
    return InvalidArgument("TPMT_SIGNATURE is followed by " +
                           std::to_string(tpmt_signature.size() - offset) + " unexpected bytes");
  }
  // sigAlg selects the union member: the hash is read only once it is known to be ECDSA's.
  if (sig.sigAlg != TPM2_ALG_ECDSA) {
    return CheckEcdsaSha256(sig.sigAlg, TPM2_ALG_SHA256, "signature");
  }
  CUSTODY_RETURN_IF_ERROR(CheckEcdsaSha256(sig.sigAlg, sig.signature.ecdsa.hash, "signature"));
  const TPM2B_ECC_PARAMETER& r = sig.signature.ecdsa.signatureR;
  const TPM2B_ECC_PARAMETER& s = sig.signature.ecdsa.signatureS;
  if (r.size == 0 || r.size > kEcdsaCoordinateBytes || s.size == 0 ||
      s.size > kEcdsaCoordinateBytes) {
    return InvalidArgument("ECDSA signature R and S are " + std::to_string(r.size) + " and " +
                           std::to_string(s.size) + " bytes, expected 1..32 each");
  }
  // A TPM pads R and S to the curve size, but a shorter encoding of the same integers is the
  // same signature.
  crypto::P256Signature out{};
  std::memcpy(out.data() + (kEcdsaCoordinateBytes - r.size), r.buffer, r.size);
  std::memcpy(out.data() + kEcdsaCoordinateBytes + (kEcdsaCoordinateBytes - s.size), s.buffer,
              s.size);
  return out;
}

}  // namespace custody::tpm
