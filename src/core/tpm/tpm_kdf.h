// TPM 2.0 cryptographic constructions done in software (TCG TPM 2.0 Library, Part 1), for the
// verifier side: the key derivations and ciphers of credential protection (credential.h), the
// TPMT_SIGNATURE encoding of ECDSA signatures (verifier.h, policy.h). Internal to libcustody-core.
// Everything runs on OpenSSL 3 EVP; nothing is hand-rolled.
//
// Contract: Result/Status everywhere; derived keys come back in SecretBuffer; bad lengths and
// malformed structures are kInvalidArgument, OpenSSL failures kInternal. Only SHA-256 is
// supported as the KDF hash and name algorithm, the only one Custody's templates use.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"
#include "core/tpm/marshal.h"
#include "core/tpm/tss_status.h"

namespace custody::tpm {

// KDFa (Part 1 §11.4.10.2): SP 800-108 KDF in counter mode with HMAC-SHA256,
//   K(i) = HMAC(key, [i]_32 ‖ label ‖ 0x00 ‖ context_u ‖ context_v ‖ [bits]_32), i = 1, 2, ...
// `label` is given without its terminating NUL; the construction adds it (it is the 0x00 above).
// bits: a positive multiple of 8, at most 65536 (the TPM's 16-bit size fields bound every use).
Result<SecretBuffer> KdfA(ByteSpan key, std::string_view label, ByteSpan context_u,
                          ByteSpan context_v, size_t bits);

// KDFe (Part 1 §11.4.10.3): the SP 800-56A concatenation KDF with SHA-256,
//   K(i) = SHA-256([i]_32 ‖ z ‖ label ‖ 0x00 ‖ party_u ‖ party_v), i = 1, 2, ...
// `label` is given without its terminating NUL. bits: as for KdfA.
Result<SecretBuffer> KdfE(ByteSpan z, std::string_view label, ByteSpan party_u, ByteSpan party_v,
                          size_t bits);

// AES-128 in full-block CFB mode (the TPM's TPM_ALG_CFB), no padding: the output has the
// plaintext's length. key: 16 bytes; iv: 16 bytes.
Result<Bytes> Aes128CfbEncrypt(ByteSpan key, ByteSpan iv, ByteSpan plaintext);

// HMAC-SHA256 lives in crypto.h; the TPM constructions use it under this name too.
using crypto::HmacSha256;

// The RSA public key of a TPM RSA object: `modulus` as in TPMT_PUBLIC.unique.rsa (big-endian,
// 128..512 bytes, no leading zero byte) and `exponent` as in TPMS_RSA_PARMS (0 means 65537).
Result<crypto::EvpPkeyPtr> RsaPublicKeyFromTpm(ByteSpan modulus, uint32_t exponent);

// RSA-OAEP with SHA-256 (as hash and MGF1 hash) and the OAEP label `label` (the bytes exactly:
// a TPM label such as "IDENTITY" must be passed with its NUL, Part 1 Annex B.10).
Result<Bytes> RsaOaepSha256Encrypt(EVP_PKEY* key, ByteSpan label, ByteSpan plaintext);

// ----- encodings -------------------------------------------------------------------------------
// "0x0018": a TPM_ALG_ID, TPM_ECC_CURVE or TPM_ST as Part 2 prints it.
std::string AlgHex(uint16_t value);

// kInvalidArgument unless a signing scheme and its hash are ECDSA and SHA-256, the only ones
// Custody's keys use; `what` names the key or signature in the message.
Status CheckEcdsaSha256(uint16_t scheme, uint16_t hash, std::string_view what);

// TPMT_SIGNATURE with sigAlg TPM_ALG_ECDSA, hash TPM_ALG_SHA256 and 32-byte R and S.
Result<Bytes> MarshalEcdsaSignature(const crypto::P256Signature& r_s);

// The r ‖ s of a TPMT_SIGNATURE that must be exactly one structure (no trailing bytes), ECDSA
// with SHA-256, R and S of 1..32 bytes each (left-padded to 32). kInvalidArgument otherwise,
// naming what is wrong.
Result<crypto::P256Signature> ParseEcdsaSignature(ByteSpan tpmt_signature);

}  // namespace custody::tpm
