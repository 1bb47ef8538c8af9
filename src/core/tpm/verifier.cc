#include "core/tpm/verifier.h"

#include <tss2/tss2_mu.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/secret_buffer.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"
#include "core/tpm/tss_status.h"

namespace custody::tpm {
namespace {

// One object attribute a key must have set (or clear), with the name TPM 2.0 Part 2 gives it, so
// a refusal names the attribute an operator can look up.
struct AttributeRule {
  TPMA_OBJECT bit;
  std::string_view name;
  bool set;
};

constexpr AttributeRule kAkAttributes[] = {
    {TPMA_OBJECT_FIXEDTPM, "fixedTPM", true},
    {TPMA_OBJECT_FIXEDPARENT, "fixedParent", true},
    {TPMA_OBJECT_SENSITIVEDATAORIGIN, "sensitiveDataOrigin", true},
    // restricted: the TPM signs a digest of data starting with TPM_GENERATED_VALUE with this key
    // only when it produced that data itself (an outside digest needs a hash ticket proving
    // otherwise). Without it the magic proves nothing.
    {TPMA_OBJECT_RESTRICTED, "restricted", true},
    {TPMA_OBJECT_SIGN_ENCRYPT, "sign", true},
    {TPMA_OBJECT_DECRYPT, "decrypt", false},
};

constexpr AttributeRule kBindingKeyAttributes[] = {
    {TPMA_OBJECT_FIXEDTPM, "fixedTPM", true},
    {TPMA_OBJECT_FIXEDPARENT, "fixedParent", true},
    {TPMA_OBJECT_SENSITIVEDATAORIGIN, "sensitiveDataOrigin", true},
    {TPMA_OBJECT_DECRYPT, "decrypt", true},
    {TPMA_OBJECT_RESTRICTED, "restricted", false},
    {TPMA_OBJECT_SIGN_ENCRYPT, "sign", false},
    // userWithAuth set would let anyone who knows the (empty) authValue use the key, bypassing
    // the custodian-approved PCR policy entirely.
    {TPMA_OBJECT_USERWITHAUTH, "userWithAuth", false},
};

std::string AttestTypeName(TPM2_ST type) {
  switch (type) {
    case TPM2_ST_ATTEST_QUOTE:
      return AlgHex(type) + " (quote)";
    case TPM2_ST_ATTEST_CERTIFY:
      return AlgHex(type) + " (certify)";
    case TPM2_ST_ATTEST_NV:
      return AlgHex(type) + " (NV certify)";
    default:
      return AlgHex(type);
  }
}

Status CheckAttributes(const TPMT_PUBLIC& pub, std::span<const AttributeRule> rules,
                       std::string_view key, Status (*fail)(std::string)) {
  for (const AttributeRule& rule : rules) {
    const bool is_set = (pub.objectAttributes & rule.bit) != 0;
    if (is_set != rule.set) {
      return fail(std::string(key) + " attribute " + std::string(rule.name) + " is " +
                  (is_set ? "set" : "clear") + ", Custody requires it " +
                  (rule.set ? "set" : "clear"));
    }
  }
  return OkStatus();
}

// Algorithm checks shared by the AK and the binding key: both are ECC P-256 with a SHA-256 Name,
// and carry a public point that is on the curve, which is returned.
Result<crypto::P256PublicKey> CheckEccP256(const TPMT_PUBLIC& pub, std::string_view key,
                                           Status (*fail)(std::string)) {
  if (pub.type != TPM2_ALG_ECC) {
    return fail(std::string(key) + " type is " + AlgHex(pub.type) + ", expected ECC (0x0023)");
  }
  if (pub.nameAlg != TPM2_ALG_SHA256) {
    return fail(std::string(key) + " nameAlg is " + AlgHex(pub.nameAlg) +
                ", expected SHA-256 (0x000b)");
  }
  if (pub.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    return fail(std::string(key) + " curve is " + AlgHex(pub.parameters.eccDetail.curveID) +
                ", expected NIST P-256 (0x0003)");
  }
  Result<crypto::P256PublicKey> point = EccPublicKey(pub);
  if (!point) return point.error().WithContext(key);
  return point;
}

Result<TPMT_PUBLIC> ParsePublic(ByteSpan bytes, std::string_view key) {
  Result<TPMT_PUBLIC> pub = UnmarshalPublic2B(bytes);
  if (!pub) return pub.error().WithContext(key);
  return pub;
}

// The AK's public key, after every check CheckAkPublic makes (parsed once per attestation).
Result<crypto::P256PublicKey> AkKey(ByteSpan ak_public) {
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(ak_public, "AK"));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey key, CheckEccP256(pub, "AK", InvalidArgument));
  CUSTODY_RETURN_IF_ERROR(CheckAttributes(pub, kAkAttributes, "AK", InvalidArgument));
  const TPMT_ECC_SCHEME& scheme = pub.parameters.eccDetail.scheme;
  CUSTODY_RETURN_IF_ERROR(
      CheckEcdsaSha256(scheme.scheme, scheme.details.ecdsa.hashAlg, "AK signing"));
  return key;
}

