// The verifier side of TPM attestation (DESIGN.md §4, §6): pure code, no TPM, used by the
// custodian to decide whether a device is genuine and in an approved state. Every check that
// fails says which check it was; nothing here trusts a field before the signature over it
// verified. TPM structures arrive in their standard encodings (tpm_types.h).
//
// Error codes, by check:
//   kInvalidArgument   a structure does not parse, or is not the kind of key/attestation expected
//                      (e.g. an AK that is not a restricted ECDSA P-256 signing key)
//   kUnauthenticated   a signature does not verify under the AK; the attestation is not
//                      TPM-generated (magic); the nonce differs (replayed or stale); the reported
//                      PCR values do not hash to the signed digest; a certified Name differs
//   kPermissionDenied  the PCR values match no approved golden set
//   kFailedPrecondition the quote covers other PCRs than the policy requires; an NV counter is
//                      lower than the custodian last saw (rollback); a key's attributes or policy
//                      are not what Custody requires
#pragma once

#include <optional>
#include <span>
#include <string>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/tpm/tpm_types.h"

namespace custody::tpm {

// ----- keys ------------------------------------------------------------------------------------
// The AK (TPM2B_PUBLIC) must be what AkTemplate() describes: ECC P-256, nameAlg SHA-256,
// fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign, ECDSA/SHA-256, not decrypt.
Status CheckAkPublic(ByteSpan ak_public);

// The binding key (TPM2B_PUBLIC) must be what BindingKeyTemplate(expected_auth_policy)
// describes: ECC P-256, nameAlg SHA-256, fixedTPM, fixedParent, sensitiveDataOrigin, decrypt,
// neither restricted nor sign nor userWithAuth, authPolicy == expected_auth_policy.
Status CheckBindingKeyPublic(ByteSpan binding_public, const crypto::Sha256Digest& expected_policy);

// Verifies a TPMT_SIGNATURE (ECDSA P-256 with SHA-256) by `signer_public` (TPM2B_PUBLIC) over
// SHA-256(`signed_bytes`).
Status VerifyTpmSignature(ByteSpan signer_public, ByteSpan signed_bytes, ByteSpan signature);

// ----- quotes ----------------------------------------------------------------------------------
struct QuoteExpectation {
  Bytes ak_public;         // TPM2B_PUBLIC of the device's AK, recorded at enrollment
  Bytes nonce;             // the single-use nonce the custodian issued for this quote
  PcrSelection selection;  // the PCRs the group's policy requires to be quoted
  // Approved states. Empty means "accept any state" (trust on first use: the caller records it).
  std::vector<GoldenPcrSet> golden;
};

struct QuoteResult {
  std::string matched_set;  // name of the golden set that matched; empty when none was required
  PcrValues pcrs;           // the verified values of the quoted PCRs
  // The TPM clock at the time of the quote (time_ms is 0: not quoted). clock_ms and safe are
  // real; reset_count, restart_count and firmware_version are obfuscated by the TPM for an AK
  // outside the endorsement hierarchy (privacy): equal across one AK's quotes while the real
  // values are equal, but not numbers to compare or display.
  TimeInfo clock;
  uint64_t firmware_version = 0;
};

// Checks, in this order: the AK public area; the signature over `attestation.attest`; magic
// TPM_GENERATED_VALUE and type TPM_ST_ATTEST_QUOTE; extraData == nonce (constant time); the
// quoted selection equals `selection` (SHA-256 bank); SHA-256 of quote.pcrs in selection order
// equals the signed pcrDigest; the values match one golden set (every PCR the set names must be
// quoted and equal). The PermissionDenied message names the PCRs that differ from the nearest set.
Result<QuoteResult> VerifyQuote(const Quote& quote, const QuoteExpectation& expect);

// ----- certification of a key by the AK (TPM2_Certify) --------------------------------------
// Checks the AK signature, magic, type TPM_ST_ATTEST_CERTIFY, extraData == nonce, and that the
// certified Name equals ObjectName(object_public). Proves the object lives in the same TPM as
// the AK.
Status VerifyCertify(const Attestation& certify, ByteSpan ak_public, ByteSpan nonce,
                     ByteSpan object_public);

// ----- NV counter certification (TPM2_NV_Certify) ---------------------------------------------
struct NvCertifyExpectation {
  Bytes ak_public;
  Bytes nonce;
  Bytes index_name;  // NvName(NvCounterPublic(index, /*written=*/true))
  // The highest value the custodian has seen; a lower one is a rollback (kFailedPrecondition).
  std::optional<uint64_t> last_seen;
};

// Checks the AK signature, magic, type TPM_ST_ATTEST_NV, extraData == nonce, indexName, offset 0
// and an 8-byte content, then returns the counter value (big-endian), refusing a rollback.
Result<uint64_t> VerifyNvCertify(const Attestation& certify, const NvCertifyExpectation& expect);

// ----- key release -------------------------------------------------------------------------------
// ECIES-wraps `secret` (a DEK) to the binding key (TPM2B_PUBLIC, checked with
// CheckBindingKeyPublic against `expected_policy` first), for `context`. Only the TPM holding the
// binding key, under an approved policy, can compute the ECDH share that unwraps it
// (crypto::EciesUnwrapWith + Tpm::EcdhZGen).
Result<Bytes> WrapToBindingKey(ByteSpan binding_public, const crypto::Sha256Digest& expected_policy,
                               ByteSpan secret, ByteSpan context);

// The binding key (TPM2B_PUBLIC) checked with CheckBindingKeyPublic and parsed, for a caller that
// wraps many secrets to the same key (crypto::EciesWrap): WrapToBindingKey in two steps.
Result<crypto::P256PublicKey> CheckedBindingKey(ByteSpan binding_public,
                                                const crypto::Sha256Digest& expected_policy);

}  // namespace custody::tpm
