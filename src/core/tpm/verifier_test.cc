#include "core/tpm/verifier.h"

#include <gtest/gtest.h>
#include <tss2/tss2_mu.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/crypto/crypto.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

using crypto::Sha256Digest;

// A software key with a TPM-shaped public area: the verifier cannot tell it from a TPM key, which
// is exactly what lets these tests build attestations (and attacks on them) without a TPM.
struct SoftwareKey {
  crypto::P256PrivateKey key;
  TPMT_PUBLIC pub{};
  Bytes public_2b;  // TPM2B_PUBLIC
};

void SetPoint(TPMT_PUBLIC& pub, const crypto::P256PublicKey& key) {
  const auto& point = key.uncompressed();
  pub.unique.ecc.x.size = 32;
  std::memcpy(pub.unique.ecc.x.buffer, point.data() + 1, 32);
  pub.unique.ecc.y.size = 32;
  std::memcpy(pub.unique.ecc.y.buffer, point.data() + 33, 32);
}

Bytes Marshal2B(const TPMT_PUBLIC& pub) {
  Result<Bytes> bytes = MarshalPublic2B(pub);
  EXPECT_TRUE(bytes.ok()) << bytes.error().ToString();
  return bytes ? *bytes : Bytes();
}

SoftwareKey MakeKey(TPMT_PUBLIC templ) {
  Result<crypto::P256PrivateKey> key = crypto::P256PrivateKey::Generate();
  EXPECT_TRUE(key.ok());
  SoftwareKey out;
  out.key = std::move(key).value();
  out.pub = templ;
  SetPoint(out.pub, out.key.public_key());
  out.public_2b = Marshal2B(out.pub);
  return out;
}

SoftwareKey MakeAk() { return MakeKey(AkTemplate()); }

Sha256Digest Digest(uint8_t fill) {
  Sha256Digest d;
  d.fill(fill);
  return d;
}

Bytes Bytes8(std::string_view s) { return Bytes(s.begin(), s.end()); }

TPMS_ATTEST BaseAttest(TPM2_ST type, ByteSpan nonce) {
  TPMS_ATTEST a{};
  a.magic = TPM2_GENERATED_VALUE;
  a.type = type;
  a.qualifiedSigner.size = 34;
  a.qualifiedSigner.name[1] = 0x0b;
  a.extraData.size = static_cast<uint16_t>(nonce.size());
  std::memcpy(a.extraData.buffer, nonce.data(), nonce.size());
  a.clockInfo.clock = 987654321;
  a.clockInfo.resetCount = 7;
  a.clockInfo.restartCount = 2;
  a.clockInfo.safe = TPM2_YES;
  a.firmwareVersion = 0x0002000100000000ull;
  return a;
}

Bytes MarshalAttest(const TPMS_ATTEST& attest) {
  Bytes out(sizeof(TPMS_ATTEST));
  size_t offset = 0;
  EXPECT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&attest, out.data(), out.size(), &offset), 0u);
  out.resize(offset);
  return out;
}

// Signs exactly `attest` (whatever it holds) the way a TPM signs: ECDSA over SHA-256 of the bytes.
Attestation Sign(const SoftwareKey& signer, Bytes attest) {
  Result<crypto::P256Signature> r_s = signer.key.SignDigest(crypto::Sha256(attest));
  EXPECT_TRUE(r_s.ok());
  Result<Bytes> signature = MarshalEcdsaSignature(*r_s);
  EXPECT_TRUE(signature.ok());
  return Attestation{std::move(attest), *signature};
}

Attestation SignAttest(const SoftwareKey& signer, const TPMS_ATTEST& attest) {
  return Sign(signer, MarshalAttest(attest));
}

PcrSelection Select(std::vector<uint32_t> pcrs) {
  Result<PcrSelection> s = PcrSelection::Of(std::move(pcrs));
  EXPECT_TRUE(s.ok());
  return *s;
}

void ExpectError(const Status& status, StatusCode code, std::string_view needle) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << status.message() << "' does not mention '" << needle << "'";
}

// ----- quotes ----------------------------------------------------------------------------------

class VerifierQuoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_ = MakeAk();
    values_ = {{0, Digest(0x10)}, {2, Digest(0x12)}, {4, Digest(0x14)}, {7, Digest(0x17)}};
    expect_.ak_public = ak_.public_2b;
    expect_.nonce = Bytes8("nonce-0001-fresh");
    expect_.selection = Select({0, 2, 4, 7});
    expect_.golden = {GoldenPcrSet{"ubuntu-22.04", values_}};
  }

  // A TPMS_ATTEST of a quote of `selection` over `values` with `nonce`.
  TPMS_ATTEST QuoteAttest(ByteSpan nonce, const PcrSelection& selection, const PcrValues& values) {
    TPMS_ATTEST a = BaseAttest(TPM2_ST_ATTEST_QUOTE, nonce);
    Result<TPML_PCR_SELECTION> tpml = ToTpml(selection);
    EXPECT_TRUE(tpml.ok());
    a.attested.quote.pcrSelect = *tpml;
    Result<Sha256Digest> digest = PcrDigest(selection, values);
    EXPECT_TRUE(digest.ok());
    a.attested.quote.pcrDigest.size = 32;
    std::memcpy(a.attested.quote.pcrDigest.buffer, digest->data(), 32);
    return a;
  }

  Quote MakeQuote(const SoftwareKey& signer, ByteSpan nonce, const PcrSelection& selection,
                  const PcrValues& values) {
    return Quote{SignAttest(signer, QuoteAttest(nonce, selection, values)), values};
  }

  Quote GoodQuote() { return MakeQuote(ak_, expect_.nonce, expect_.selection, values_); }

  SoftwareKey ak_;
  PcrValues values_;
  QuoteExpectation expect_;
};

TEST_F(VerifierQuoteTest, AcceptsAGenuineQuoteAndReturnsTheVerifiedState) {
  Result<QuoteResult> r = VerifyQuote(GoodQuote(), expect_);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->matched_set, "ubuntu-22.04");
  EXPECT_EQ(r->pcrs, values_);
  EXPECT_EQ(r->clock.clock_ms, 987654321u);
  EXPECT_EQ(r->clock.reset_count, 7u);
  EXPECT_EQ(r->clock.restart_count, 2u);
  EXPECT_TRUE(r->clock.safe);
  EXPECT_EQ(r->clock.time_ms, 0u);
  EXPECT_EQ(r->firmware_version, 0x0002000100000000ull);
}

TEST_F(VerifierQuoteTest, AcceptsAnyStateWhenNoGoldenSetIsRequired) {
  expect_.golden.clear();
  Result<QuoteResult> r = VerifyQuote(GoodQuote(), expect_);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->matched_set, "");
  EXPECT_EQ(r->pcrs, values_);
}

TEST_F(VerifierQuoteTest, MatchesTheSetThatFitsAmongSeveral) {
  PcrValues old_values = values_;
  old_values[7] = Digest(0x77);
  // A set may name only some of the quoted PCRs.
  GoldenPcrSet partial{"boot-only", {{0, values_[0]}, {7, values_[7]}}};
  expect_.golden = {GoldenPcrSet{"ubuntu-20.04", old_values}, partial};
  Result<QuoteResult> r = VerifyQuote(GoodQuote(), expect_);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->matched_set, "boot-only");
}

TEST_F(VerifierQuoteTest, RejectsAWrongNonce) {
  Quote quote = MakeQuote(ak_, Bytes8("nonce-attacker-chose"), expect_.selection, values_);
  Result<QuoteResult> r = VerifyQuote(quote, expect_);
  ExpectError(r.error(), StatusCode::kUnauthenticated,
              "quote nonce does not match: a replayed or stale quote");
}

TEST_F(VerifierQuoteTest, RejectsAReplayedQuoteUnderTheNextNonce) {
  Quote quote = GoodQuote();
  ASSERT_TRUE(VerifyQuote(quote, expect_).ok());
  expect_.nonce = Bytes8("nonce-0002-fresh");
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kUnauthenticated,
              "replayed or stale");
  // A nonce that is a prefix of the signed one is not the signed one.
  expect_.nonce = Bytes8("nonce-0001");
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kUnauthenticated, "nonce");
}

