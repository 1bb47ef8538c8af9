#include "core/crypto/crypto.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/base/test_util.h"

namespace custody::crypto {
namespace {

using custody::testing::Hex;
using custody::testing::ToBytes;

bool AllZero(ByteSpan bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

std::string Str(ByteSpan span) { return std::string(AsChars(span)); }

// A P-256 private key with a fixed scalar and public point, imported through PKCS#8 PEM the way
// a key file would be (the API has no raw-scalar import, on purpose).
P256PrivateKey P256FromScalar(std::string_view scalar_hex, std::string_view point_hex) {
  Bytes scalar = Hex(scalar_hex);
  Bytes point = Hex(point_hex);
  BignumPtr d(BN_bin2bn(scalar.data(), static_cast<int>(scalar.size()), nullptr));
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  EXPECT_TRUE(d && bld);
  EXPECT_EQ(OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0),
            1);
  EXPECT_EQ(OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get()), 1);
  EXPECT_EQ(OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                             point.size()),
            1);
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  EXPECT_EQ(EVP_PKEY_fromdata_init(ctx.get()), 1);
  EXPECT_EQ(EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()), 1);
  EvpPkeyPtr key(raw);
  BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(
      PEM_write_bio_PKCS8PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr),
      1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  Result<P256PrivateKey> out = P256PrivateKey::FromPem(std::string(data, static_cast<size_t>(len)));
  EXPECT_TRUE(out.ok()) << out.error().ToString();
  return std::move(out).value();
}

std::string PublicPemOf(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_PUBKEY(bio.get(), key), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

std::string PrivatePemOf(EVP_PKEY* key, const EVP_CIPHER* cipher = nullptr,
                         const char* password = nullptr) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_PKCS8PrivateKey(bio.get(), key, cipher, password,
                                          password == nullptr ? 0 : std::strlen(password), nullptr,
                                          nullptr),
            1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// ----- randomness -------------------------------------------------------------------------

TEST(CryptoRandomTest, RandomBytesAreNonZeroAndDistinct) {
  Result<Bytes> a = RandomBytes(32);
  Result<Bytes> b = RandomBytes(32);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 32u);
  EXPECT_FALSE(AllZero(*a));
  EXPECT_NE(*a, *b);
}

TEST(CryptoRandomTest, RandomBytesFillsASpan) {
  std::array<uint8_t, 64> buf{};
  ASSERT_TRUE(RandomBytes(MutableByteSpan(buf)).ok());
  EXPECT_FALSE(AllZero(buf));
  EXPECT_TRUE(RandomBytes(MutableByteSpan()).ok());
}

