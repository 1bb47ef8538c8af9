#include "core/tpm/policy.h"

#include <algorithm>
#include <string>

#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

// Command codes as the policy digests hash them: 4 bytes, big-endian (Part 2, TPM_CC).
constexpr uint32_t kCcPolicyPcr = 0x0000017F;
constexpr uint32_t kCcPolicyAuthorize = 0x0000016A;
// A SHA-256 Name: the algorithm id 0x000B followed by the 32-byte digest.
constexpr size_t kSha256NameBytes = 2 + crypto::kSha256Bytes;

Status CheckPolicyRef(ByteSpan policy_ref) {
  if (policy_ref.size() > kMaxPolicyRefBytes) {
    return InvalidArgument("policyRef is " + std::to_string(policy_ref.size()) +
                           " bytes, at most " + std::to_string(kMaxPolicyRefBytes) +
                           " are allowed (a TPM2B_NONCE)");
  }
  return OkStatus();
}

// A PolicyPCR over no PCR binds the key to nothing: every platform state would satisfy it.
Status CheckApprovedSelection(const PcrSelection& selection) {
  if (selection.empty()) return InvalidArgument("a PCR policy must select at least one PCR");
  return OkStatus();
}

// aHash of TPM2_PolicyAuthorize (Part 3 §23.16): what the custodian signs and the TPM checks
// with TPM2_VerifySignature.
crypto::Sha256Digest ApprovalHash(const crypto::Sha256Digest& approved, ByteSpan policy_ref) {
  Bytes message(approved.begin(), approved.end());
  AppendBytes(message, policy_ref);
  return crypto::Sha256(message);
}

}  // namespace

Result<crypto::Sha256Digest> PolicyPcrDigest(const crypto::Sha256Digest& previous,
                                             const PcrSelection& selection,
                                             const crypto::Sha256Digest& pcr_digest) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes tpml, MarshalPcrSelection(selection));
  Bytes message(previous.begin(), previous.end());
  AppendBigEndian32(message, kCcPolicyPcr);
  AppendBytes(message, tpml);
  AppendBytes(message, pcr_digest);
  return crypto::Sha256(message);
}

Result<crypto::Sha256Digest> PolicyAuthorizeDigest(ByteSpan key_sign_name, ByteSpan policy_ref) {
  CUSTODY_RETURN_IF_ERROR(CheckPolicyRef(policy_ref));
  if (key_sign_name.size() != kSha256NameBytes || key_sign_name[0] != 0x00 ||
      key_sign_name[1] != 0x0B) {
    return InvalidArgument(
        "the signing key's Name must be a 34-byte SHA-256 Name (0x000b...), got " +
        std::to_string(key_sign_name.size()) + " bytes");
  }
  // TPM2_PolicyAuthorize resets the session digest to zero and then extends it twice
  // (PolicyUpdate): once with the command code and the key's Name, once with the policyRef.
  Bytes first(crypto::kSha256Bytes, 0);
  AppendBigEndian32(first, kCcPolicyAuthorize);
  AppendBytes(first, key_sign_name);
  crypto::Sha256Digest step = crypto::Sha256(first);
  Bytes second(step.begin(), step.end());
  AppendBytes(second, policy_ref);
  return crypto::Sha256(second);
}

Result<crypto::Sha256Digest> BindingKeyAuthPolicy(const crypto::P256PublicKey& policy_key) {
  if (policy_key.get() == nullptr) return InvalidArgument("empty policy key object");
  CUSTODY_ASSIGN_OR_RETURN(Bytes name, ObjectName(PolicyKeyPublic(policy_key)));
  return PolicyAuthorizeDigest(name, {});
}

Result<ApprovedPolicy> ApprovePcrPolicy(const crypto::P256PrivateKey& policy_key,
                                        const PcrSelection& selection, const PcrValues& values,
                                        ByteSpan policy_ref) {
  CUSTODY_RETURN_IF_ERROR(CheckPolicyRef(policy_ref));
  CUSTODY_RETURN_IF_ERROR(CheckApprovedSelection(selection));
  ApprovedPolicy approval;
  approval.selection = selection;
  CUSTODY_ASSIGN_OR_RETURN(approval.pcr_digest, PcrDigest(selection, values));
  CUSTODY_ASSIGN_OR_RETURN(approval.approved_digest,
                           PolicyPcrDigest(crypto::Sha256Digest{}, selection, approval.pcr_digest));
  approval.policy_ref.assign(policy_ref.begin(), policy_ref.end());
  CUSTODY_ASSIGN_OR_RETURN(
      crypto::P256Signature r_s,
      policy_key.SignDigest(ApprovalHash(approval.approved_digest, approval.policy_ref)));
  CUSTODY_ASSIGN_OR_RETURN(approval.signature, MarshalEcdsaSignature(r_s));
  return approval;
}

Status VerifyApprovedPolicy(const ApprovedPolicy& approval,
                            const crypto::P256PublicKey& policy_key) {
  if (policy_key.get() == nullptr) return InvalidArgument("empty policy key object");
  CUSTODY_RETURN_IF_ERROR(CheckPolicyRef(approval.policy_ref));
  // The signature first: it covers approved_digest and policy_ref, and nothing else of the
  // approval is worth interpreting unless the custodian signed it.
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256Signature r_s, ParseEcdsaSignature(approval.signature));
  Status signature =
      policy_key.VerifyDigest(ApprovalHash(approval.approved_digest, approval.policy_ref), r_s);
  if (!signature.ok()) {
    return signature.code() == StatusCode::kUnauthenticated
               ? Unauthenticated(
                     "policy approval signature does not verify under the "
                     "custodian policy key")
               : signature;
  }
  // selection and pcr_digest are what the device hands its TPM (TPM2_PolicyPCR); they must be
  // the ones approved_digest commits to, or the TPM would reach another digest and refuse.
  CUSTODY_RETURN_IF_ERROR(CheckApprovedSelection(approval.selection));
  CUSTODY_ASSIGN_OR_RETURN(
      crypto::Sha256Digest expected,
      PolicyPcrDigest(crypto::Sha256Digest{}, approval.selection, approval.pcr_digest));
  if (expected != approval.approved_digest) {
    return InvalidArgument("inconsistent approval: approved_digest " +
                           HexEncode(approval.approved_digest) + " is not the PolicyPCR digest " +
                           HexEncode(expected) + " of PCRs " + approval.selection.ToString() +
                           " with pcr_digest " + HexEncode(approval.pcr_digest));
  }
  return OkStatus();
}

}  // namespace custody::tpm