TEST_F(VerifierQuoteTest, RefusesToCheckWithoutANonce) {
  Quote quote = MakeQuote(ak_, {}, expect_.selection, values_);
  expect_.nonce.clear();
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kInvalidArgument, "no nonce");
}

TEST_F(VerifierQuoteTest, RejectsAQuoteSignedByAnotherAk) {
  SoftwareKey other = MakeAk();
  Quote quote = MakeQuote(other, expect_.nonce, expect_.selection, values_);
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kUnauthenticated,
              "quote signature does not verify under the device's AK");
}

TEST_F(VerifierQuoteTest, RejectsAnAlteredPcrValue) {
  Quote quote = GoodQuote();
  quote.pcrs[7][31] ^= 0x01;
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kUnauthenticated,
              "do not hash to the signed pcrDigest");
  // Even when the altered value is the one a golden set wants.
  Quote swapped = GoodQuote();
  swapped.pcrs[4] = Digest(0x44);
  expect_.golden = {GoldenPcrSet{"wanted", swapped.pcrs}};
  ExpectError(VerifyQuote(swapped, expect_).error(), StatusCode::kUnauthenticated, "pcrDigest");
}

TEST_F(VerifierQuoteTest, RejectsMissingAndUncoveredPcrValues) {
  Quote missing = GoodQuote();
  missing.pcrs.erase(4);
  ExpectError(VerifyQuote(missing, expect_).error(), StatusCode::kInvalidArgument, "PCR 4");
  Quote extra = GoodQuote();
  extra.pcrs[9] = Digest(0x19);
  ExpectError(VerifyQuote(extra, expect_).error(), StatusCode::kInvalidArgument,
              "value for PCR 9, which it does not cover");
}

TEST_F(VerifierQuoteTest, RejectsAStateOutsideEveryGoldenSetNamingTheNearest) {
  PcrValues far = values_;
  far[0] = Digest(0xa0);
  far[2] = Digest(0xa2);
  PcrValues near = values_;
  near[7] = Digest(0xb7);
  expect_.golden = {GoldenPcrSet{"debian-11", far}, GoldenPcrSet{"ubuntu-22.04", near}};
  Status st = VerifyQuote(GoodQuote(), expect_).error();
  ExpectError(st, StatusCode::kPermissionDenied, "the nearest, 'ubuntu-22.04', differs in 1 of 4");
  ExpectError(st, StatusCode::kPermissionDenied,
              "PCR 7 is " + HexEncode(Digest(0x17)) + " but golden set 'ubuntu-22.04' wants " +
                  HexEncode(Digest(0xb7)));
  EXPECT_EQ(st.message().find("debian-11"), std::string::npos) << st.message();
}

TEST_F(VerifierQuoteTest, AGoldenSetNamingAnUnquotedPcrNeverMatches) {
  GoldenPcrSet set{"needs-pcr-9", values_};
  set.pcrs[9] = Digest(0x19);
  expect_.golden = {set};
  ExpectError(VerifyQuote(GoodQuote(), expect_).error(), StatusCode::kPermissionDenied,
              "PCR 9 is not quoted but golden set 'needs-pcr-9' wants");
}

TEST_F(VerifierQuoteTest, RefusesAGoldenSetThatNamesNoPcrs) {
  expect_.golden = {GoldenPcrSet{"empty", {}}};
  ExpectError(VerifyQuote(GoodQuote(), expect_).error(), StatusCode::kInvalidArgument,
              "golden set 'empty' names no PCRs");
}

TEST_F(VerifierQuoteTest, RejectsAQuoteCoveringFewerOrOtherPcrsThanRequired) {
  PcrSelection fewer = Select({0, 7});
  Quote quote = MakeQuote(ak_, expect_.nonce, fewer, {{0, values_[0]}, {7, values_[7]}});
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kFailedPrecondition,
              "quote covers PCRs 0,7 but the policy requires 0,2,4,7");

  PcrValues more_values = values_;
  more_values[8] = Digest(0x18);
  Quote more = MakeQuote(ak_, expect_.nonce, Select({0, 2, 4, 7, 8}), more_values);
  ExpectError(VerifyQuote(more, expect_).error(), StatusCode::kFailedPrecondition,
              "covers PCRs 0,2,4,7,8");

  TPMS_ATTEST empty = QuoteAttest(expect_.nonce, expect_.selection, values_);
  empty.attested.quote.pcrSelect.count = 0;
  Quote none{SignAttest(ak_, empty), values_};
  ExpectError(VerifyQuote(none, expect_).error(), StatusCode::kFailedPrecondition,
              "covers PCRs none");
}

