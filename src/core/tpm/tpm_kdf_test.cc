#include "core/tpm/tpm_kdf.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <tss2/tss2_mu.h>

#include <string>

#include "core/base/test_util.h"

namespace custody::tpm {
namespace {

using custody::testing::Hex;
using custody::testing::ToBytes;

// label ‖ 0x00 ‖ u ‖ v: the part of every KDFa and KDFe block after the counter (and Z).
Bytes FixedInfo(std::string_view label, ByteSpan u, ByteSpan v) {
  Bytes out(label.begin(), label.end());
  out.push_back(0x00);
  AppendBytes(out, u);
  AppendBytes(out, v);
  return out;
}

// KDFa spelled out from Part 1 §11.4.10.2 with a one-shot HMAC, independently of OpenSSL's KBKDF:
// HMAC(key, [i] ‖ label ‖ 0 ‖ u ‖ v ‖ [bits]) for i = 1, 2, ...
Bytes ReferenceKdfa(ByteSpan key, std::string_view label, ByteSpan u, ByteSpan v, uint32_t bits) {
  Bytes out;
  for (uint32_t i = 1; out.size() < bits / 8; ++i) {
    Bytes block;
    AppendBigEndian32(block, i);
    AppendBytes(block, FixedInfo(label, u, v));
    AppendBigEndian32(block, bits);
    uint8_t mac[32];
    size_t mac_len = 0;
    EXPECT_NE(EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                        block.data(), block.size(), mac, sizeof(mac), &mac_len),
              nullptr);
    out.insert(out.end(), mac, mac + mac_len);
  }
  out.resize(bits / 8);
  return out;
}

// KDFe spelled out from Part 1 §11.4.10.3 with plain SHA-256, independently of OpenSSL's SSKDF:
// SHA-256([i] ‖ z ‖ label ‖ 0 ‖ u ‖ v) for i = 1, 2, ...
Bytes ReferenceKdfe(ByteSpan z, std::string_view label, ByteSpan u, ByteSpan v, uint32_t bits) {
  Bytes out;
  for (uint32_t i = 1; out.size() < bits / 8; ++i) {
    Bytes block;
    AppendBigEndian32(block, i);
    AppendBytes(block, z);
    AppendBytes(block, FixedInfo(label, u, v));
    crypto::Sha256Digest d = crypto::Sha256(block);
    out.insert(out.end(), d.begin(), d.end());
  }
  out.resize(bits / 8);
  return out;
}

// The KDFa self-test vector of the TPM 2.0 reference implementation (KdfTestData.h, SHA-256):
// label "KDFSELFTESTLABEL" with its NUL, 160 bits.
TEST(TpmKdfTest, KdfaMatchesTpmReferenceSelfTestVector) {
  Bytes key = Hex("271fa08bbdc5060ec3dfa928ff9b73123a12da0c");
  Bytes u = Hex("ce244f395dca7391");
  Bytes v = Hex("da504031ddf12e83");
  Result<SecretBuffer> out = KdfA(key, "KDFSELFTESTLABEL", u, v, 160);
  ASSERT_TRUE(out.ok()) << out.error().ToString();
  EXPECT_EQ(HexEncode(out->span()), "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4");
  EXPECT_EQ(ToBytes(out->span()), ReferenceKdfa(key, "KDFSELFTESTLABEL", u, v, 160));
}

TEST(TpmKdfTest, KdfaMatchesSpelledOutConstructionForCredentialUses) {
  Bytes seed = Hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  Bytes name =
      Hex("000b"
          "aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55");
  for (uint32_t bits : {128u, 256u, 264u, 1024u}) {
    Result<SecretBuffer> storage = KdfA(seed, "STORAGE", name, {}, bits);
    ASSERT_TRUE(storage.ok()) << storage.error().ToString();
    EXPECT_EQ(ToBytes(storage->span()), ReferenceKdfa(seed, "STORAGE", name, {}, bits)) << bits;
    Result<SecretBuffer> integrity = KdfA(seed, "INTEGRITY", {}, {}, bits);
    ASSERT_TRUE(integrity.ok()) << integrity.error().ToString();
    EXPECT_EQ(ToBytes(integrity->span()), ReferenceKdfa(seed, "INTEGRITY", {}, {}, bits)) << bits;
  }
}

TEST(TpmKdfTest, KdfaSeparatesContextUAndVOnlyByConcatenation) {
  // Context = contextU ‖ contextV: moving a byte across the boundary does not change the output
  // (that is the TPM's definition), while any change of the bytes does.
  Bytes key(32, 7);
  Result<SecretBuffer> a = KdfA(key, "L", Hex("0102"), Hex("03"), 256);
  Result<SecretBuffer> b = KdfA(key, "L", Hex("01"), Hex("0203"), 256);
  Result<SecretBuffer> c = KdfA(key, "L", Hex("0102"), Hex("04"), 256);
  Result<SecretBuffer> d = KdfA(key, "M", Hex("0102"), Hex("03"), 256);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(ToBytes(a->span()), ToBytes(b->span()));
  EXPECT_NE(ToBytes(a->span()), ToBytes(c->span()));
  EXPECT_NE(ToBytes(a->span()), ToBytes(d->span()));
}

// Vectors from the public TPM test-vector suite (kdfe.json, SHA-256 cases whose length is a
// whole number of bytes), generated with go-tpm and checked against a TPM simulator.
TEST(TpmKdfTest, KdfeMatchesPublishedVectors) {
  struct Vector {
    const char* z;
    const char* use;
    const char* u;
    const char* v;
    size_t bits;
    const char* result;
  };
  const Vector vectors[] = {
      {"8995a6318a0217c7c7bf543f50da29016c4ff2a1ea5daf54ebcb00", "INTEGRITY", "8852f14d8e9b68",
       "74ff", 336,
       "92343ef558feb95fd14838f9ca39c8618598a7eeb31af7fc276030b8c3ff326d4870f190e54abbec9da4"},
      {"00", "OBFUSCATE", "ebcb3cd4a002941ed496ef1d32a70b0b7f6f05b8a51803d5a9ff9b",
       "a1f79a7ee2beee21e2bfaee67769874687bfe21b2468fc8e721b6e967e12ff", 496,
       "dcd14d72e0d5d8ec15b5ea15ae060e02f0e042f3af7efbd73650bb4457d73b060ef8f78bdf8cea099fe98fad"
       "6359bcfe92c1c6be8a157c1064c85ada3ad2"},
  };
  for (const Vector& t : vectors) {
    Result<SecretBuffer> out = KdfE(Hex(t.z), t.use, Hex(t.u), Hex(t.v), t.bits);
    ASSERT_TRUE(out.ok()) << out.error().ToString();
    EXPECT_EQ(HexEncode(out->span()), t.result) << t.use;
    EXPECT_EQ(ToBytes(out->span()),
              ReferenceKdfe(Hex(t.z), t.use, Hex(t.u), Hex(t.v), static_cast<uint32_t>(t.bits)));
  }
}

TEST(TpmKdfTest, KdfeMatchesSpelledOutConstructionForIdentitySeed) {
  Bytes z = Hex("d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de");
  Bytes xe = Hex("dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180");
  Bytes xk = Hex("d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63");
  Result<SecretBuffer> seed = KdfE(z, "IDENTITY", xe, xk, 256);
  ASSERT_TRUE(seed.ok()) << seed.error().ToString();
  EXPECT_EQ(ToBytes(seed->span()), ReferenceKdfe(z, "IDENTITY", xe, xk, 256));
  // U and V are ordered: swapping them gives another seed.
  Result<SecretBuffer> swapped = KdfE(z, "IDENTITY", xk, xe, 256);
  ASSERT_TRUE(swapped.ok());
  EXPECT_NE(ToBytes(seed->span()), ToBytes(swapped->span()));
}

TEST(TpmKdfTest, KdfsRejectBadLengthsAndEmptyInputs) {
  Bytes key(32, 1);
  for (size_t bits : {size_t{0}, size_t{7}, size_t{129}, size_t{65544}}) {
    EXPECT_EQ(KdfA(key, "L", {}, {}, bits).error().code(), StatusCode::kInvalidArgument) << bits;
    EXPECT_EQ(KdfE(key, "L", {}, {}, bits).error().code(), StatusCode::kInvalidArgument) << bits;
  }
  EXPECT_EQ(KdfA({}, "L", {}, {}, 128).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(KdfA(key, "", {}, {}, 128).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(KdfE({}, "L", {}, {}, 128).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(KdfE(key, "", {}, {}, 128).error().code(), StatusCode::kInvalidArgument);
}

// NIST SP 800-38A F.3.13, CFB128-AES128.Encrypt.
TEST(TpmKdfTest, Aes128CfbMatchesSp80038aVector) {
  Bytes key = Hex("2b7e151628aed2a6abf7158809cf4f3c");
  Bytes iv = Hex("000102030405060708090a0b0c0d0e0f");
  Bytes pt = Hex(
      "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a"
      "52eff69f2445df4f9b17ad2b417be66c3710");
  Result<Bytes> ct = Aes128CfbEncrypt(key, iv, pt);
  ASSERT_TRUE(ct.ok()) << ct.error().ToString();
  EXPECT_EQ(
      HexEncode(*ct),
      "3b3fd92eb72dad20333449f8e83cfb4ac8a64537a0b3a93fcde3cdad9f1ce58b26751f67a3cbb140b1808cf1"
      "87a4f4dfc04b05357c5d1c0eeac4c66f9ff7f2e6");
  // A partial block (the credential's TPM2B_DIGEST is 34 bytes) is the prefix of the full one.
  Result<Bytes> partial = Aes128CfbEncrypt(key, iv, ByteSpan(pt).first(34));
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(*partial, Bytes(ct->begin(), ct->begin() + 34));
  Result<Bytes> empty = Aes128CfbEncrypt(key, iv, {});
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(Aes128CfbEncrypt(ByteSpan(key).first(15), iv, pt).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Aes128CfbEncrypt(key, ByteSpan(iv).first(8), pt).error().code(),
            StatusCode::kInvalidArgument);
}

// RFC 4231 test cases 1 and 2.
TEST(TpmKdfTest, HmacSha256MatchesRfc4231Vectors) {
  Result<crypto::Sha256Digest> one = HmacSha256(Bytes(20, 0x0b), AsBytes("Hi There"));
  ASSERT_TRUE(one.ok()) << one.error().ToString();
  EXPECT_EQ(HexEncode(*one), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  Result<crypto::Sha256Digest> two =
      HmacSha256(AsBytes("Jefe"), AsBytes("what do ya want for nothing?"));
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(HexEncode(*two), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_TRUE(HmacSha256({}, {}).ok());
}

class TpmRsaOaepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
    ASSERT_TRUE(key_);
    BIGNUM* n = nullptr;
    ASSERT_EQ(EVP_PKEY_get_bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_N, &n), 1);
    crypto::BignumPtr owner(n);
    modulus_.resize(256);
    ASSERT_EQ(BN_bn2binpad(n, modulus_.data(), 256), 256);
  }

  crypto::EvpPkeyPtr key_;
  Bytes modulus_;
};

// Decryption with the label, as the TPM does it, is checked by the RSA credential tests
// (credential_test.cc), which open what this produces.
TEST_F(TpmRsaOaepTest, EncryptsToTheTpmModulusWithFreshPadding) {
  Result<crypto::EvpPkeyPtr> pub = RsaPublicKeyFromTpm(modulus_, 0);
  ASSERT_TRUE(pub.ok()) << pub.error().ToString();
  EXPECT_EQ(EVP_PKEY_eq(pub->get(), key_.get()), 1);
  const Bytes label = {'I', 'D', 'E', 'N', 'T', 'I', 'T', 'Y', 0};
  Bytes seed(32, 0x5a);
  Result<Bytes> a = RsaOaepSha256Encrypt(pub->get(), label, seed);
  Result<Bytes> b = RsaOaepSha256Encrypt(pub->get(), label, seed);
  ASSERT_TRUE(a.ok() && b.ok()) << a.error().ToString();
  EXPECT_EQ(a->size(), 256u);
  EXPECT_NE(*a, *b);
  // OAEP with SHA-256 carries at most 256 - 2 * 32 - 2 bytes.
  EXPECT_TRUE(RsaOaepSha256Encrypt(pub->get(), label, Bytes(190, 1)).ok());
  EXPECT_FALSE(RsaOaepSha256Encrypt(pub->get(), label, Bytes(191, 1)).ok());
  EXPECT_EQ(RsaOaepSha256Encrypt(nullptr, label, seed).error().code(),
            StatusCode::kInvalidArgument);
  crypto::OpenSslErrors();  // drain what the oversized input queued
}

TEST_F(TpmRsaOaepTest, RsaPublicKeyFromTpmHonoursExplicitExponentAndRejectsJunk) {
  EXPECT_TRUE(RsaPublicKeyFromTpm(modulus_, 65537).ok());
  Result<crypto::EvpPkeyPtr> other_e = RsaPublicKeyFromTpm(modulus_, 3);
  ASSERT_TRUE(other_e.ok());
  EXPECT_NE(EVP_PKEY_eq(other_e->get(), key_.get()), 1);
  EXPECT_EQ(RsaPublicKeyFromTpm(ByteSpan(modulus_).first(64), 0).error().code(),
            StatusCode::kInvalidArgument);
  Bytes leading_zero = modulus_;
  leading_zero[0] = 0;
  EXPECT_EQ(RsaPublicKeyFromTpm(leading_zero, 0).error().code(), StatusCode::kInvalidArgument);
  Bytes even = modulus_;
  even.back() &= 0xfe;
  EXPECT_EQ(RsaPublicKeyFromTpm(even, 0).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RsaPublicKeyFromTpm(modulus_, 2).error().code(), StatusCode::kInvalidArgument);
}

TEST(TpmEcdsaSignatureTest, MarshalsAndParsesTheTpmtSignature) {
  crypto::P256Signature r_s{};
  for (size_t i = 0; i < r_s.size(); ++i) r_s[i] = static_cast<uint8_t>(i + 1);
  Result<Bytes> sig = MarshalEcdsaSignature(r_s);
  ASSERT_TRUE(sig.ok()) << sig.error().ToString();
  // sigAlg 0x0018 ‖ hash 0x000b ‖ 0x0020 ‖ R ‖ 0x0020 ‖ S.
  ASSERT_EQ(sig->size(), 2u + 2 + 2 + 32 + 2 + 32);
  EXPECT_EQ(HexEncode(ByteSpan(*sig).first(6)), "0018000b0020");
  EXPECT_EQ(HexEncode(ByteSpan(*sig).subspan(38, 2)), "0020");
  Result<crypto::P256Signature> back = ParseEcdsaSignature(*sig);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(*back, r_s);
}

TEST(TpmEcdsaSignatureTest, ParseLeftPadsShortRAndS) {
  TPMT_SIGNATURE sig{};
  sig.sigAlg = TPM2_ALG_ECDSA;
  sig.signature.ecdsa.hash = TPM2_ALG_SHA256;
  sig.signature.ecdsa.signatureR.size = 31;
  sig.signature.ecdsa.signatureR.buffer[0] = 0xaa;
  sig.signature.ecdsa.signatureS.size = 1;
  sig.signature.ecdsa.signatureS.buffer[0] = 0xbb;
  Bytes bytes(sizeof(TPMT_SIGNATURE));
  size_t offset = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&sig, bytes.data(), bytes.size(), &offset), 0u);
  bytes.resize(offset);
  Result<crypto::P256Signature> parsed = ParseEcdsaSignature(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ((*parsed)[0], 0);
  EXPECT_EQ((*parsed)[1], 0xaa);
  EXPECT_EQ((*parsed)[63], 0xbb);
  EXPECT_EQ((*parsed)[62], 0);
}

TEST(TpmEcdsaSignatureTest, ParseRejectsOtherSchemesHashesSizesAndTrailingBytes) {
  crypto::P256Signature r_s{};
  r_s.fill(1);
  Bytes good = *MarshalEcdsaSignature(r_s);
  auto expect_invalid = [](const Bytes& bytes, std::string_view needle) {
    Result<crypto::P256Signature> r = ParseEcdsaSignature(bytes);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find(needle), std::string::npos) << r.error().message();
  };
  Bytes trailing = good;
  trailing.push_back(0);
  expect_invalid(trailing, "unexpected bytes");
  expect_invalid(Bytes(good.begin(), good.end() - 1), "not a TPMT_SIGNATURE");
  expect_invalid({}, "not a TPMT_SIGNATURE");
  Bytes sha1 = good;
  sha1[3] = 0x04;
  expect_invalid(sha1, "SHA-256");

  TPMT_SIGNATURE rsa{};
  rsa.sigAlg = TPM2_ALG_RSASSA;
  rsa.signature.rsassa.hash = TPM2_ALG_SHA256;
  rsa.signature.rsassa.sig.size = 4;
  Bytes bytes(sizeof(TPMT_SIGNATURE));
  size_t offset = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&rsa, bytes.data(), bytes.size(), &offset), 0u);
  bytes.resize(offset);
  expect_invalid(bytes, "ECDSA");

  TPMT_SIGNATURE wide{};
  wide.sigAlg = TPM2_ALG_ECDSA;
  wide.signature.ecdsa.hash = TPM2_ALG_SHA256;
  wide.signature.ecdsa.signatureR.size = 48;
  wide.signature.ecdsa.signatureS.size = 32;
  bytes.assign(sizeof(TPMT_SIGNATURE), 0);
  offset = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&wide, bytes.data(), bytes.size(), &offset), 0u);
  bytes.resize(offset);
  expect_invalid(bytes, "expected 1..32");
  wide.signature.ecdsa.signatureR.size = 0;
  bytes.assign(sizeof(TPMT_SIGNATURE), 0);
  offset = 0;
  ASSERT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&wide, bytes.data(), bytes.size(), &offset), 0u);
  bytes.resize(offset);
  expect_invalid(bytes, "expected 1..32");
}

}  // namespace
}  // namespace custody::tpm
