#include "core/tpm/policy.h"

#include <gtest/gtest.h>

#include <string>

#include "core/base/test_util.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

using custody::testing::Hex;

using crypto::Sha256Digest;

Sha256Digest Digest(uint8_t fill) {
  Sha256Digest d;
  d.fill(fill);
  return d;
}

PcrSelection Select(std::vector<uint32_t> pcrs) {
  Result<PcrSelection> s = PcrSelection::Of(std::move(pcrs));
  EXPECT_TRUE(s.ok());
  return *s;
}

// RFC 5903 §8.1's public point, used as a fixed custodian policy key so the digests below are
// constants.
constexpr std::string_view kFixedPolicyKey =
    "04dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
    "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3";

crypto::P256PublicKey FixedPolicyKey() {
  Result<crypto::P256PublicKey> key = crypto::P256PublicKey::FromUncompressed(Hex(kFixedPolicyKey));
  EXPECT_TRUE(key.ok());
  return *key;
}

// The expected values below were produced by a TPM (swtpm 0.7, tpm2-tools 5.4) in trial sessions:
//   tpm2_policypcr -S trial -l sha256:<pcrs> -f <values> -L out
//   tpm2_loadexternal -C o -u <TPM2B_PUBLIC of PolicyKeyPublic(key)> -n key.name
//   tpm2_policyauthorize -S trial -n key.name [-q ref] -L out
TEST(PolicyTest, PolicyPcrMatchesATpmTrialSession) {
  PcrValues zeros = {{0, Digest(0)}, {2, Digest(0)}, {4, Digest(0)}, {7, Digest(0)}};
  PcrSelection selection = Select({0, 2, 4, 7});
  Result<Sha256Digest> pcr_digest = PcrDigest(selection, zeros);
  ASSERT_TRUE(pcr_digest.ok());
  EXPECT_EQ(HexEncode(*pcr_digest),
            "38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca");
  Result<Sha256Digest> policy = PolicyPcrDigest(Sha256Digest{}, selection, *pcr_digest);
  ASSERT_TRUE(policy.ok()) << policy.error().ToString();
  EXPECT_EQ(HexEncode(*policy), "4f04c837291ac05d8c8fceb5d03ac530d3189c1dd24dc744f2145cf71eaa9cf6");

  PcrSelection seven = Select({7});
  Result<Sha256Digest> seven_digest = PcrDigest(seven, {{7, Digest(0x17)}});
  ASSERT_TRUE(seven_digest.ok());
  Result<Sha256Digest> seven_policy = PolicyPcrDigest(Sha256Digest{}, seven, *seven_digest);
  ASSERT_TRUE(seven_policy.ok());
  EXPECT_EQ(HexEncode(*seven_policy),
            "eb4cea81a0e709882674fcece6082abc0d33ae7584edee3be13f6aaadf48e055");
}

TEST(PolicyTest, PolicyAuthorizeMatchesATpmTrialSession) {
  Result<Bytes> name = ObjectName(PolicyKeyPublic(FixedPolicyKey()));
  ASSERT_TRUE(name.ok());
  EXPECT_EQ(HexEncode(*name),
            "000b65c4aa38077d3094ef2f54f0a59074eee5cffb8306846c51a3adc16b305ceef6");
  Result<Sha256Digest> binding = BindingKeyAuthPolicy(FixedPolicyKey());
  ASSERT_TRUE(binding.ok()) << binding.error().ToString();
  EXPECT_EQ(HexEncode(*binding),
            "2f687da4e084e2844a00097b85ec53b808229200ec9706dc13cb576d72906bb6");
  Result<Sha256Digest> no_ref = PolicyAuthorizeDigest(*name, {});
  ASSERT_TRUE(no_ref.ok());
  EXPECT_EQ(*no_ref, *binding);
  Result<Sha256Digest> with_ref = PolicyAuthorizeDigest(*name, Hex("010203"));
  ASSERT_TRUE(with_ref.ok());
  EXPECT_EQ(HexEncode(*with_ref),
            "3ee052876f89beee3bc870a4918dd027f4cdcf089a1d944167a7523473f580cb");
}