TEST_F(VerifierQuoteTest, RejectsAQuoteOfAnotherBank) {
  TPMS_ATTEST sha1 = QuoteAttest(expect_.nonce, expect_.selection, values_);
  sha1.attested.quote.pcrSelect.pcrSelections[0].hash = TPM2_ALG_SHA1;
  ExpectError(VerifyQuote(Quote{SignAttest(ak_, sha1), values_}, expect_).error(),
              StatusCode::kFailedPrecondition, "bank 0x0004");

  TPMS_ATTEST both = QuoteAttest(expect_.nonce, expect_.selection, values_);
  both.attested.quote.pcrSelect.count = 2;
  both.attested.quote.pcrSelect.pcrSelections[1] = both.attested.quote.pcrSelect.pcrSelections[0];
  both.attested.quote.pcrSelect.pcrSelections[1].hash = TPM2_ALG_SHA384;
  ExpectError(VerifyQuote(Quote{SignAttest(ak_, both), values_}, expect_).error(),
              StatusCode::kFailedPrecondition, "bank 0x000c");
}

TEST_F(VerifierQuoteTest, RejectsAnAttestationWithoutTheTpmMagic) {
  // A restricted key never signs this; only a forger holding some other key could, and then the
  // signature fails. Here the AK "signs" it, to reach the magic check itself.
  TPMS_ATTEST attest = QuoteAttest(expect_.nonce, expect_.selection, values_);
  attest.magic = 0xff544346;
  ExpectError(VerifyQuote(Quote{SignAttest(ak_, attest), values_}, expect_).error(),
              StatusCode::kUnauthenticated, "quote is not TPM-generated");
}

TEST_F(VerifierQuoteTest, RejectsAnotherAttestationType) {
  TPMS_ATTEST certify = BaseAttest(TPM2_ST_ATTEST_CERTIFY, expect_.nonce);
  certify.attested.certify.name.size = 34;
  ExpectError(VerifyQuote(Quote{SignAttest(ak_, certify), values_}, expect_).error(),
              StatusCode::kInvalidArgument, "attestation type 0x8017 (certify), expected 0x8018");
}

