// Pure tests of the shared TPM object descriptions: selections, encodings, Names, digests.
#include "core/tpm/objects.h"

#include <gtest/gtest.h>

#include "core/tpm/tss_status.h"

namespace custody::tpm {
namespace {

TEST(TpmPcrSelection, ParsesNormalisesAndRejects) {
  EXPECT_EQ(PcrSelection::Parse("7, 0,4,2").value().ToString(), "0,2,4,7");
  for (const char* bad : {"", "1,,2", "1,", "a", "24", "1,1", "-1", "3 4"}) {
    Result<PcrSelection> r = PcrSelection::Parse(bad);
    EXPECT_FALSE(r.has_value()) << bad;
    if (!r) {
      EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
    }
  }
  EXPECT_NE(PcrSelection::Of({3, 3}).error().message().find("twice"), std::string::npos);
}

TEST(TpmPcrSelection, MapsToTheSelectBitmap) {
  TPML_PCR_SELECTION t = ToTpml(PcrSelection::Of({0, 2, 4, 7, 8, 23}).value()).value();
  ASSERT_EQ(t.count, 1u);
  EXPECT_EQ(t.pcrSelections[0].hash, TPM2_ALG_SHA256);
  EXPECT_EQ(t.pcrSelections[0].sizeofSelect, 3);
  EXPECT_EQ(t.pcrSelections[0].pcrSelect[0], 0x95);
  EXPECT_EQ(t.pcrSelections[0].pcrSelect[1], 0x01);
  EXPECT_EQ(t.pcrSelections[0].pcrSelect[2], 0x80);
  // count(4) | hash(2) | size(1) | select(3)
  EXPECT_EQ(HexEncode(MarshalPcrSelection(PcrSelection::Of({0, 7}).value()).value()),
            "00000001000b03810000");
}

TEST(TpmObjects, PublicAreasRoundTripAndRejectTrailingBytes) {
  for (const TPMT_PUBLIC& t : {SrkTemplate(), EkTemplate(EkType::kEcc), EkTemplate(EkType::kRsa),
                               AkTemplate(), BindingKeyTemplate({})}) {
    Bytes b = MarshalPublic2B(t).value();
    Result<TPMT_PUBLIC> back = UnmarshalPublic2B(b);
    ASSERT_TRUE(back.has_value()) << back.error().ToString();
    EXPECT_EQ(MarshalPublic2B(*back).value(), b);
    Bytes longer = b;
    longer.push_back(0);
    EXPECT_EQ(UnmarshalPublic2B(longer).error().code(), StatusCode::kInvalidArgument);
    EXPECT_FALSE(UnmarshalPublic2B(ByteSpan(b.data(), b.size() - 1)).has_value());
  }
}

TEST(TpmObjects, NamesAreSha256OfThePublicArea) {
  Bytes name = ObjectName(AkTemplate()).value();
  ASSERT_EQ(name.size(), 34u);
  EXPECT_EQ(name[0], 0x00);
  EXPECT_EQ(name[1], 0x0b);
  crypto::Sha256Digest h = crypto::Sha256(MarshalPublic(AkTemplate()).value());
  EXPECT_TRUE(std::equal(h.begin(), h.end(), name.begin() + 2));
  // Any attribute changes the Name: the custodian's checks rely on it.
  TPMT_PUBLIC other = AkTemplate();
  other.objectAttributes ^= TPMA_OBJECT_FIXEDTPM;
  EXPECT_NE(ObjectName(other).value(), name);
  other = AkTemplate();
  other.nameAlg = TPM2_ALG_SHA1;
  EXPECT_EQ(ObjectName(other).error().code(), StatusCode::kUnimplemented);
}

// The EK templates' policy constant is PolicySecret(TPM_RH_ENDORSEMENT) with an empty policyRef:
// H(H(0^32 || TPM_CC_PolicySecret || Name(TPM_RH_ENDORSEMENT)) || ""), the Name of a permanent
// handle being the handle itself.
TEST(TpmObjects, EkPolicyIsPolicySecretOfTheEndorsementHierarchy) {
  Bytes step(32, 0);
  for (uint8_t b : {0x00, 0x00, 0x01, 0x51}) step.push_back(b);  // TPM2_CC_PolicySecret
  for (uint8_t b : {0x40, 0x00, 0x00, 0x0b}) step.push_back(b);  // TPM2_RH_ENDORSEMENT
  crypto::Sha256Digest inner = crypto::Sha256(step);
  crypto::Sha256Digest digest = crypto::Sha256(inner);
  EXPECT_EQ(HexEncode(digest), HexEncode(kEkPolicyDigest));
}

TEST(TpmObjects, TemplatesHaveTheDocumentedAttributes) {
  const TPMA_OBJECT origin =
      TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;
  const TPMT_PUBLIC binding = BindingKeyTemplate({});
  EXPECT_EQ(binding.objectAttributes & origin, origin);
  EXPECT_EQ(binding.objectAttributes & TPMA_OBJECT_USERWITHAUTH, 0u);
  EXPECT_EQ(binding.objectAttributes & (TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT), 0u);
  EXPECT_NE(binding.objectAttributes & TPMA_OBJECT_DECRYPT, 0u);
  EXPECT_EQ(binding.authPolicy.size, 32);
  const TPMT_PUBLIC ak = AkTemplate();
  EXPECT_EQ(ak.objectAttributes & (origin | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT),
            origin | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT);
  EXPECT_EQ(ak.objectAttributes & TPMA_OBJECT_DECRYPT, 0u);
  EXPECT_EQ(ak.parameters.eccDetail.scheme.scheme, TPM2_ALG_ECDSA);
}

TEST(TpmObjects, EccPublicKeyRoundTripsAndRejectsOtherKeys) {
  crypto::P256PrivateKey key = crypto::P256PrivateKey::Generate().value();
  TPMT_PUBLIC pub = PolicyKeyPublic(key.public_key());
  EXPECT_EQ(EccPublicKey(pub).value().uncompressed(), key.public_key().uncompressed());
  EXPECT_EQ(EccPublicKey(EkTemplate(EkType::kRsa)).error().code(), StatusCode::kInvalidArgument);
  pub.unique.ecc.y.buffer[5] ^= 1;  // off the curve
  EXPECT_FALSE(EccPublicKey(pub).has_value());
  pub.unique.ecc.x.size = 33;
  EXPECT_EQ(EccPublicKey(pub).error().code(), StatusCode::kInvalidArgument);
}

TEST(TpmObjects, PcrDigestHashesTheSelectedValuesInOrder) {
  PcrValues values;
  for (uint32_t i = 0; i < 8; ++i) values[i].fill(static_cast<uint8_t>(i));
  PcrSelection sel = PcrSelection::Of({7, 2}).value();
  Bytes both(values[2].begin(), values[2].end());
  both.insert(both.end(), values[7].begin(), values[7].end());
  EXPECT_EQ(PcrDigest(sel, values).value(), crypto::Sha256(both));
  values.erase(7);
  Result<crypto::Sha256Digest> missing = PcrDigest(sel, values);
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("PCR 7"), std::string::npos);
}

TEST(TpmObjects, CounterNameChangesWhenWritten) {
  Bytes fresh = NvName(NvCounterPublic(0x01000C57, false)).value();
  Bytes written = NvName(NvCounterPublic(0x01000C57, true)).value();
  EXPECT_EQ(fresh.size(), 34u);
  EXPECT_NE(fresh, written);
  EXPECT_NE(NvName(NvCounterPublic(0x01000C58, true)).value(), written);
}

TEST(TpmStatus, MapsTpmCodesToCustodyCodesWithTheDecodedText) {
  EXPECT_TRUE(TssStatus(TSS2_RC_SUCCESS, "x").ok());
  Status policy = TssStatus(TPM2_RC_POLICY_FAIL | TPM2_RC_S | TPM2_RC_1, "ECDH_ZGen");
  EXPECT_EQ(policy.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(policy.message().find("ECDH_ZGen: "), std::string::npos);
  EXPECT_EQ(TpmBaseCode(TPM2_RC_POLICY_FAIL | TPM2_RC_S | TPM2_RC_1), TPM2_RC_POLICY_FAIL);
  EXPECT_EQ(TssStatus(TPM2_RC_NV_DEFINED, "define").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(TssStatus(TPM2_RC_LOCKOUT, "auth").code(), StatusCode::kUnavailable);
  EXPECT_EQ(TssStatus(TSS2_TCTI_RC_IO_ERROR, "send").code(), StatusCode::kUnavailable);
  EXPECT_EQ(TssStatus(TSS2_MU_RC_INSUFFICIENT_BUFFER, "decode").code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace custody::tpm