// The same digests, recomputed from the formulas in policy.h with nothing but SHA-256, for inputs
// other than the fixed vectors (a chained PolicyPCR from a non-zero digest, a long policyRef).
TEST(PolicyTest, DigestsFollowTheSpecifiedFormulas) {
  PcrSelection selection = Select({1, 8, 23});
  Sha256Digest previous = Digest(0xab);
  Sha256Digest pcr_digest = Digest(0xcd);
  Result<Sha256Digest> policy = PolicyPcrDigest(previous, selection, pcr_digest);
  ASSERT_TRUE(policy.ok());
  Bytes message(previous.begin(), previous.end());
  AppendBytes(message, Hex("0000017f"));
  // TPML_PCR_SELECTION: count 00000001, hash 000b, sizeofSelect 03, bits 1, 8, 23 = 020180.
  AppendBytes(message, Hex("00000001000b03020180"));
  AppendBytes(message, pcr_digest);
  EXPECT_EQ(*policy, crypto::Sha256(message));

  Bytes name =
      Hex("000b"
          "1111111111111111111111111111111111111111111111111111111111111111");
  Bytes ref(32, 0x33);
  Result<Sha256Digest> authorize = PolicyAuthorizeDigest(name, ref);
  ASSERT_TRUE(authorize.ok());
  Bytes first(32, 0);
  AppendBytes(first, Hex("0000016a"));
  AppendBytes(first, name);
  Sha256Digest step = crypto::Sha256(first);
  Bytes second(step.begin(), step.end());
  AppendBytes(second, ref);
  EXPECT_EQ(*authorize, crypto::Sha256(second));
}

TEST(PolicyTest, PolicyAuthorizeRejectsALongPolicyRefAndANonSha256Name) {
  Bytes name =
      Hex("000b"
          "1111111111111111111111111111111111111111111111111111111111111111");
  EXPECT_TRUE(PolicyAuthorizeDigest(name, Bytes(32, 1)).ok());
  EXPECT_EQ(PolicyAuthorizeDigest(name, Bytes(33, 1)).error().code(), StatusCode::kInvalidArgument);
  Bytes sha1_name =
      Hex("0004"
          "1111111111111111111111111111111111111111");
  EXPECT_EQ(PolicyAuthorizeDigest(sha1_name, {}).error().code(), StatusCode::kInvalidArgument);
  Bytes wrong_alg = name;
  wrong_alg[1] = 0x0c;
  EXPECT_EQ(PolicyAuthorizeDigest(wrong_alg, {}).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PolicyAuthorizeDigest({}, {}).error().code(), StatusCode::kInvalidArgument);
}

// ----- approvals -------------------------------------------------------------------------------

class PolicyApprovalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<crypto::P256PrivateKey> key = crypto::P256PrivateKey::Generate();
    ASSERT_TRUE(key.ok());
    key_ = std::move(key).value();
    values_ = {{0, Digest(0x10)},
               {2, Digest(0x12)},
               {4, Digest(0x14)},
               {7, Digest(0x17)},
               {9, Digest(0x19)}};
  }

  ApprovedPolicy Approve(ByteSpan ref = {}) {
    Result<ApprovedPolicy> a = ApprovePcrPolicy(key_, selection_, values_, ref);
    EXPECT_TRUE(a.ok()) << a.error().ToString();
    return a ? *a : ApprovedPolicy{};
  }

  crypto::P256PrivateKey key_;
  PcrSelection selection_ = Select({0, 2, 4, 7});
  PcrValues values_;
};

TEST_F(PolicyApprovalTest, ApprovalFillsEveryFieldAndVerifies) {
  const Bytes ref = {'o', 's', '-', '2', '4'};
  ApprovedPolicy a = Approve(ref);
  EXPECT_EQ(a.selection, selection_);
  Result<Sha256Digest> pcr_digest = PcrDigest(selection_, values_);  // PCR 9 is not selected
  ASSERT_TRUE(pcr_digest.ok());
  EXPECT_EQ(a.pcr_digest, *pcr_digest);
  Result<Sha256Digest> approved = PolicyPcrDigest(Sha256Digest{}, selection_, a.pcr_digest);
  ASSERT_TRUE(approved.ok());
  EXPECT_EQ(a.approved_digest, *approved);
  EXPECT_EQ(a.policy_ref, ref);
  // TPMT_SIGNATURE: ECDSA (0x0018), SHA-256 (0x000b), 32-byte R and S, over
  // SHA-256(approved_digest || policy_ref) by the policy key.
  ASSERT_EQ(a.signature.size(), 2u + 2 + 2 + 32 + 2 + 32);
  EXPECT_EQ(HexEncode(ByteSpan(a.signature).first(6)), "0018000b0020");
  Result<crypto::P256Signature> r_s = ParseEcdsaSignature(a.signature);
  ASSERT_TRUE(r_s.ok());
  Bytes signed_message(a.approved_digest.begin(), a.approved_digest.end());
  AppendBytes(signed_message, ref);
  EXPECT_TRUE(key_.public_key().VerifyDigest(crypto::Sha256(signed_message), *r_s).ok());
  Status st = VerifyApprovedPolicy(a, key_.public_key());
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(PolicyApprovalTest, ApprovalWithoutPolicyRefVerifies) {
  ApprovedPolicy a = Approve();
  EXPECT_TRUE(a.policy_ref.empty());
  EXPECT_TRUE(VerifyApprovedPolicy(a, key_.public_key()).ok());
}

TEST_F(PolicyApprovalTest, RejectsAnApprovalSignedByAnotherKey) {
  Result<crypto::P256PrivateKey> other = crypto::P256PrivateKey::Generate();
  ASSERT_TRUE(other.ok());
  Result<ApprovedPolicy> forged = ApprovePcrPolicy(*other, selection_, values_, {});
  ASSERT_TRUE(forged.ok());
  Status st = VerifyApprovedPolicy(*forged, key_.public_key());
  EXPECT_EQ(st.code(), StatusCode::kUnauthenticated) << st.ToString();
  EXPECT_NE(st.message().find("policy approval signature does not verify"), std::string::npos);
}

TEST_F(PolicyApprovalTest, RejectsATamperedApprovedDigestOrPolicyRef) {
  ApprovedPolicy a = Approve(Bytes{1, 2, 3});
  ApprovedPolicy digest = a;
  digest.approved_digest[0] ^= 0x80;
  EXPECT_EQ(VerifyApprovedPolicy(digest, key_.public_key()).code(), StatusCode::kUnauthenticated);
  ApprovedPolicy ref = a;
  ref.policy_ref.push_back(4);
  EXPECT_EQ(VerifyApprovedPolicy(ref, key_.public_key()).code(), StatusCode::kUnauthenticated);
  ApprovedPolicy no_ref = a;
  no_ref.policy_ref.clear();
  EXPECT_EQ(VerifyApprovedPolicy(no_ref, key_.public_key()).code(), StatusCode::kUnauthenticated);
}

TEST_F(PolicyApprovalTest, RejectsASelectionOrPcrDigestTheApprovalDoesNotCommitTo) {
  ApprovedPolicy a = Approve();
  ApprovedPolicy pcr = a;
  pcr.pcr_digest[5] ^= 1;
  Status st = VerifyApprovedPolicy(pcr, key_.public_key());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("inconsistent approval"), std::string::npos);
  ApprovedPolicy selection = a;
  selection.selection = Select({0, 2, 4});
  EXPECT_EQ(VerifyApprovedPolicy(selection, key_.public_key()).code(),
            StatusCode::kInvalidArgument);
  ApprovedPolicy empty = a;
  empty.selection = PcrSelection{};
  EXPECT_EQ(VerifyApprovedPolicy(empty, key_.public_key()).code(), StatusCode::kInvalidArgument);
}