Status VerifyWith(const crypto::P256PublicKey& key, ByteSpan signed_bytes, ByteSpan signature) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256Signature r_s, ParseEcdsaSignature(signature));
  return key.VerifyDigest(crypto::Sha256(signed_bytes), r_s);
}

// The attested bytes are interpreted only here, and only after the AK's signature over them
// verified: everything a TPMS_ATTEST says is attacker-controlled until then.
Result<TPMS_ATTEST> OpenAttestation(const Attestation& attestation, ByteSpan ak_public,
                                    ByteSpan nonce, TPM2_ST type, std::string_view what) {
  if (nonce.empty()) {
    return InvalidArgument(std::string(what) + ": no nonce to check against (every " +
                           std::string(what) + " must answer a fresh custodian nonce)");
  }
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey ak, AkKey(ak_public));
  Status signature = VerifyWith(ak, attestation.attest, attestation.signature);
  if (!signature.ok()) {
    if (signature.code() == StatusCode::kUnauthenticated) {
      return Unauthenticated(std::string(what) +
                             " signature does not verify under the device's AK");
    }
    return signature.WithContext(std::string(what) + " signature");
  }

  if (attestation.attest.empty()) return InvalidArgument(std::string(what) + " has no bytes");
  TPMS_ATTEST attest{};
  size_t offset = 0;
  TSS2_RC rc = Tss2_MU_TPMS_ATTEST_Unmarshal(attestation.attest.data(), attestation.attest.size(),
                                             &offset, &attest);
  if (rc != TSS2_RC_SUCCESS) {
    return InvalidArgument(std::string(what) + " is not a TPMS_ATTEST (" +
                           std::to_string(attestation.attest.size()) + " bytes): " + RcHex(rc));
  }
  if (offset != attestation.attest.size()) {
    return InvalidArgument(std::string(what) + " TPMS_ATTEST is followed by " +
                           std::to_string(attestation.attest.size() - offset) +
                           " unexpected bytes");
  }
  if (attest.magic != TPM2_GENERATED_VALUE) {
    return Unauthenticated(std::string(what) + " is not TPM-generated: magic is " +
                           RcHex(attest.magic) + ", expected " + RcHex(TPM2_GENERATED_VALUE));
  }
  if (attest.type != type) {
    return InvalidArgument(std::string(what) + " has attestation type " +
                           AttestTypeName(attest.type) + ", expected " + AttestTypeName(type));
  }
  if (!ConstantTimeEquals(ByteSpan(attest.extraData.buffer, attest.extraData.size), nonce)) {
    return Unauthenticated(std::string(what) + " nonce does not match: a replayed or stale " +
                           std::string(what));
  }
  return attest;
}

// The SHA-256 bank selection a quote covers, as indices. Other banks are refused: Custody's
// policies speak only of SHA-256 values, and a value of another bank would go unchecked.
Result<std::vector<uint32_t>> QuotedPcrs(const TPML_PCR_SELECTION& tpml) {
  if (tpml.count > TPM2_NUM_PCR_BANKS) {
    return InvalidArgument("quote PCR selection names " + std::to_string(tpml.count) + " banks");
  }
  std::vector<uint32_t> pcrs;
  bool seen_sha256 = false;
  for (uint32_t i = 0; i < tpml.count; ++i) {
    const TPMS_PCR_SELECTION& bank = tpml.pcrSelections[i];
    if (bank.sizeofSelect > sizeof(bank.pcrSelect)) {
      return InvalidArgument("quote PCR selection has " + std::to_string(bank.sizeofSelect) +
                             " select bytes");
    }
    std::vector<uint32_t> indices;
    for (uint32_t byte = 0; byte < bank.sizeofSelect; ++byte) {
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if ((bank.pcrSelect[byte] & (1u << bit)) != 0) indices.push_back(byte * 8 + bit);
      }
    }
    if (bank.hash != TPM2_ALG_SHA256) {
      if (indices.empty()) continue;
      return FailedPrecondition("quote covers PCRs of bank " + AlgHex(bank.hash) +
                                "; Custody quotes only the SHA-256 bank");
    }
    if (seen_sha256) return InvalidArgument("quote selects the SHA-256 bank twice");
    seen_sha256 = true;
    pcrs = std::move(indices);
  }
  return pcrs;
}

