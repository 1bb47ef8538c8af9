// Credential activation, custodian side (TPM 2.0 Part 1 §24, "Credential Protection";
// Part 3 TPM2_MakeCredential), in software: proves that the AK a device presents lives in the
// same TPM as its EK. The custodian encrypts a fresh secret to the EK, bound to the AK's Name;
// only that TPM, and only for an object of that Name, gives it back (TPM2_ActivateCredential).
//
// Seed: for an ECC EK, an ephemeral P-256 key e, Z = x(e·EK), seed = KDFe(SHA-256, Z,
// "IDENTITY", x(e), x(EK), 256 bits) and the encrypted secret is the TPMS_ECC_POINT of e; for an
// RSA EK, a random 32-byte seed encrypted with RSA-OAEP(SHA-256, label "IDENTITY\0").
// Then symKey = KDFa(SHA-256, seed, "STORAGE", akName, "", 128), encIdentity =
// AES-128-CFB(symKey, iv = 0, TPM2B_DIGEST(secret)), hmacKey = KDFa(SHA-256, seed,
// "INTEGRITY", "", "", 256), outerHMAC = HMAC-SHA256(hmacKey, encIdentity || akName), and
// credentialBlob = TPM2B_ID_OBJECT(TPM2B(outerHMAC) || encIdentity).
#pragma once

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/tpm/tpm_types.h"

namespace custody::tpm {

inline constexpr size_t kMaxCredentialBytes = 32;  // a TPM2B_DIGEST for SHA-256

// ek_public: TPM2B_PUBLIC of an EK made from EkTemplate (ECC P-256 or RSA 2048, restricted
// decrypt, AES-128-CFB). ak_name: the AK's Name (ObjectName). secret: 1..32 bytes.
// kInvalidArgument says which input is unusable.
Result<Credential> MakeCredential(ByteSpan ek_public, ByteSpan ak_name, ByteSpan secret);

}  // namespace custody::tpm