TEST_F(PolicyApprovalTest, EveryBitFlipOfTheSignatureIsRefused) {
  ApprovedPolicy a = Approve();
  for (size_t bit = 0; bit < a.signature.size() * 8; ++bit) {
    ApprovedPolicy bad = a;
    bad.signature[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Status st = VerifyApprovedPolicy(bad, key_.public_key());
    ASSERT_FALSE(st.ok()) << "bit " << bit;
    ASSERT_TRUE(st.code() == StatusCode::kUnauthenticated ||
                st.code() == StatusCode::kInvalidArgument)
        << "bit " << bit << ": " << st.ToString();
  }
  ApprovedPolicy trailing = a;
  trailing.signature.push_back(0);
  EXPECT_EQ(VerifyApprovedPolicy(trailing, key_.public_key()).code(), StatusCode::kInvalidArgument);
}

TEST_F(PolicyApprovalTest, RefusesAPolicyRefLongerThan32Bytes) {
  EXPECT_TRUE(ApprovePcrPolicy(key_, selection_, values_, Bytes(32, 7)).ok());
  Result<ApprovedPolicy> too_long = ApprovePcrPolicy(key_, selection_, values_, Bytes(33, 7));
  EXPECT_EQ(too_long.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_long.error().message().find("at most 32"), std::string::npos);
  ApprovedPolicy a = Approve(Bytes(32, 7));
  a.policy_ref.push_back(7);
  EXPECT_EQ(VerifyApprovedPolicy(a, key_.public_key()).code(), StatusCode::kInvalidArgument);
}

TEST_F(PolicyApprovalTest, RefusesAnEmptySelectionAndMissingValues) {
  EXPECT_EQ(ApprovePcrPolicy(key_, PcrSelection{}, values_, {}).error().code(),
            StatusCode::kInvalidArgument);
  PcrValues missing = values_;
  missing.erase(4);
  Result<ApprovedPolicy> r = ApprovePcrPolicy(key_, selection_, missing, {});
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("PCR 4"), std::string::npos) << r.error().message();
}

TEST_F(PolicyApprovalTest, TheBindingKeyPolicyDependsOnlyOnThePolicyKey) {
  Result<Sha256Digest> a = BindingKeyAuthPolicy(key_.public_key());
  Result<Sha256Digest> b = BindingKeyAuthPolicy(key_.public_key());
  Result<crypto::P256PrivateKey> other = crypto::P256PrivateKey::Generate();
  ASSERT_TRUE(a.ok() && b.ok() && other.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *BindingKeyAuthPolicy(other->public_key()));
  // An approval never changes it: that is what lets the custodian approve a new platform state
  // without re-creating the device's binding key.
  EXPECT_NE(*a, Approve().approved_digest);
}

}  // namespace
}  // namespace custody::tpm