TEST_F(VerifierQuoteTest, EveryBitFlipOfTheAttestationFailsTheSignature) {
  Quote quote = GoodQuote();
  for (size_t bit = 0; bit < quote.attestation.attest.size() * 8; ++bit) {
    Quote bad = quote;
    bad.attestation.attest[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Result<QuoteResult> r = VerifyQuote(bad, expect_);
    ASSERT_FALSE(r.ok()) << "bit " << bit;
    ASSERT_EQ(r.error().code(), StatusCode::kUnauthenticated) << "bit " << bit;
  }
}

TEST_F(VerifierQuoteTest, EveryBitFlipOfTheSignatureFails) {
  Quote quote = GoodQuote();
  for (size_t bit = 0; bit < quote.attestation.signature.size() * 8; ++bit) {
    Quote bad = quote;
    bad.attestation.signature[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Result<QuoteResult> r = VerifyQuote(bad, expect_);
    ASSERT_FALSE(r.ok()) << "bit " << bit;
    // Header bits (algorithm, hash, sizes) make it unparseable or not ECDSA/SHA-256; R and S
    // bits make it not verify.
    StatusCode code = r.error().code();
    ASSERT_TRUE(code == StatusCode::kUnauthenticated || code == StatusCode::kInvalidArgument)
        << "bit " << bit << ": " << r.error().ToString();
  }
}

TEST_F(VerifierQuoteTest, RejectsTrailingBytesEvenUnderAValidSignature) {
  Bytes attest = MarshalAttest(QuoteAttest(expect_.nonce, expect_.selection, values_));
  attest.push_back(0x00);
  ExpectError(VerifyQuote(Quote{Sign(ak_, attest), values_}, expect_).error(),
              StatusCode::kInvalidArgument, "followed by 1 unexpected bytes");
  Quote quote = GoodQuote();
  quote.attestation.signature.push_back(0x00);
  ExpectError(VerifyQuote(quote, expect_).error(), StatusCode::kInvalidArgument,
              "TPMT_SIGNATURE is followed by 1 unexpected bytes");
}

TEST_F(VerifierQuoteTest, EveryTruncationFailsEvenUnderAValidSignature) {
  Bytes attest = MarshalAttest(QuoteAttest(expect_.nonce, expect_.selection, values_));
  for (size_t len = 0; len < attest.size(); ++len) {
    Bytes truncated(attest.begin(), attest.begin() + static_cast<std::ptrdiff_t>(len));
    Result<QuoteResult> r = VerifyQuote(Quote{Sign(ak_, truncated), values_}, expect_);
    ASSERT_FALSE(r.ok()) << "length " << len;
  }
}

TEST_F(VerifierQuoteTest, RefusesAnAkThatIsNotRestrictedBeforeLookingAtTheSignature) {
  // An unrestricted signing key signs anything, including a forged TPMS_ATTEST with the magic.
  TPMT_PUBLIC templ = AkTemplate();
  templ.objectAttributes &= ~TPMA_OBJECT_RESTRICTED;
  SoftwareKey forger = MakeKey(templ);
  expect_.ak_public = forger.public_2b;
  Quote forged = MakeQuote(forger, expect_.nonce, expect_.selection, values_);
  ExpectError(VerifyQuote(forged, expect_).error(), StatusCode::kInvalidArgument,
              "AK attribute restricted is clear");
}

TEST_F(VerifierQuoteTest, RefusesAnEmptyPolicySelection) {
  expect_.selection = PcrSelection{};
  ExpectError(VerifyQuote(GoodQuote(), expect_).error(), StatusCode::kInvalidArgument,
              "selects no PCRs");
}

// ----- AK and signatures -----------------------------------------------------------------------

TEST(VerifierAkTest, AcceptsTheAkTemplate) {
  SoftwareKey ak = MakeAk();
  EXPECT_TRUE(CheckAkPublic(ak.public_2b).ok()) << CheckAkPublic(ak.public_2b).ToString();
}

TEST(VerifierAkTest, RejectsEveryDeviationFromTheTemplateNamingIt) {
  struct Case {
    const char* needle;
    void (*mutate)(TPMT_PUBLIC&);
  };
  const Case cases[] = {
      {"restricted is clear",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; }},
      {"fixedTPM is clear", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; }},
      {"fixedParent is clear",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; }},
      {"sensitiveDataOrigin is clear",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; }},
      {"sign is clear", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; }},
      {"decrypt is set", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; }},
      {"AK signing scheme is 0x0010",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL; }},
      {"AK signing hash is 0x0004",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA1; }},
      {"nameAlg is 0x0004", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; }},
      {"curve is 0x0004",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384; }},
      {"not a point on the curve", [](TPMT_PUBLIC& p) { p.unique.ecc.y.buffer[31] ^= 1; }},
  };
  for (const Case& c : cases) {
    SoftwareKey ak = MakeAk();
    c.mutate(ak.pub);
    ExpectError(CheckAkPublic(Marshal2B(ak.pub)), StatusCode::kInvalidArgument, c.needle);
  }
}

TEST(VerifierAkTest, RejectsAnRsaKeyAndGarbage) {
  TPMT_PUBLIC rsa = EkTemplate(EkType::kRsa);
  ExpectError(CheckAkPublic(Marshal2B(rsa)), StatusCode::kInvalidArgument, "AK type is 0x0001");
  ExpectError(CheckAkPublic(Bytes8("garbage")), StatusCode::kInvalidArgument, "AK");
  ExpectError(CheckAkPublic({}), StatusCode::kInvalidArgument, "AK");
  SoftwareKey ak = MakeAk();
  ak.public_2b.push_back(0);
  ExpectError(CheckAkPublic(ak.public_2b), StatusCode::kInvalidArgument, "unexpected bytes");
}

