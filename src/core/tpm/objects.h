// The TPM objects Custody creates or loads, described once for both sides: the device creates
// them from these templates, and the verifier checks what a device reports against them.
// Pure code (tss2-mu for the encodings, OpenSSL for hashing); no TPM needed. docs/PROTOCOL.md,
// "TPM keys", explains each choice.
//
//  SRK      ECC P-256 storage primary in the owner hierarchy (TCG Provisioning Guidance template:
//           restricted decrypt, AES-128-CFB, noDA, userWithAuth, unique = 2 x 32 zero bytes).
//           Recreated on demand; the same seed always gives the same key.
//  EK       TCG EK Credential Profile low-range templates: L-2 (ECC P-256) by default, L-1
//           (RSA 2048) supported. Policy-only (PolicySecret(TPM_RH_ENDORSEMENT)).
//  AK       restricted ECDSA-P256/SHA-256 signing key under the SRK; empty authValue.
//  binding  ECC P-256 decrypt key under the SRK, fixedTPM | fixedParent | sensitiveDataOrigin,
//           userWithAuth CLEAR so that its use (TPM2_ECDH_ZGen) needs its authPolicy, which is
//           TPM2_PolicyAuthorize by the custodian's policy key.
//  policy   the custodian policy key's public part as TPM2_LoadExternal loads it to check an
//  key      approval (TPM2_VerifySignature); its Name is what the binding key's policy names.
#pragma once

#include <tss2/tss2_tpm2_types.h>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/tpm/tpm_types.h"

namespace custody::tpm {

// The EK templates' authPolicy: PolicySecret(TPM_RH_ENDORSEMENT) (TCG EK Credential Profile).
inline constexpr std::array<uint8_t, 32> kEkPolicyDigest = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};

// NV indices where TPM makers store the EK certificate (TCG EK Credential Profile).
inline constexpr TPM2_HANDLE kEkCertNvIndexRsa = 0x01C00002;
inline constexpr TPM2_HANDLE kEkCertNvIndexEcc = 0x01C0000A;

TPMT_PUBLIC SrkTemplate();
TPMT_PUBLIC EkTemplate(EkType type);
TPMT_PUBLIC AkTemplate();
TPMT_PUBLIC BindingKeyTemplate(const crypto::Sha256Digest& auth_policy);
// A sealed data object (Tpm::Seal): keyed-hash with no scheme, nameAlg SHA-256, fixedTPM,
// fixedParent, userWithAuth (empty authValue), noDA; the data is the caller's, so no
// sensitiveDataOrigin.
TPMT_PUBLIC SealedDataTemplate();
// The most Tpm::Seal takes (MAX_SYM_DATA in every TPM's TPM2B_SENSITIVE_DATA).
inline constexpr size_t kMaxSealedBytes = 128;
// The policy key as loaded for TPM2_VerifySignature: ECC P-256, ECDSA/SHA-256, sign,
// userWithAuth, nameAlg SHA-256, no authPolicy.
TPMT_PUBLIC PolicyKeyPublic(const crypto::P256PublicKey& key);

// The public area of the NV counter Custody defines at `index`: TPM2_NT_COUNTER, authorised by
// its authValue for reads and writes (AUTHREAD | AUTHWRITE), owner-readable, no dictionary-attack
// lockout (the authValue is random), not orderly (every increment reaches NV). `written` sets
// TPMA_NV_WRITTEN, which the TPM sets at the first increment and which changes the Name.
TPMS_NV_PUBLIC NvCounterPublic(TPM2_HANDLE index, bool written);
// An NV index's Name: nameAlg || H(TPMS_NV_PUBLIC).
Result<Bytes> NvName(const TPMS_NV_PUBLIC& pub);

// Encodings. Unmarshal functions require the input to be exactly one structure (no trailing
// bytes) and say what was wrong otherwise (kInvalidArgument).
Result<Bytes> MarshalPublic(const TPMT_PUBLIC& pub);    // TPMT_PUBLIC
Result<Bytes> MarshalPublic2B(const TPMT_PUBLIC& pub);  // TPM2B_PUBLIC
Result<TPMT_PUBLIC> UnmarshalPublic2B(ByteSpan bytes);
Result<TPML_PCR_SELECTION> ToTpml(const PcrSelection& selection);
Result<Bytes> MarshalPcrSelection(const PcrSelection& selection);  // TPML_PCR_SELECTION

// An object's Name: nameAlg (2 bytes, big-endian) || H_nameAlg(TPMT_PUBLIC). SHA-256 only.
Result<Bytes> ObjectName(const TPMT_PUBLIC& pub);

// The P-256 public key of an ECC object (from unique.ecc), checked to be on the curve.
Result<crypto::P256PublicKey> EccPublicKey(const TPMT_PUBLIC& pub);

// SHA-256 over the values of `selection`'s PCRs in index order: the pcrDigest of TPM2_Quote
// and TPM2_PolicyPCR. kInvalidArgument names the first selected PCR missing from `values`.
Result<crypto::Sha256Digest> PcrDigest(const PcrSelection& selection, const PcrValues& values);

}  // namespace custody::tpm