std::string ListPcrs(const std::vector<uint32_t>& pcrs) {
  if (pcrs.empty()) return "none";
  std::string out;
  for (uint32_t p : pcrs) out += (out.empty() ? "" : ",") + std::to_string(p);
  return out;
}

// Every PCR the golden set names, checked against the verified values; one line per difference.
std::vector<std::string> GoldenDifferences(const GoldenPcrSet& set, const PcrValues& quoted) {
  std::vector<std::string> diffs;
  for (const auto& [pcr, want] : set.pcrs) {
    auto it = quoted.find(pcr);
    if (it == quoted.end()) {
      diffs.push_back("PCR " + std::to_string(pcr) + " is not quoted but golden set '" + set.name +
                      "' wants " + HexEncode(want));
    } else if (it->second != want) {
      diffs.push_back("PCR " + std::to_string(pcr) + " is " + HexEncode(it->second) +
                      " but golden set '" + set.name + "' wants " + HexEncode(want));
    }
  }
  return diffs;
}

Result<std::string> MatchGolden(const std::vector<GoldenPcrSet>& golden, const PcrValues& quoted) {
  if (golden.empty()) return std::string();
  const GoldenPcrSet* nearest = nullptr;
  std::vector<std::string> nearest_diffs;
  for (const GoldenPcrSet& set : golden) {
    // A set that names no PCR would accept every platform state; that is never what an operator
    // meant (trust on first use is an empty list of sets, not an empty set).
    if (set.pcrs.empty()) {
      return InvalidArgument("golden set '" + set.name + "' names no PCRs");
    }
    std::vector<std::string> diffs = GoldenDifferences(set, quoted);
    if (diffs.empty()) return set.name;
    if (nearest == nullptr || diffs.size() < nearest_diffs.size()) {
      nearest = &set;
      nearest_diffs = std::move(diffs);
    }
  }
  std::string message = "PCR values match no approved golden set; the nearest, '" + nearest->name +
                        "', differs in " + std::to_string(nearest_diffs.size()) + " of " +
                        std::to_string(nearest->pcrs.size()) + " PCRs: ";
  for (size_t i = 0; i < nearest_diffs.size(); ++i) {
    message += (i == 0 ? "" : "; ") + nearest_diffs[i];
  }
  return PermissionDenied(message);
}

}  // namespace

Status CheckAkPublic(ByteSpan ak_public) { return AkKey(ak_public).status(); }

Status CheckBindingKeyPublic(ByteSpan binding_public, const crypto::Sha256Digest& expected_policy) {
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(binding_public, "binding key"));
  CUSTODY_RETURN_IF_ERROR(CheckEccP256(pub, "binding key", FailedPrecondition).status());
  CUSTODY_RETURN_IF_ERROR(
      CheckAttributes(pub, kBindingKeyAttributes, "binding key", FailedPrecondition));
  ByteSpan policy(pub.authPolicy.buffer, pub.authPolicy.size);
  if (!std::equal(policy.begin(), policy.end(), expected_policy.begin(), expected_policy.end())) {
    return FailedPrecondition("binding key authPolicy is " +
                              (policy.empty() ? std::string("empty") : HexEncode(policy)) +
                              ", expected " + HexEncode(expected_policy) +
                              " (PolicyAuthorize by the custodian policy key)");
  }
  return OkStatus();
}

Status VerifyTpmSignature(ByteSpan signer_public, ByteSpan signed_bytes, ByteSpan signature) {
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(signer_public, "signing key"));
  Result<crypto::P256PublicKey> key = EccPublicKey(pub);
  if (!key) return key.error().WithContext("signing key");
  return VerifyWith(*key, signed_bytes, signature);
}