TEST(VerifierSignatureTest, VerifiesATpmSignatureAndRejectsTheWrongSignerOrBytes) {
  SoftwareKey ak = MakeAk();
  Attestation signed_bytes = Sign(ak, Bytes8("any bytes the TPM signed"));
  EXPECT_TRUE(VerifyTpmSignature(ak.public_2b, signed_bytes.attest, signed_bytes.signature).ok());
  SoftwareKey other = MakeAk();
  EXPECT_EQ(VerifyTpmSignature(other.public_2b, signed_bytes.attest, signed_bytes.signature).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyTpmSignature(ak.public_2b, Bytes8("other bytes"), signed_bytes.signature).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyTpmSignature(Marshal2B(EkTemplate(EkType::kRsa)), signed_bytes.attest,
                               signed_bytes.signature)
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyTpmSignature(ak.public_2b, signed_bytes.attest, {}).code(),
            StatusCode::kInvalidArgument);
}

// ----- certification of a key ------------------------------------------------------------------

class VerifierCertifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_ = MakeAk();
    binding_ = MakeKey(BindingKeyTemplate(Digest(0x42)));
  }

  Attestation CertifyOf(const TPMT_PUBLIC& object, ByteSpan nonce) {
    TPMS_ATTEST a = BaseAttest(TPM2_ST_ATTEST_CERTIFY, nonce);
    Result<Bytes> name = ObjectName(object);
    EXPECT_TRUE(name.ok());
    a.attested.certify.name.size = static_cast<uint16_t>(name->size());
    std::memcpy(a.attested.certify.name.name, name->data(), name->size());
    a.attested.certify.qualifiedName = a.attested.certify.name;
    return SignAttest(ak_, a);
  }

  SoftwareKey ak_;
  SoftwareKey binding_;
  Bytes nonce_ = Bytes8("certify-nonce-1");
};

TEST_F(VerifierCertifyTest, AcceptsTheCertificationOfThePresentedKey) {
  Status st =
      VerifyCertify(CertifyOf(binding_.pub, nonce_), ak_.public_2b, nonce_, binding_.public_2b);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(VerifierCertifyTest, RejectsTheCertificationOfAnotherObject) {
  SoftwareKey elsewhere = MakeKey(BindingKeyTemplate(Digest(0x42)));
  ExpectError(
      VerifyCertify(CertifyOf(elsewhere.pub, nonce_), ak_.public_2b, nonce_, binding_.public_2b),
      StatusCode::kUnauthenticated, "not for the presented key");
  // The same point with other attributes is another object (another Name).
  TPMT_PUBLIC with_auth = binding_.pub;
  with_auth.objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
  ExpectError(
      VerifyCertify(CertifyOf(with_auth, nonce_), ak_.public_2b, nonce_, binding_.public_2b),
      StatusCode::kUnauthenticated, "not for the presented key");
}

TEST_F(VerifierCertifyTest, RejectsAWrongNonceAnotherSignerAndAQuote) {
  ExpectError(VerifyCertify(CertifyOf(binding_.pub, Bytes8("old")), ak_.public_2b, nonce_,
                            binding_.public_2b),
              StatusCode::kUnauthenticated, "certification nonce does not match");
  SoftwareKey other = MakeAk();
  ExpectError(
      VerifyCertify(CertifyOf(binding_.pub, nonce_), other.public_2b, nonce_, binding_.public_2b),
      StatusCode::kUnauthenticated, "certification signature does not verify");
  TPMS_ATTEST quote = BaseAttest(TPM2_ST_ATTEST_QUOTE, nonce_);
  quote.attested.quote.pcrSelect.count = 0;
  ExpectError(VerifyCertify(SignAttest(ak_, quote), ak_.public_2b, nonce_, binding_.public_2b),
              StatusCode::kInvalidArgument, "expected 0x8017 (certify)");
}

TEST_F(VerifierCertifyTest, EveryBitFlipFails) {
  Attestation good = CertifyOf(binding_.pub, nonce_);
  for (size_t bit = 0; bit < good.attest.size() * 8; ++bit) {
    Attestation bad = good;
    bad.attest[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    ASSERT_EQ(VerifyCertify(bad, ak_.public_2b, nonce_, binding_.public_2b).code(),
              StatusCode::kUnauthenticated)
        << "bit " << bit;
  }
}

// ----- NV counter certification ----------------------------------------------------------------

class VerifierNvCertifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ak_ = MakeAk();
    Result<Bytes> name = NvName(NvCounterPublic(kIndex, /*written=*/true));
    ASSERT_TRUE(name.ok());
    expect_.ak_public = ak_.public_2b;
    expect_.nonce = Bytes8("nv-nonce-77");
    expect_.index_name = *name;
  }

  TPMS_ATTEST NvAttest(uint64_t value, ByteSpan index_name) {
    TPMS_ATTEST a = BaseAttest(TPM2_ST_ATTEST_NV, expect_.nonce);
    a.attested.nv.indexName.size = static_cast<uint16_t>(index_name.size());
    std::memcpy(a.attested.nv.indexName.name, index_name.data(), index_name.size());
    a.attested.nv.offset = 0;
    a.attested.nv.nvContents.size = 8;
    StoreBigEndian64(a.attested.nv.nvContents.buffer, value);
    return a;
  }

  Attestation Certified(uint64_t value) {
    return SignAttest(ak_, NvAttest(value, expect_.index_name));
  }

  static constexpr TPM2_HANDLE kIndex = 0x01000C57;
  SoftwareKey ak_;
  NvCertifyExpectation expect_;
};

