// TPM policy math in software (TPM 2.0 Part 3, §23): the digests a trial session would compute,
// so the custodian can authorise a new platform state (e.g. after an OS update) by signing it,
// without touching the device (DESIGN.md §4, "policy key"). Pure code.
//
//   PolicyPCR:       digest' = SHA-256(digest || TPM_CC_PolicyPCR || TPML_PCR_SELECTION ||
//                                      pcrDigest)
//   PolicyAuthorize: digest' = SHA-256(SHA-256(0^32 || TPM_CC_PolicyAuthorize || keySignName) ||
//                                      policyRef)
//   approval:        ECDSA-P256(SHA-256(approvedPolicy || policyRef)) by the custodian policy key
#pragma once

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/tpm/tpm_types.h"

namespace custody::tpm {

inline constexpr size_t kMaxPolicyRefBytes = 32;

// Extends `previous` (all zero for a fresh session) with TPM2_PolicyPCR(selection, pcr_digest).
Result<crypto::Sha256Digest> PolicyPcrDigest(const crypto::Sha256Digest& previous,
                                             const PcrSelection& selection,
                                             const crypto::Sha256Digest& pcr_digest);

// The digest TPM2_PolicyAuthorize leaves in a session: depends only on the signing key's Name
// and the policyRef.
Result<crypto::Sha256Digest> PolicyAuthorizeDigest(ByteSpan key_sign_name, ByteSpan policy_ref);

// The authPolicy of every binding key whose use the custodian's `policy_key` governs:
// PolicyAuthorizeDigest(ObjectName(PolicyKeyPublic(policy_key)), empty policyRef).
Result<crypto::Sha256Digest> BindingKeyAuthPolicy(const crypto::P256PublicKey& policy_key);

// Custodian: approves the platform state `values` (of `selection`) for binding keys governed by
// `policy_key`. policy_ref: empty, or at most kMaxPolicyRefBytes.
Result<ApprovedPolicy> ApprovePcrPolicy(const crypto::P256PrivateKey& policy_key,
                                        const PcrSelection& selection, const PcrValues& values,
                                        ByteSpan policy_ref);

// Anyone (the device before it asks its TPM): checks that approved_digest is the PolicyPCR
// digest of selection/pcr_digest and that the signature verifies under `policy_key`.
// kUnauthenticated for a bad signature, kInvalidArgument for an inconsistent approval.
Status VerifyApprovedPolicy(const ApprovedPolicy& approval,
                            const crypto::P256PublicKey& policy_key);

}  // namespace custody::tpm