TEST(CryptoRandomTest, RandomSecretHasRequestedSizeAndIsNotZero) {
  Result<SecretBuffer> s = RandomSecret(48);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->size(), 48u);
  EXPECT_FALSE(AllZero(s->span()));
  Result<SecretBuffer> empty = RandomSecret(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

// ----- SHA-256 ------------------------------------------------------------------------------

TEST(CryptoSha256Test, MatchesFips180Vectors) {
  EXPECT_EQ(HexEncode(Sha256(AsBytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexEncode(Sha256(ByteSpan())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(CryptoSha256Test, HasherMatchesOneShotAcrossSplits) {
  Bytes data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  Sha256Digest expected = Sha256(data);
  for (size_t split : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{999}, size_t{1000}}) {
    Result<Sha256Hasher> h = Sha256Hasher::Create();
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE(h->Update(ByteSpan(data).first(split)).ok());
    ASSERT_TRUE(h->Update(ByteSpan(data).subspan(split)).ok());
    Result<Sha256Digest> d = h->Finish();
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, expected) << "split at " << split;
  }
}

TEST(CryptoSha256Test, HasherRefusesUseAfterFinish) {
  Result<Sha256Hasher> h = Sha256Hasher::Create();
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(h->Finish().ok());
  EXPECT_EQ(h->Update(AsBytes("x")).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(h->Finish().error().code(), StatusCode::kFailedPrecondition);
}

// ----- HKDF ---------------------------------------------------------------------------------

TEST(HkdfTest, MatchesRfc5869TestCase1) {
  Bytes ikm = Hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  Bytes salt = Hex("000102030405060708090a0b0c");
  Bytes info = Hex("f0f1f2f3f4f5f6f7f8f9");
  Result<SecretBuffer> okm = HkdfSha256(ikm, salt, info, 42);
  ASSERT_TRUE(okm.ok()) << okm.error().ToString();
  EXPECT_EQ(HexEncode(okm->span()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(HkdfTest, MatchesRfc5869TestCase3WithEmptySaltAndInfo) {
  Bytes ikm = Hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  Result<SecretBuffer> okm = HkdfSha256(ikm, ByteSpan(), ByteSpan(), 42);
  ASSERT_TRUE(okm.ok()) << okm.error().ToString();
  EXPECT_EQ(HexEncode(okm->span()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(HkdfTest, SpanAndBufferFormsAgree) {
  Bytes ikm = Hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  std::array<uint8_t, 44> out{};
  ASSERT_TRUE(HkdfSha256(ikm, AsBytes("salt"), AsBytes("info"), MutableByteSpan(out)).ok());
  Result<SecretBuffer> okm = HkdfSha256(ikm, AsBytes("salt"), AsBytes("info"), out.size());
  ASSERT_TRUE(okm.ok());
  EXPECT_EQ(ToBytes(out), ToBytes(okm->span()));
}

TEST(HkdfTest, RejectsZeroAndOversizedLength) {
  Bytes ikm(32, 1);
  EXPECT_EQ(HkdfSha256(ikm, ByteSpan(), ByteSpan(), 0).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(HkdfSha256(ikm, ByteSpan(), ByteSpan(), 255 * 32 + 1).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(HkdfSha256(ikm, ByteSpan(), ByteSpan(), 255 * 32).ok());
  EXPECT_EQ(HkdfSha256(ikm, ByteSpan(), ByteSpan(), MutableByteSpan()).code(),
            StatusCode::kInvalidArgument);
}

// ----- AES-256-GCM --------------------------------------------------------------------------

// McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16 (AES-256, 60-byte
// plaintext, 20 bytes of AAD); also NIST SP 800-38D's AES-256 example.
struct GcmVector {
  Bytes key = Hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  Bytes nonce = Hex("cafebabefacedbaddecaf888");
  Bytes aad = Hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  Bytes plaintext =
      Hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
          "49a6b525b16aedf5aa0de657ba637b39");
  Bytes ciphertext =
      Hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
          "56828838c5f61e6393ba7a0abcc9f662");
  Bytes tag = Hex("76fc6ece0f4e1768cddf8853bb2d551b");
};

TEST(AesGcmTest, SealMatchesGcmSpecTestCase16) {
  GcmVector v;
  Result<AesGcm> gcm = AesGcm::Create(v.key);
  ASSERT_TRUE(gcm.ok()) << gcm.error().ToString();
  Bytes ct(v.plaintext.size());
  std::array<uint8_t, kGcmTagBytes> tag{};
  ASSERT_TRUE(gcm->Seal(v.nonce, v.aad, v.plaintext, ct, tag).ok());
  EXPECT_EQ(HexEncode(ct), HexEncode(v.ciphertext));
  EXPECT_EQ(HexEncode(tag), HexEncode(v.tag));
}

TEST(AesGcmTest, OpenMatchesGcmSpecTestCase16) {
  GcmVector v;
  Result<AesGcm> gcm = AesGcm::Create(v.key);
  ASSERT_TRUE(gcm.ok());
  Bytes pt(v.ciphertext.size());
  Status s = gcm->Open(v.nonce, v.aad, v.ciphertext, v.tag, pt);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(pt, v.plaintext);
}

TEST(AesGcmTest, OneShotHelpersMatchGcmSpecTestCase16) {
  GcmVector v;
  Result<Bytes> sealed = AesGcmSeal(v.key, v.nonce, v.aad, v.plaintext);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(HexEncode(*sealed), HexEncode(v.ciphertext) + HexEncode(v.tag));
  Result<SecretBuffer> opened = AesGcmOpen(v.key, v.nonce, v.aad, *sealed);
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  EXPECT_EQ(ToBytes(opened->span()), v.plaintext);
}

// GCM spec test cases 13 (empty plaintext) and 14 (one zero block), all-zero key and nonce.
TEST(AesGcmTest, MatchesGcmSpecTestCases13And14) {
  Bytes key(32, 0);
  Bytes nonce(12, 0);
  Result<Bytes> empty = AesGcmSeal(key, nonce, ByteSpan(), ByteSpan());
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(HexEncode(*empty), "530f8afbc74536b9a963b4f1c4cb738b");
  Result<Bytes> block = AesGcmSeal(key, nonce, ByteSpan(), Bytes(16, 0));
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(HexEncode(*block), "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919");
}

TEST(AesGcmTest, RoundTripsEmptyPlaintext) {
  Bytes key(32, 7);
  Bytes nonce(12, 9);
  Result<AesGcm> gcm = AesGcm::Create(key);
  ASSERT_TRUE(gcm.ok());
  std::array<uint8_t, kGcmTagBytes> tag{};
  ASSERT_TRUE(gcm->Seal(nonce, AsBytes("aad"), ByteSpan(), MutableByteSpan(), tag).ok());
  EXPECT_TRUE(gcm->Open(nonce, AsBytes("aad"), ByteSpan(), tag, MutableByteSpan()).ok());
  EXPECT_EQ(gcm->Open(nonce, AsBytes("aaD"), ByteSpan(), tag, MutableByteSpan()).code(),
            StatusCode::kUnauthenticated);
  Result<SecretBuffer> opened =
      AesGcmOpen(key, nonce, AsBytes("aad"), Bytes(tag.begin(), tag.end()));
  ASSERT_TRUE(opened.ok());
  EXPECT_TRUE(opened->empty());
}

TEST(AesGcmTest, SealsAndOpensInPlace) {
  GcmVector v;
  Result<AesGcm> gcm = AesGcm::Create(v.key);
  ASSERT_TRUE(gcm.ok());
  Bytes buf = v.plaintext;
  std::array<uint8_t, kGcmTagBytes> tag{};
  ASSERT_TRUE(gcm->Seal(v.nonce, v.aad, buf, buf, tag).ok());
  EXPECT_EQ(buf, v.ciphertext);
  EXPECT_EQ(ToBytes(tag), v.tag);
  ASSERT_TRUE(gcm->Open(v.nonce, v.aad, buf, tag, buf).ok());
  EXPECT_EQ(buf, v.plaintext);
}

TEST(AesGcmTest, OneContextSealsManyMessagesLikeFreshContexts) {
  Bytes key(32, 0x42);
  Result<AesGcm> gcm = AesGcm::Create(key);
  ASSERT_TRUE(gcm.ok());
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{4097}}) {
    Bytes nonce(12, static_cast<uint8_t>(n));
    Bytes pt(n, static_cast<uint8_t>(n + 1));
    Bytes aad(n % 5, 3);
    Bytes ct(n);
    std::array<uint8_t, kGcmTagBytes> tag{};
    ASSERT_TRUE(gcm->Seal(nonce, aad, pt, ct, tag).ok());
    Result<Bytes> fresh = AesGcmSeal(key, nonce, aad, pt);
    ASSERT_TRUE(fresh.ok());
    Bytes combined = ct;
    combined.insert(combined.end(), tag.begin(), tag.end());
    EXPECT_EQ(combined, *fresh) << "length " << n;
    Bytes back(n, 0xee);
    ASSERT_TRUE(gcm->Open(nonce, aad, ct, tag, back).ok());
    EXPECT_EQ(back, pt);
  }
}

// Seals the test vector, flips one bit of one input to Open, and checks the failure wiped the
// output buffer (pre-filled with 0xAA so a wipe is visible).
enum class GcmField { kTag, kCiphertext, kAad, kNonce };

void ExpectEveryBitFlipRejected(GcmField field) {
  GcmVector v;
  Result<AesGcm> gcm = AesGcm::Create(v.key);
  ASSERT_TRUE(gcm.ok());
  Bytes* target = field == GcmField::kTag          ? &v.tag
                  : field == GcmField::kCiphertext ? &v.ciphertext
                  : field == GcmField::kAad        ? &v.aad
                                                   : &v.nonce;
  for (size_t bit = 0; bit < target->size() * 8; ++bit) {
    (*target)[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Bytes out(v.ciphertext.size(), 0xaa);
    Status s = gcm->Open(v.nonce, v.aad, v.ciphertext, v.tag, out);
    EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << "bit " << bit;
    EXPECT_EQ(s.message(), "authentication tag mismatch");
    EXPECT_TRUE(AllZero(out)) << "output not wiped after flipping bit " << bit;
    (*target)[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
  // And the context still works once the input is intact again.
  Bytes out(v.ciphertext.size());
  EXPECT_TRUE(gcm->Open(v.nonce, v.aad, v.ciphertext, v.tag, out).ok());
  EXPECT_EQ(out, v.plaintext);
}

TEST(AesGcmTest, OpenRejectsEveryTagBitFlipAndWipesOutput) {
  ExpectEveryBitFlipRejected(GcmField::kTag);
}
TEST(AesGcmTest, OpenRejectsEveryCiphertextBitFlipAndWipesOutput) {
  ExpectEveryBitFlipRejected(GcmField::kCiphertext);
}
TEST(AesGcmTest, OpenRejectsEveryAadBitFlipAndWipesOutput) {
  ExpectEveryBitFlipRejected(GcmField::kAad);
}
TEST(AesGcmTest, OpenRejectsEveryNonceBitFlipAndWipesOutput) {
  ExpectEveryBitFlipRejected(GcmField::kNonce);
}

TEST(AesGcmTest, OpenInPlaceWipesBufferOnTagFailure) {
  GcmVector v;
  Result<AesGcm> gcm = AesGcm::Create(v.key);
  ASSERT_TRUE(gcm.ok());
  Bytes buf = v.ciphertext;
  v.tag[0] ^= 1;
  EXPECT_EQ(gcm->Open(v.nonce, v.aad, buf, v.tag, buf).code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(AllZero(buf));
}

TEST(AesGcmTest, OneShotOpenRejectsTamperingAndShortInput) {
  GcmVector v;
  Result<Bytes> sealed = AesGcmSeal(v.key, v.nonce, v.aad, v.plaintext);
  ASSERT_TRUE(sealed.ok());
  (*sealed)[3] ^= 0x10;
  EXPECT_EQ(AesGcmOpen(v.key, v.nonce, v.aad, *sealed).error().code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(AesGcmOpen(v.key, v.nonce, v.aad, Bytes(15)).error().code(),
            StatusCode::kInvalidArgument);
}

TEST(AesGcmTest, RejectsWrongKeyNonceTagAndBufferSizes) {
  EXPECT_EQ(AesGcm::Create(Bytes(16)).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AesGcm::Create(Bytes(33)).error().code(), StatusCode::kInvalidArgument);
  Result<AesGcm> gcm = AesGcm::Create(Bytes(32, 1));
  ASSERT_TRUE(gcm.ok());
  std::array<uint8_t, kGcmTagBytes> tag{};
  Bytes pt(10, 5);
  Bytes ct(10);
  EXPECT_EQ(gcm->Seal(Bytes(11), ByteSpan(), pt, ct, tag).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(gcm->Seal(Bytes(16), ByteSpan(), pt, ct, tag).code(), StatusCode::kInvalidArgument);
  Bytes short_ct(9);
  EXPECT_EQ(gcm->Seal(Bytes(12), ByteSpan(), pt, short_ct, tag).code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(gcm->Seal(Bytes(12), ByteSpan(), pt, ct, tag).ok());

  Bytes out(10, 0xaa);
  EXPECT_EQ(gcm->Open(Bytes(12), ByteSpan(), ct, ByteSpan(tag).first(12), out).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(AllZero(out));
  EXPECT_EQ(gcm->Open(Bytes(8), ByteSpan(), ct, tag, out).code(), StatusCode::kInvalidArgument);
  Bytes long_out(11);
  EXPECT_EQ(gcm->Open(Bytes(12), ByteSpan(), ct, tag, long_out).code(),
            StatusCode::kInvalidArgument);
}

TEST(AesGcmTest, RejectsPartiallyOverlappingBuffers) {
  Result<AesGcm> gcm = AesGcm::Create(Bytes(32, 1));
  ASSERT_TRUE(gcm.ok());
  Bytes buf(64, 3);
  std::array<uint8_t, kGcmTagBytes> tag{};
  MutableByteSpan all(buf);
  EXPECT_EQ(gcm->Seal(Bytes(12), ByteSpan(), all.first(32), all.subspan(1, 32), tag).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(gcm->Open(Bytes(12), ByteSpan(), all.subspan(1, 32), tag, all.first(32)).code(),
            StatusCode::kInvalidArgument);
}

// ----- Ed25519 ------------------------------------------------------------------------------

TEST(Ed25519Test, MatchesRfc8032TestVector1) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::FromSeed(
      Hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
  ASSERT_TRUE(key.ok()) << key.error().ToString();
  EXPECT_EQ(HexEncode(key->public_key().raw()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  Result<std::array<uint8_t, kEd25519SignatureBytes>> sig = key->Sign(ByteSpan());
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(HexEncode(*sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
            "701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  EXPECT_TRUE(key->public_key().Verify(ByteSpan(), *sig).ok());
}

TEST(Ed25519Test, MatchesRfc8032TestVector2) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::FromSeed(
      Hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"));
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(HexEncode(key->public_key().raw()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
  Bytes message = Hex("72");
  Result<std::array<uint8_t, kEd25519SignatureBytes>> sig = key->Sign(message);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(HexEncode(*sig),
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
            "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00");
  // Verification through a key built from the raw public bytes alone.
  Result<Ed25519PublicKey> pub = Ed25519PublicKey::FromRaw(key->public_key().raw());
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(pub->Verify(message, *sig).ok());
}

TEST(Ed25519Test, VerifyRejectsSignatureFromAnotherKey) {
  Result<Ed25519PrivateKey> a = Ed25519PrivateKey::Generate();
  Result<Ed25519PrivateKey> b = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->public_key().raw(), b->public_key().raw());
  auto sig = a->Sign(AsBytes("lease 42"));
  ASSERT_TRUE(sig.ok());
  Status s = b->public_key().Verify(AsBytes("lease 42"), *sig);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "signature does not verify");
  EXPECT_TRUE(a->public_key().Verify(AsBytes("lease 42"), *sig).ok());
}

TEST(Ed25519Test, VerifyRejectsModifiedMessage) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  std::string message = "lease 42 for device 7";
  auto sig = key->Sign(AsBytes(message));
  ASSERT_TRUE(sig.ok());
  for (size_t i = 0; i < message.size(); ++i) {
    std::string changed = message;
    changed[i] ^= 1;
    EXPECT_EQ(key->public_key().Verify(AsBytes(changed), *sig).code(), StatusCode::kUnauthenticated)
        << "byte " << i;
  }
  EXPECT_EQ(key->public_key().Verify(AsBytes(message + "!"), *sig).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(key->public_key().Verify(AsBytes(message).first(message.size() - 1), *sig).code(),
            StatusCode::kUnauthenticated);
}

TEST(Ed25519Test, VerifyRejectsEverySignatureBitFlip) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  auto sig = key->Sign(AsBytes("m"));
  ASSERT_TRUE(sig.ok());
  for (size_t bit = 0; bit < sig->size() * 8; ++bit) {
    auto bad = *sig;
    bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_EQ(key->public_key().Verify(AsBytes("m"), bad).code(), StatusCode::kUnauthenticated)
        << "bit " << bit;
  }
  EXPECT_TRUE(OpenSslErrors().empty()) << "failed verifies must not leave errors queued";
}

TEST(Ed25519Test, VerifyRejectsWrongSignatureLengthAsInvalidArgument) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  auto sig = key->Sign(AsBytes("m"));
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(key->public_key().Verify(AsBytes("m"), ByteSpan(*sig).first(63)).code(),
            StatusCode::kInvalidArgument);
  Bytes longer(sig->begin(), sig->end());
  longer.push_back(0);
  EXPECT_EQ(key->public_key().Verify(AsBytes("m"), longer).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(key->public_key().Verify(AsBytes("m"), ByteSpan()).code(),
            StatusCode::kInvalidArgument);
}

TEST(Ed25519Test, FingerprintIsPrefixOfSha256OfRawKey) {
  Result<Ed25519PublicKey> pub = Ed25519PublicKey::FromRaw(
      Hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"));
  ASSERT_TRUE(pub.ok());
  // sha256(d75a98...511a) = 21fe31dfa154a261626bf854046fd227...
  EXPECT_EQ(pub->Fingerprint(), "ed25519:21fe31dfa154a261");
}

TEST(Ed25519Test, PrivateKeyPemRoundTrips) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  Result<SecretBuffer> pem = key->ToPem();
  ASSERT_TRUE(pem.ok()) << pem.error().ToString();
  EXPECT_EQ(Str(pem->span()).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  Result<Ed25519PrivateKey> back = Ed25519PrivateKey::FromPem(AsChars(pem->span()));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->public_key().raw(), key->public_key().raw());
  // Ed25519 is deterministic: the same key signs the same message identically.
  EXPECT_EQ(*back->Sign(AsBytes("x")), *key->Sign(AsBytes("x")));
}

TEST(Ed25519Test, PublicKeyPemRoundTrips) {
  Result<Ed25519PrivateKey> key = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  std::string pem = key->public_key().ToPem();
  EXPECT_EQ(pem.rfind("-----BEGIN PUBLIC KEY-----", 0), 0u);
  Result<Ed25519PublicKey> back = Ed25519PublicKey::FromPem(pem);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->raw(), key->public_key().raw());
  EXPECT_EQ(back->Fingerprint(), key->public_key().Fingerprint());
  EXPECT_TRUE(back->Verify(AsBytes("x"), *key->Sign(AsBytes("x"))).ok());
}

TEST(Ed25519Test, FromPemRejectsGarbageAndOtherKeyTypes) {
  EXPECT_EQ(Ed25519PublicKey::FromPem("not a pem").error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519PrivateKey::FromPem("").error().code(), StatusCode::kInvalidArgument);
  Result<P256PrivateKey> p256 = P256PrivateKey::Generate();
  ASSERT_TRUE(p256.ok());
  EXPECT_EQ(Ed25519PublicKey::FromPem(p256->public_key().ToPem()).error().code(),
            StatusCode::kInvalidArgument);
  Result<SecretBuffer> p256_pem = p256->ToPem();
  ASSERT_TRUE(p256_pem.ok());
  EXPECT_EQ(Ed25519PrivateKey::FromPem(AsChars(p256_pem->span())).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(OpenSslErrors().empty());
}

TEST(Ed25519Test, FromRawAndFromSeedRejectWrongLengths) {
  EXPECT_EQ(Ed25519PublicKey::FromRaw(Bytes(31)).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519PublicKey::FromRaw(Bytes(33)).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519PrivateKey::FromSeed(Bytes(31)).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Ed25519PrivateKey::FromSeed(Bytes(64)).error().code(), StatusCode::kInvalidArgument);
}

// ----- P-256 --------------------------------------------------------------------------------

// RFC 5903 section 8.1 (256-bit random ECP group).
constexpr std::string_view kRfc5903I =
    "c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433";
constexpr std::string_view kRfc5903Gi =
    "04dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
    "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3";
constexpr std::string_view kRfc5903R =
    "c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53";
constexpr std::string_view kRfc5903Gr =
    "04d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
    "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab";
constexpr std::string_view kRfc5903Girx =
    "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de";

TEST(P256Test, EcdhMatchesRfc5903Vector) {
  P256PrivateKey i = P256FromScalar(kRfc5903I, kRfc5903Gi);
  P256PrivateKey r = P256FromScalar(kRfc5903R, kRfc5903Gr);
  EXPECT_EQ(HexEncode(i.public_key().uncompressed()), kRfc5903Gi);
  Result<SecretBuffer> z1 = i.Ecdh(r.public_key());
  Result<SecretBuffer> z2 = r.Ecdh(i.public_key());
  ASSERT_TRUE(z1.ok() && z2.ok());
  EXPECT_EQ(HexEncode(z1->span()), kRfc5903Girx);
  EXPECT_EQ(HexEncode(z2->span()), kRfc5903Girx);
}

TEST(P256Test, EcdhIsSymmetric) {
  Result<P256PrivateKey> a = P256PrivateKey::Generate();
  Result<P256PrivateKey> b = P256PrivateKey::Generate();
  ASSERT_TRUE(a.ok() && b.ok());
  Result<SecretBuffer> ab = a->Ecdh(b->public_key());
  Result<SecretBuffer> ba = b->Ecdh(a->public_key());
  ASSERT_TRUE(ab.ok() && ba.ok());
  EXPECT_EQ(ab->size(), kP256SharedSecretBytes);
  EXPECT_TRUE(ConstantTimeEquals(ab->span(), ba->span()));
  EXPECT_FALSE(AllZero(ab->span()));
}

TEST(P256Test, GeneratedPublicKeyIsUncompressedAndReimports) {
  Result<P256PrivateKey> a = P256PrivateKey::Generate();
  ASSERT_TRUE(a.ok());
  const auto& point = a->public_key().uncompressed();
  EXPECT_EQ(point[0], 0x04);
  Result<P256PublicKey> back = P256PublicKey::FromUncompressed(point);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->uncompressed(), point);
}

TEST(P256Test, FromUncompressedRejectsPointNotOnCurve) {
  Bytes point = Hex(kRfc5903Gi);
  point.back() ^= 1;  // y no longer satisfies the curve equation for x
  Result<P256PublicKey> bad = P256PublicKey::FromUncompressed(point);
  EXPECT_EQ(bad.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.error().message().find("not a point on the curve"), std::string::npos);
  Bytes zero(65, 0);
  zero[0] = 0x04;
  EXPECT_EQ(P256PublicKey::FromUncompressed(zero).error().code(), StatusCode::kInvalidArgument);
  // x = p (out of field range) with an arbitrary y.
  Bytes big =
      Hex("04ffffffff00000001000000000000000000000000ffffffffffffffffffffffff"
          "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3");
  EXPECT_EQ(P256PublicKey::FromUncompressed(big).error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(OpenSslErrors().empty());
}

TEST(P256Test, FromUncompressedRejectsWrongLengthAndPrefix) {
  Bytes point = Hex(kRfc5903Gi);
  ASSERT_TRUE(P256PublicKey::FromUncompressed(point).ok());
  EXPECT_EQ(P256PublicKey::FromUncompressed(ByteSpan()).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(P256PublicKey::FromUncompressed(ByteSpan(point).first(64)).error().code(),
            StatusCode::kInvalidArgument);
  Bytes longer = point;
  longer.push_back(0);
  EXPECT_EQ(P256PublicKey::FromUncompressed(longer).error().code(), StatusCode::kInvalidArgument);
  // Compressed form of the same point (y is odd: 0xb3), 33 bytes.
  Bytes compressed(point.begin(), point.begin() + 33);
  compressed[0] = 0x03;
  EXPECT_EQ(P256PublicKey::FromUncompressed(compressed).error().code(),
            StatusCode::kInvalidArgument);
  // Hybrid forms (0x06/0x07) and any other prefix on a 65-byte point.
  for (uint8_t prefix : {0x00, 0x02, 0x03, 0x05, 0x06, 0x07, 0xff}) {
    Bytes p = point;
    p[0] = prefix;
    EXPECT_EQ(P256PublicKey::FromUncompressed(p).error().code(), StatusCode::kInvalidArgument)
        << "prefix " << int{prefix};
  }
}

TEST(P256Test, PrivateKeyPemRoundTrips) {
  Result<P256PrivateKey> key = P256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  Result<SecretBuffer> pem = key->ToPem();
  ASSERT_TRUE(pem.ok()) << pem.error().ToString();
  EXPECT_EQ(Str(pem->span()).rfind("-----BEGIN PRIVATE KEY-----", 0), 0u);
  Result<P256PrivateKey> back = P256PrivateKey::FromPem(AsChars(pem->span()));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->public_key().uncompressed(), key->public_key().uncompressed());
  // Same scalar: the same shared secret with any peer.
  Result<P256PrivateKey> peer = P256PrivateKey::Generate();
  ASSERT_TRUE(peer.ok());
  EXPECT_EQ(ToBytes(back->Ecdh(peer->public_key())->span()),
            ToBytes(key->Ecdh(peer->public_key())->span()));
}

TEST(P256Test, PublicKeyPemRoundTrips) {
  Result<P256PrivateKey> key = P256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  std::string pem = key->public_key().ToPem();
  EXPECT_EQ(pem.rfind("-----BEGIN PUBLIC KEY-----", 0), 0u);
  Result<P256PublicKey> back = P256PublicKey::FromPem(pem);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->uncompressed(), key->public_key().uncompressed());
}

TEST(P256Test, PublicKeyFromPemNormalisesACompressedPoint) {
  Result<P256PublicKey> pub = P256PublicKey::FromUncompressed(Hex(kRfc5903Gi));
  ASSERT_TRUE(pub.ok());
  // Re-encode the same key with a compressed point in its SubjectPublicKeyInfo.
  EvpPkeyPtr copy(EVP_PKEY_dup(pub->get()));
  ASSERT_TRUE(copy);
  ASSERT_EQ(EVP_PKEY_set_utf8_string_param(copy.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                           "compressed"),
            1);
  std::string pem = PublicPemOf(copy.get());
  Result<P256PublicKey> back = P256PublicKey::FromPem(pem);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(HexEncode(back->uncompressed()), kRfc5903Gi);
}

TEST(P256Test, FromPemRejectsOtherCurvesAndKeyTypes) {
  EvpPkeyPtr p384(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"));
  ASSERT_TRUE(p384);
  Result<P256PublicKey> pub = P256PublicKey::FromPem(PublicPemOf(p384.get()));
  EXPECT_EQ(pub.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(pub.error().message().find("secp384r1"), std::string::npos) << pub.error().message();
  EXPECT_EQ(P256PrivateKey::FromPem(PrivatePemOf(p384.get())).error().code(),
            StatusCode::kInvalidArgument);

  Result<Ed25519PrivateKey> ed = Ed25519PrivateKey::Generate();
  ASSERT_TRUE(ed.ok());
  EXPECT_EQ(P256PublicKey::FromPem(ed->public_key().ToPem()).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(P256PublicKey::FromPem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .error()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(OpenSslErrors().empty());
}

TEST(P256Test, PrivateKeyFromPemRefusesEncryptedKeyWithoutPrompting) {
  Result<P256PrivateKey> key = P256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  EvpCipherPtr cipher(EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr));
  ASSERT_TRUE(cipher);
  Result<SecretBuffer> plain_pem = key->ToPem();
  ASSERT_TRUE(plain_pem.ok());
  // Re-read the plain PEM with OpenSSL to get an EVP_PKEY to encrypt.
  BioPtr bio(BIO_new_mem_buf(plain_pem->data(), static_cast<int>(plain_pem->size())));
  EvpPkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(pkey);
  std::string encrypted = PrivatePemOf(pkey.get(), cipher.get(), "hunter2");
  EXPECT_NE(encrypted.find("ENCRYPTED"), std::string::npos);
  EXPECT_EQ(P256PrivateKey::FromPem(encrypted).error().code(), StatusCode::kInvalidArgument);
}

// ----- ECIES --------------------------------------------------------------------------------

class EciesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<P256PrivateKey> key = P256PrivateKey::Generate();
    ASSERT_TRUE(key.ok());
    recipient_ = std::move(key).value();
  }

  Bytes Wrap(ByteSpan plaintext, std::string_view context) {
    Result<Bytes> envelope = EciesWrap(recipient_.public_key(), plaintext, AsBytes(context));
    EXPECT_TRUE(envelope.ok()) << envelope.error().ToString();
    return envelope ? *envelope : Bytes();
  }

  Result<SecretBuffer> Unwrap(ByteSpan envelope, std::string_view context) {
    return EciesUnwrap(recipient_, envelope, AsBytes(context));
  }

  P256PrivateKey recipient_;
  Bytes dek_ = Hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
};

TEST_F(EciesTest, RoundTripsSeveralSizes) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{32}, size_t{1000}}) {
    Bytes pt(n, static_cast<uint8_t>(n));
    Bytes envelope = Wrap(pt, "lease-dek:device-7");
    EXPECT_EQ(envelope.size(), kEciesOverheadBytes + n);
    Result<SecretBuffer> back = Unwrap(envelope, "lease-dek:device-7");
    ASSERT_TRUE(back.ok()) << back.error().ToString();
    EXPECT_EQ(ToBytes(back->span()), pt);
  }
}

TEST_F(EciesTest, EnvelopeHasDocumentedLayoutAndFreshEphemeralKey) {
  Bytes a = Wrap(dek_, "ctx");
  Bytes b = Wrap(dek_, "ctx");
  ASSERT_EQ(a.size(), 1 + 65 + 32 + 16);
  EXPECT_EQ(a[0], kEciesVersion);
  EXPECT_EQ(a[1], 0x04);
  EXPECT_TRUE(P256PublicKey::FromUncompressed(ByteSpan(a).subspan(1, 65)).ok());
  EXPECT_NE(Bytes(a.begin() + 1, a.begin() + 66), Bytes(b.begin() + 1, b.begin() + 66));
  EXPECT_NE(a, b);
}

// Recomputes the key schedule from crypto.h's comment with the primitives alone, so the wire
// format is pinned independently of EciesUnwrap.
TEST_F(EciesTest, FollowsTheSpecifiedKeySchedule) {
  std::string context = "lease-dek\x01\x02";
  Bytes envelope = Wrap(dek_, context);
  ByteSpan ephemeral_point = ByteSpan(envelope).subspan(1, 65);
  Result<P256PublicKey> ephemeral = P256PublicKey::FromUncompressed(ephemeral_point);
  ASSERT_TRUE(ephemeral.ok());
  Result<SecretBuffer> z = recipient_.Ecdh(*ephemeral);
  ASSERT_TRUE(z.ok());
  Bytes salt = ToBytes(ephemeral_point);
  AppendBytes(salt, recipient_.public_key().uncompressed());
  Bytes info = ToBytes(AsBytes("custody/ecies/v1"));
  info.push_back(0x00);
  AppendBytes(info, AsBytes(context));
  Result<SecretBuffer> okm = HkdfSha256(z->span(), salt, info, 44);
  ASSERT_TRUE(okm.ok());
  Result<SecretBuffer> pt = AesGcmOpen(okm->span().first(32), okm->span().subspan(32, 12),
                                       AsBytes(context), ByteSpan(envelope).subspan(66));
  ASSERT_TRUE(pt.ok()) << pt.error().ToString();
  EXPECT_EQ(ToBytes(pt->span()), dek_);
}

TEST_F(EciesTest, WrongContextFailsAuthentication) {
  Bytes envelope = Wrap(dek_, "lease-dek:device-7");
  EXPECT_EQ(Unwrap(envelope, "lease-dek:device-8").error().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(Unwrap(envelope, "").error().code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Unwrap(envelope, "lease-dek:device-7").ok());
}

TEST_F(EciesTest, WrongRecipientFailsAuthentication) {
  Bytes envelope = Wrap(dek_, "ctx");
  Result<P256PrivateKey> other = P256PrivateKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(EciesUnwrap(*other, envelope, AsBytes("ctx")).error().code(),
            StatusCode::kUnauthenticated);
}

TEST_F(EciesTest, EverySingleBitFlipFails) {
  Bytes envelope = Wrap(dek_, "ctx");
  for (size_t bit = 0; bit < envelope.size() * 8; ++bit) {
    Bytes bad = envelope;
    size_t byte = bit / 8;
    bad[byte] ^= static_cast<uint8_t>(1u << (bit % 8));
    Result<SecretBuffer> r = Unwrap(bad, "ctx");
    ASSERT_FALSE(r.ok()) << "bit " << bit << " flipped and the envelope still opened";
    StatusCode code = r.error().code();
    if (byte == 0) {
      EXPECT_EQ(code, StatusCode::kInvalidArgument) << "bit " << bit;  // version
    } else if (byte < 66) {
      // A flipped ephemeral point is almost always off the curve; if it lands on it, the tag
      // check catches it.
      EXPECT_TRUE(code == StatusCode::kInvalidArgument || code == StatusCode::kUnauthenticated)
          << "bit " << bit << ": " << r.error().ToString();
    } else {
      EXPECT_EQ(code, StatusCode::kUnauthenticated) << "bit " << bit;
    }
  }
  EXPECT_TRUE(OpenSslErrors().empty());
}

TEST_F(EciesTest, EveryTruncationAndExtensionFails) {
  Bytes envelope = Wrap(dek_, "ctx");
  for (size_t len = 0; len < envelope.size(); ++len) {
    Result<SecretBuffer> r = Unwrap(ByteSpan(envelope).first(len), "ctx");
    ASSERT_FALSE(r.ok()) << "length " << len;
    if (len < kEciesOverheadBytes) {
      EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << "length " << len;
    } else {
      EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated) << "length " << len;
    }
  }
  Result<SecretBuffer> short_one = Unwrap(ByteSpan(envelope).first(81), "ctx");
  EXPECT_NE(short_one.error().message().find("at least 82"), std::string::npos)
      << short_one.error().message();
  Bytes longer = envelope;
  longer.push_back(0);
  EXPECT_EQ(Unwrap(longer, "ctx").error().code(), StatusCode::kUnauthenticated);
}

TEST_F(EciesTest, UnknownVersionIsRejected) {
  Bytes envelope = Wrap(dek_, "ctx");
  for (uint8_t version : {0, 2, 0x81, 0xff}) {
    envelope[0] = version;
    Result<SecretBuffer> r = Unwrap(envelope, "ctx");
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.error().message().find("version"), std::string::npos) << r.error().message();
  }
}

TEST_F(EciesTest, UnwrapWithCustomZgenWorks) {
  Bytes envelope = Wrap(dek_, "ctx");
  int calls = 0;
  Bytes seen_ephemeral;
  EcdhFunction zgen = [&](const P256PublicKey& ephemeral) {
    ++calls;
    seen_ephemeral = ToBytes(ephemeral.uncompressed());
    return recipient_.Ecdh(ephemeral);
  };
  Result<SecretBuffer> back =
      EciesUnwrapWith(zgen, recipient_.public_key(), envelope, AsBytes("ctx"));
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(ToBytes(back->span()), dek_);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen_ephemeral, Bytes(envelope.begin() + 1, envelope.begin() + 66));
}

TEST_F(EciesTest, UnwrapWithPropagatesZgenFailures) {
  Bytes envelope = Wrap(dek_, "ctx");
  EcdhFunction unavailable = [](const P256PublicKey&) -> Result<SecretBuffer> {
    return Unavailable("TPM not reachable");
  };
  Result<SecretBuffer> r =
      EciesUnwrapWith(unavailable, recipient_.public_key(), envelope, AsBytes("ctx"));
  EXPECT_EQ(r.error().code(), StatusCode::kUnavailable);
  EXPECT_EQ(r.error().message(), "TPM not reachable");

  EcdhFunction short_z = [](const P256PublicKey&) { return SecretBuffer::Allocate(31); };
  EXPECT_FALSE(EciesUnwrapWith(short_z, recipient_.public_key(), envelope, AsBytes("ctx")).ok());

  // A zgen that returns the wrong secret fails the tag check, like a wrong recipient.
  EcdhFunction wrong_z = [](const P256PublicKey&) { return SecretBuffer::Allocate(32); };
  EXPECT_EQ(
      EciesUnwrapWith(wrong_z, recipient_.public_key(), envelope, AsBytes("ctx")).error().code(),
      StatusCode::kUnauthenticated);
}

TEST_F(EciesTest, UnwrapWithWrongRecipientPublicKeyFails) {
  // The recipient point is bound into the HKDF salt: the right Z with the wrong point fails.
  Bytes envelope = Wrap(dek_, "ctx");
  Result<P256PrivateKey> other = P256PrivateKey::Generate();
  ASSERT_TRUE(other.ok());
  EcdhFunction zgen = [&](const P256PublicKey& e) { return recipient_.Ecdh(e); };
  EXPECT_EQ(EciesUnwrapWith(zgen, other->public_key(), envelope, AsBytes("ctx")).error().code(),
            StatusCode::kUnauthenticated);
}

// ----- ECDSA P-256 over a digest --------------------------------------------------------------

// The EVP_PKEY of one of our private keys, through its PKCS#8 PEM (the API does not expose it).
EvpPkeyPtr EvpKeyOf(const P256PrivateKey& key) {
  Result<SecretBuffer> pem = key.ToPem();
  EXPECT_TRUE(pem.ok());
  BioPtr bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  return EvpPkeyPtr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
}

Bytes DerFromRs(ByteSpan r_s) {
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(r_s.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(r_s.data() + 32, 32, nullptr);
  EXPECT_EQ(ECDSA_SIG_set0(sig.get(), r, s), 1);
  Bytes der(static_cast<size_t>(i2d_ECDSA_SIG(sig.get(), nullptr)));
  unsigned char* p = der.data();
  EXPECT_EQ(i2d_ECDSA_SIG(sig.get(), &p), static_cast<int>(der.size()));
  return der;
}

P256Signature RsFromDer(ByteSpan der) {
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())));
  EXPECT_TRUE(sig);
  P256Signature out{};
  EXPECT_EQ(BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), out.data(), 32), 32);
  EXPECT_EQ(BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), out.data() + 32, 32), 32);
  return out;
}

class EcdsaP256Test : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<P256PrivateKey> key = P256PrivateKey::Generate();
    ASSERT_TRUE(key.ok());
    key_ = std::move(key).value();
  }
  P256PrivateKey key_;
  Sha256Digest digest_ = Sha256(AsBytes("a TPM attestation"));
};

TEST_F(EcdsaP256Test, SignDigestRoundTripsAndIsRandomised) {
  Result<P256Signature> a = key_.SignDigest(digest_);
  Result<P256Signature> b = key_.SignDigest(digest_);
  ASSERT_TRUE(a.ok() && b.ok()) << a.error().ToString();
  EXPECT_TRUE(key_.public_key().VerifyDigest(digest_, *a).ok());
  EXPECT_TRUE(key_.public_key().VerifyDigest(digest_, *b).ok());
  EXPECT_NE(*a, *b);
}

// RFC 6979 A.2.5: P-256, SHA-256, messages "sample" and "test" (deterministic k; any valid
// ECDSA verifier accepts them).
TEST_F(EcdsaP256Test, VerifyDigestAcceptsRfc6979Vectors) {
  Result<P256PublicKey> pub = P256PublicKey::FromUncompressed(
      Hex("0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
          "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"));
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(
      pub->VerifyDigest(Sha256(AsBytes("sample")),
                        Hex("efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
                            "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"))
          .ok());
  EXPECT_TRUE(
      pub->VerifyDigest(Sha256(AsBytes("test")),
                        Hex("f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367"
                            "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083"))
          .ok());
  EXPECT_EQ(
      pub->VerifyDigest(Sha256(AsBytes("tesT")),
                        Hex("f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367"
                            "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083"))
          .code(),
      StatusCode::kUnauthenticated);
}

TEST_F(EcdsaP256Test, InteroperatesWithEvpDigestSignAndVerify) {
  EvpPkeyPtr evp = EvpKeyOf(key_);
  ASSERT_TRUE(evp);
  const std::string message = "TPMS_ATTEST bytes";
  // OpenSSL signs the message (hashing it itself); we verify over its SHA-256.
  EvpMdCtxPtr sign_ctx(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestSignInit_ex(sign_ctx.get(), nullptr, "SHA256", nullptr, nullptr, evp.get(),
                                  nullptr),
            1);
  size_t der_len = 0;
  ASSERT_EQ(
      EVP_DigestSign(sign_ctx.get(), nullptr, &der_len, AsBytes(message).data(), message.size()),
      1);
  Bytes der(der_len);
  ASSERT_EQ(
      EVP_DigestSign(sign_ctx.get(), der.data(), &der_len, AsBytes(message).data(), message.size()),
      1);
  der.resize(der_len);
  EXPECT_TRUE(key_.public_key().VerifyDigest(Sha256(AsBytes(message)), RsFromDer(der)).ok());

  // We sign the digest; OpenSSL verifies over the message.
  Result<P256Signature> ours = key_.SignDigest(Sha256(AsBytes(message)));
  ASSERT_TRUE(ours.ok());
  Bytes our_der = DerFromRs(*ours);
  EvpMdCtxPtr verify_ctx(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestVerifyInit_ex(verify_ctx.get(), nullptr, "SHA256", nullptr, nullptr,
                                    key_.public_key().get(), nullptr),
            1);
  EXPECT_EQ(EVP_DigestVerify(verify_ctx.get(), our_der.data(), our_der.size(),
                             AsBytes(message).data(), message.size()),
            1);
}

TEST_F(EcdsaP256Test, VerifyRejectsEverySignatureAndDigestBitFlip) {
  Result<P256Signature> sig = key_.SignDigest(digest_);
  ASSERT_TRUE(sig.ok());
  for (size_t bit = 0; bit < sig->size() * 8; ++bit) {
    P256Signature bad = *sig;
    bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    Status st = key_.public_key().VerifyDigest(digest_, bad);
    ASSERT_EQ(st.code(), StatusCode::kUnauthenticated) << "signature bit " << bit;
    EXPECT_EQ(st.message(), "signature does not verify");
  }
  for (size_t bit = 0; bit < digest_.size() * 8; ++bit) {
    Sha256Digest bad = digest_;
    bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    ASSERT_EQ(key_.public_key().VerifyDigest(bad, *sig).code(), StatusCode::kUnauthenticated)
        << "digest bit " << bit;
  }
  EXPECT_TRUE(OpenSslErrors().empty());
}

TEST_F(EcdsaP256Test, VerifyRejectsAnotherKeysSignature) {
  Result<P256PrivateKey> other = P256PrivateKey::Generate();
  ASSERT_TRUE(other.ok());
  Result<P256Signature> sig = other->SignDigest(digest_);
  ASSERT_TRUE(sig.ok());
  EXPECT_EQ(key_.public_key().VerifyDigest(digest_, *sig).code(), StatusCode::kUnauthenticated);
}

TEST_F(EcdsaP256Test, VerifyRejectsOutOfRangeScalarsAndWrongLengths) {
  Result<P256Signature> sig = key_.SignDigest(digest_);
  ASSERT_TRUE(sig.ok());
  const Bytes order = Hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
  P256Signature zero_r = *sig;
  std::fill(zero_r.begin(), zero_r.begin() + 32, 0);
  P256Signature zero_s = *sig;
  std::fill(zero_s.begin() + 32, zero_s.end(), 0);
  P256Signature r_is_n = *sig;
  std::copy(order.begin(), order.end(), r_is_n.begin());
  P256Signature all_ff{};
  all_ff.fill(0xff);
  for (const P256Signature& bad : {zero_r, zero_s, r_is_n, all_ff, P256Signature{}}) {
    EXPECT_EQ(key_.public_key().VerifyDigest(digest_, bad).code(), StatusCode::kUnauthenticated);
  }
  EXPECT_EQ(key_.public_key().VerifyDigest(digest_, ByteSpan(*sig).first(63)).code(),
            StatusCode::kInvalidArgument);
  Bytes longer(sig->begin(), sig->end());
  longer.push_back(0);
  EXPECT_EQ(key_.public_key().VerifyDigest(digest_, longer).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(P256PublicKey().VerifyDigest(digest_, *sig).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(P256PrivateKey().SignDigest(digest_).error().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(OpenSslErrors().empty());
}

// ----- OpenSSL error text -------------------------------------------------------------------

TEST(CryptoOpenSslErrorsTest, DrainsTheQueueIntoText) {
  ERR_clear_error();
  EvpCipherPtr missing(EVP_CIPHER_fetch(nullptr, "NO-SUCH-CIPHER", nullptr));
  EXPECT_FALSE(missing);
  std::string text = OpenSslErrors();
  EXPECT_FALSE(text.empty());
  EXPECT_NE(text.find("unsupported"), std::string::npos) << text;
  EXPECT_TRUE(OpenSslErrors().empty());
}

}  // namespace
}  // namespace custody::crypto