TEST_F(VerifierNvCertifyTest, ReturnsTheBigEndianCounterValue) {
  Result<uint64_t> v = VerifyNvCertify(Certified(0x0000000100000005ull), expect_);
  ASSERT_TRUE(v.ok()) << v.error().ToString();
  EXPECT_EQ(*v, 0x0000000100000005ull);
}

TEST_F(VerifierNvCertifyTest, AcceptsAnEqualOrHigherValueThanLastSeen) {
  expect_.last_seen = 41;
  EXPECT_EQ(*VerifyNvCertify(Certified(41), expect_), 41u);
  EXPECT_EQ(*VerifyNvCertify(Certified(42), expect_), 42u);
}

TEST_F(VerifierNvCertifyTest, RejectsACounterLowerThanLastSeen) {
  expect_.last_seen = 1000;
  ExpectError(VerifyNvCertify(Certified(999), expect_).error(), StatusCode::kFailedPrecondition,
              "NV counter is 999 but the custodian last saw 1000");
}

TEST_F(VerifierNvCertifyTest, RejectsAnotherIndexName) {
  Result<Bytes> other = NvName(NvCounterPublic(kIndex + 1, /*written=*/true));
  ASSERT_TRUE(other.ok());
  ExpectError(VerifyNvCertify(SignAttest(ak_, NvAttest(5, *other)), expect_).error(),
              StatusCode::kUnauthenticated, "not Custody's counter");
  // The same index before its first increment has another Name (TPMA_NV_WRITTEN).
  Result<Bytes> unwritten = NvName(NvCounterPublic(kIndex, /*written=*/false));
  ASSERT_TRUE(unwritten.ok());
  ExpectError(VerifyNvCertify(SignAttest(ak_, NvAttest(5, *unwritten)), expect_).error(),
              StatusCode::kUnauthenticated, "index Name");
}

TEST_F(VerifierNvCertifyTest, RejectsAPartialOrOffsetRead) {
  TPMS_ATTEST offset = NvAttest(5, expect_.index_name);
  offset.attested.nv.offset = 4;
  ExpectError(VerifyNvCertify(SignAttest(ak_, offset), expect_).error(),
              StatusCode::kInvalidArgument, "at offset 4");
  TPMS_ATTEST partial = NvAttest(5, expect_.index_name);
  partial.attested.nv.nvContents.size = 4;
  ExpectError(VerifyNvCertify(SignAttest(ak_, partial), expect_).error(),
              StatusCode::kInvalidArgument, "covers 4 bytes");
}