Result<QuoteResult> VerifyQuote(const Quote& quote, const QuoteExpectation& expect) {
  if (expect.selection.empty()) {
    return InvalidArgument("quote: the policy selects no PCRs, so a quote would prove nothing");
  }
  CUSTODY_ASSIGN_OR_RETURN(TPMS_ATTEST attest,
                           OpenAttestation(quote.attestation, expect.ak_public, expect.nonce,
                                           TPM2_ST_ATTEST_QUOTE, "quote"));
  const TPMS_QUOTE_INFO& info = attest.attested.quote;

  CUSTODY_ASSIGN_OR_RETURN(std::vector<uint32_t> covered, QuotedPcrs(info.pcrSelect));
  if (covered != expect.selection.pcrs) {
    return FailedPrecondition("quote covers PCRs " + ListPcrs(covered) +
                              " but the policy requires " + ListPcrs(expect.selection.pcrs));
  }

  // Only values of quoted PCRs can be checked against the signed digest; anything else the
  // device sent alongside is unverifiable, and refused rather than silently dropped.
  for (const auto& [pcr, value] : quote.pcrs) {
    if (!std::binary_search(covered.begin(), covered.end(), pcr)) {
      return InvalidArgument("quote carries a value for PCR " + std::to_string(pcr) +
                             ", which it does not cover");
    }
  }
  Result<crypto::Sha256Digest> digest = PcrDigest(expect.selection, quote.pcrs);
  if (!digest) return digest.error().WithContext("quote");
  ByteSpan signed_digest(info.pcrDigest.buffer, info.pcrDigest.size);
  if (!std::equal(signed_digest.begin(), signed_digest.end(), digest->begin(), digest->end())) {
    return Unauthenticated(
        "quote: the reported PCR values do not hash to the signed pcrDigest (values altered "
        "after the quote)");
  }

  QuoteResult result;
  result.pcrs = quote.pcrs;
  CUSTODY_ASSIGN_OR_RETURN(result.matched_set, MatchGolden(expect.golden, result.pcrs));
  // For an AK outside the endorsement and platform hierarchies (Custody's is under the owner
  // SRK) the TPM obfuscates resetCount, restartCount and firmwareVersion with a per-key value:
  // they are stable for one AK and comparable across its quotes, not meaningful numbers.
  result.clock.clock_ms = attest.clockInfo.clock;
  result.clock.reset_count = attest.clockInfo.resetCount;
  result.clock.restart_count = attest.clockInfo.restartCount;
  result.clock.safe = attest.clockInfo.safe == TPM2_YES;
  result.firmware_version = attest.firmwareVersion;
  return result;
}

Status VerifyCertify(const Attestation& certify, ByteSpan ak_public, ByteSpan nonce,
                     ByteSpan object_public) {
  CUSTODY_ASSIGN_OR_RETURN(
      TPMS_ATTEST attest,
      OpenAttestation(certify, ak_public, nonce, TPM2_ST_ATTEST_CERTIFY, "certification"));
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC object, ParsePublic(object_public, "certified key"));
  CUSTODY_ASSIGN_OR_RETURN(Bytes name, ObjectName(object));
  const TPM2B_NAME& certified = attest.attested.certify.name;
  if (!std::equal(name.begin(), name.end(), certified.name, certified.name + certified.size)) {
    return Unauthenticated("certification is for Name " +
                           HexEncode(ByteSpan(certified.name, certified.size)) +
                           ", not for the presented key (" + HexEncode(name) + ")");
  }
  return OkStatus();
}

Result<uint64_t> VerifyNvCertify(const Attestation& certify, const NvCertifyExpectation& expect) {
  if (expect.index_name.empty()) {
    return InvalidArgument("NV certification: no index Name to check against");
  }
  CUSTODY_ASSIGN_OR_RETURN(TPMS_ATTEST attest,
                           OpenAttestation(certify, expect.ak_public, expect.nonce,
                                           TPM2_ST_ATTEST_NV, "NV certification"));
  const TPMS_NV_CERTIFY_INFO& info = attest.attested.nv;
  ByteSpan index_name(info.indexName.name, info.indexName.size);
  if (!std::equal(index_name.begin(), index_name.end(), expect.index_name.begin(),
                  expect.index_name.end())) {
    return Unauthenticated("NV certification is for index Name " + HexEncode(index_name) +
                           ", not Custody's counter (" + HexEncode(expect.index_name) + ")");
  }
  if (info.offset != 0 || info.nvContents.size != sizeof(uint64_t)) {
    return InvalidArgument("NV certification covers " + std::to_string(info.nvContents.size) +
                           " bytes at offset " + std::to_string(info.offset) +
                           ", expected the counter's 8 bytes at offset 0");
  }
  const uint64_t value = LoadBigEndian64(info.nvContents.buffer);
  if (expect.last_seen.has_value() && value < *expect.last_seen) {
    return FailedPrecondition("NV counter is " + std::to_string(value) +
                              " but the custodian last saw " + std::to_string(*expect.last_seen) +
                              ": a rolled-back counter or a replayed certification");
  }
  return value;
}

Result<Bytes> WrapToBindingKey(ByteSpan binding_public, const crypto::Sha256Digest& expected_policy,
                               ByteSpan secret, ByteSpan context) {
  if (secret.empty()) return InvalidArgument("nothing to wrap: the secret is empty");
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey key,
                           CheckedBindingKey(binding_public, expected_policy));
  return crypto::EciesWrap(key, secret, context);
}

Result<crypto::P256PublicKey> CheckedBindingKey(ByteSpan binding_public,
                                                const crypto::Sha256Digest& expected_policy) {
  CUSTODY_RETURN_IF_ERROR(CheckBindingKeyPublic(binding_public, expected_policy));
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(binding_public, "binding key"));
  return EccPublicKey(pub);
}

}  // namespace custody::tpm