TEST_F(VerifierNvCertifyTest, RejectsAWrongNonceAnotherSignerAndBadMagic) {
  Attestation good = Certified(5);
  NvCertifyExpectation stale = expect_;
  stale.nonce = Bytes8("nv-nonce-78");
  ExpectError(VerifyNvCertify(good, stale).error(), StatusCode::kUnauthenticated,
              "NV certification nonce does not match");
  SoftwareKey other = MakeAk();
  ExpectError(VerifyNvCertify(SignAttest(other, NvAttest(5, expect_.index_name)), expect_).error(),
              StatusCode::kUnauthenticated, "signature does not verify");
  TPMS_ATTEST forged = NvAttest(5, expect_.index_name);
  forged.magic = 0;
  ExpectError(VerifyNvCertify(SignAttest(ak_, forged), expect_).error(),
              StatusCode::kUnauthenticated, "not TPM-generated");
  NvCertifyExpectation no_name = expect_;
  no_name.index_name.clear();
  EXPECT_EQ(VerifyNvCertify(good, no_name).error().code(), StatusCode::kInvalidArgument);
}

// ----- binding key and key release -------------------------------------------------------------

class VerifierBindingKeyTest : public ::testing::Test {
 protected:
  void SetUp() override { binding_ = MakeKey(BindingKeyTemplate(policy_)); }
  Sha256Digest policy_ = Digest(0x5c);
  SoftwareKey binding_;
};

TEST_F(VerifierBindingKeyTest, AcceptsTheTemplateWithThePolicy) {
  Status st = CheckBindingKeyPublic(binding_.public_2b, policy_);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(VerifierBindingKeyTest, RejectsEveryDeviationNamingIt) {
  struct Case {
    const char* needle;
    void (*mutate)(TPMT_PUBLIC&);
  };
  const Case cases[] = {
      {"userWithAuth is set",
       [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_USERWITHAUTH; }},
      {"fixedTPM is clear", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; }},
      {"fixedParent is clear",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; }},
      {"sensitiveDataOrigin is clear",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; }},
      {"decrypt is clear", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_DECRYPT; }},
      {"restricted is set", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_RESTRICTED; }},
      {"sign is set", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT; }},
      {"authPolicy is 5c5c", [](TPMT_PUBLIC& p) { p.authPolicy.buffer[31] ^= 1; }},
      {"authPolicy is empty", [](TPMT_PUBLIC& p) { p.authPolicy.size = 0; }},
      {"nameAlg is 0x0004", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; }},
      {"curve is 0x0004",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384; }},
  };
  for (const Case& c : cases) {
    TPMT_PUBLIC pub = binding_.pub;
    c.mutate(pub);
    Bytes bytes = Marshal2B(pub);
    ExpectError(CheckBindingKeyPublic(bytes, policy_), StatusCode::kFailedPrecondition, c.needle);
    EXPECT_FALSE(WrapToBindingKey(bytes, policy_, Bytes(32, 1), Bytes8("ctx")).ok()) << c.needle;
  }
  ExpectError(CheckBindingKeyPublic(binding_.public_2b, Digest(0x5d)),
              StatusCode::kFailedPrecondition, "authPolicy");
  ExpectError(CheckBindingKeyPublic(Marshal2B(EkTemplate(EkType::kRsa)), policy_),
              StatusCode::kFailedPrecondition, "binding key type is 0x0001");
  EXPECT_EQ(CheckBindingKeyPublic(Bytes8("junk"), policy_).code(), StatusCode::kInvalidArgument);
}

TEST_F(VerifierBindingKeyTest, WrapsADekOnlyTheBindingKeyCanUnwrap) {
  const Bytes dek(32, 0xd7);
  Result<Bytes> envelope =
      WrapToBindingKey(binding_.public_2b, policy_, dek, Bytes8("lease-dek:7"));
  ASSERT_TRUE(envelope.ok()) << envelope.error().ToString();
  Result<SecretBuffer> back = crypto::EciesUnwrap(binding_.key, *envelope, Bytes8("lease-dek:7"));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(Bytes(back->span().begin(), back->span().end()), dek);
  EXPECT_EQ(crypto::EciesUnwrap(binding_.key, *envelope, Bytes8("lease-dek:8")).error().code(),
            StatusCode::kUnauthenticated);
  SoftwareKey other = MakeKey(BindingKeyTemplate(policy_));
  EXPECT_EQ(crypto::EciesUnwrap(other.key, *envelope, Bytes8("lease-dek:7")).error().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(WrapToBindingKey(binding_.public_2b, policy_, {}, Bytes8("x")).error().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace custody::tpm
