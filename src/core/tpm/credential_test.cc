#include "core/tpm/credential.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <cstring>
#include <string>

#include "core/base/test_util.h"
#include "core/crypto/crypto.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

using custody::testing::Hex;
using custody::testing::ToBytes;

// A software "EK": the RFC 5903 §8.1 responder key (scalar c6ef9c5d..., point 04d12dfb...), so
// that tests can play the TPM's part of TPM2_ActivateCredential.
constexpr std::string_view kEkPrivatePem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxu+cXXiuASoBEWSs\n"
    "s5fOIIhoXY8Gv5vgsoOrRkdr7lOhRANCAATRLftSicjU+BIItwJwOYw0IpaXCgvM\n"
    "t0xzb8dVRJS/Y1b788o2bMI+gVeFTBPFjWqsI/BGraMPg1PnTzMDmHKr\n"
    "-----END PRIVATE KEY-----\n";

// tpm2-tools 5.4 `tpm2_makecredential -T none` (software) for that EK (EkTemplate(kEcc) with its
// point), AK Name 000b0102...1f20 and the secret "custody credential secret 32byte": the credential
// file is 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
constexpr std::string_view kToolsAkName =
    "000b0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
constexpr std::string_view kToolsCredentialFile =
    "badcc0de000000010044002005e3bd1fbd2a068f2a761ed2fa7b36dfff73a8a71b7a0952d731833bd6586149c1cf"
    "d9f311eb886226d5ccc50436d7d80cb8cc6ddc7f48197d6aa2aa030fb66a9d5700440020b00af847c5ed7b3b5a95"
    "5e370d057f7d2c23ae0e114cd9458ef8a7586a0c8d84002002a14332e25d63747c16988334075b766b639bd2d039"
    "336589090a429010b9c6";

Bytes Marshal2B(const TPMT_PUBLIC& pub) {
  Result<Bytes> bytes = MarshalPublic2B(pub);
  EXPECT_TRUE(bytes.ok()) << bytes.error().ToString();
  return bytes ? *bytes : Bytes();
}

crypto::P256PrivateKey EccEkPrivate() {
  Result<crypto::P256PrivateKey> key = crypto::P256PrivateKey::FromPem(kEkPrivatePem);
  EXPECT_TRUE(key.ok()) << key.error().ToString();
  return std::move(key).value();
}

TPMT_PUBLIC EccEkPublic(const crypto::P256PublicKey& key) {
  TPMT_PUBLIC ek = EkTemplate(EkType::kEcc);
  const auto& point = key.uncompressed();
  std::memcpy(ek.unique.ecc.x.buffer, point.data() + 1, 32);
  std::memcpy(ek.unique.ecc.y.buffer, point.data() + 33, 32);
  return ek;
}

Bytes AkName() {
  Result<crypto::P256PrivateKey> key = crypto::P256PrivateKey::Generate();
  EXPECT_TRUE(key.ok());
  TPMT_PUBLIC ak = AkTemplate();
  const auto& point = key->public_key().uncompressed();
  ak.unique.ecc.x.size = 32;
  std::memcpy(ak.unique.ecc.x.buffer, point.data() + 1, 32);
  ak.unique.ecc.y.size = 32;
  std::memcpy(ak.unique.ecc.y.buffer, point.data() + 33, 32);
  Result<Bytes> name = ObjectName(ak);
  EXPECT_TRUE(name.ok());
  return *name;
}

// Reads a TPM2B (2-byte big-endian size, then the bytes) from `reader`.
bool ReadTpm2b(ByteReader& reader, ByteSpan& out) {
  uint16_t size = 0;
  return reader.ReadU16(size) && reader.ReadSpan(size, out);
}

// TPM2_ActivateCredential (Part 3 §12.5) as the TPM performs it once it has the seed: check the
// outer HMAC over encIdentity ‖ Name, then decrypt the TPM2B_DIGEST. Empty on any failure.
Bytes ActivateWithSeed(ByteSpan seed, ByteSpan ak_name, ByteSpan id_object) {
  ByteReader outer(id_object);
  ByteSpan blob;
  if (!ReadTpm2b(outer, blob) || outer.remaining() != 0) return {};
  ByteReader inner(blob);
  ByteSpan integrity;
  if (!ReadTpm2b(inner, integrity)) return {};
  ByteSpan enc_identity;
  if (!inner.ReadSpan(inner.remaining(), enc_identity)) return {};

  Result<SecretBuffer> hmac_key = KdfA(seed, "INTEGRITY", {}, {}, 256);
  Bytes hmac_input = ToBytes(enc_identity);
  AppendBytes(hmac_input, ak_name);
  Result<crypto::Sha256Digest> expected = HmacSha256(hmac_key->span(), hmac_input);
  if (!expected.ok() || !ConstantTimeEquals(*expected, integrity)) return {};

  Result<SecretBuffer> sym_key = KdfA(seed, "STORAGE", ak_name, {}, 128);
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  const uint8_t iv[16] = {};
  Bytes plain(enc_identity.size());
  int len = 0;
  EXPECT_EQ(EVP_DecryptInit_ex2(ctx.get(), EVP_aes_128_cfb128(), sym_key->data(), iv, nullptr), 1);
  EXPECT_EQ(EVP_DecryptUpdate(ctx.get(), plain.data(), &len, enc_identity.data(),
                              static_cast<int>(enc_identity.size())),
            1);
  ByteReader digest(plain);
  ByteSpan secret;
  if (!ReadTpm2b(digest, secret) || digest.remaining() != 0) return {};
  return ToBytes(secret);
}

// The ECC seed as the EK's TPM recovers it from the TPMS_ECC_POINT in encrypted_secret.
Bytes EccSeed(const crypto::P256PrivateKey& ek, ByteSpan encrypted_secret) {
  ByteReader outer(encrypted_secret);
  ByteSpan point_bytes, x, y;
  if (!ReadTpm2b(outer, point_bytes) || outer.remaining() != 0) return {};
  ByteReader point(point_bytes);
  if (!ReadTpm2b(point, x) || !ReadTpm2b(point, y) || point.remaining() != 0) return {};
  if (x.size() != 32 || y.size() != 32) return {};
  Bytes uncompressed = {0x04};
  AppendBytes(uncompressed, x);
  AppendBytes(uncompressed, y);
  Result<crypto::P256PublicKey> ephemeral = crypto::P256PublicKey::FromUncompressed(uncompressed);
  if (!ephemeral.ok()) return {};
  Result<SecretBuffer> z = ek.Ecdh(*ephemeral);
  const auto& ek_point = ek.public_key().uncompressed();
  Result<SecretBuffer> seed =
      KdfE(z->span(), "IDENTITY", x, ByteSpan(ek_point).subspan(1, 32), 256);
  return ToBytes(seed->span());
}

class CredentialTest : public ::testing::Test {
 protected:
  crypto::P256PrivateKey ek_ = EccEkPrivate();
  Bytes ek_public_ = Marshal2B(EccEkPublic(ek_.public_key()));
  Bytes ak_name_ = AkName();
  Bytes secret_ = Hex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
};

TEST_F(CredentialTest, EccCredentialHasTheTpmLayoutAndActivates) {
  Result<Credential> cred = MakeCredential(ek_public_, ak_name_, secret_);
  ASSERT_TRUE(cred.ok()) << cred.error().ToString();
  // TPM2B_ID_OBJECT: size ‖ TPM2B_DIGEST(outer HMAC, 32) ‖ encIdentity (2 + 32 bytes).
  EXPECT_EQ(cred->id_object.size(), 2u + 2 + 32 + 2 + 32);
  EXPECT_EQ(HexEncode(ByteSpan(cred->id_object).first(4)), "00440020");
  // TPM2B_ENCRYPTED_SECRET holding a TPMS_ECC_POINT with 32-byte coordinates.
  EXPECT_EQ(cred->encrypted_secret.size(), 2u + 2 + 32 + 2 + 32);
  EXPECT_EQ(HexEncode(ByteSpan(cred->encrypted_secret).first(4)), "00440020");
  Bytes seed = EccSeed(ek_, cred->encrypted_secret);
  ASSERT_EQ(seed.size(), 32u);
  EXPECT_EQ(ActivateWithSeed(seed, ak_name_, cred->id_object), secret_);
}

// Checks the activation above against tpm2-tools' own software MakeCredential, so both sides
// agree with the reference tooling and not only with each other.
TEST_F(CredentialTest, TheSoftwareActivationOpensATpm2ToolsCredential) {
  Bytes file = Hex(kToolsCredentialFile);
  ByteReader reader(file);
  uint32_t magic = 0, version = 0;
  ASSERT_TRUE(reader.ReadU32(magic) && reader.ReadU32(version));
  EXPECT_EQ(magic, 0xBADCC0DEu);
  EXPECT_EQ(version, 1u);
  ByteSpan id_object, encrypted_secret;
  ASSERT_TRUE(ReadTpm2b(reader, id_object));
  ASSERT_TRUE(ReadTpm2b(reader, encrypted_secret));
  ASSERT_EQ(reader.remaining(), 0u);
  // The helpers take the marshalled TPM2Bs, size prefixes included.
  const size_t id_end = 8 + 2 + id_object.size();
  Bytes id(file.begin() + 8, file.begin() + static_cast<std::ptrdiff_t>(id_end));
  Bytes secret(file.begin() + static_cast<std::ptrdiff_t>(id_end), file.end());
  EXPECT_EQ(secret.size(), 2 + encrypted_secret.size());
  Bytes seed = EccSeed(ek_, secret);
  ASSERT_EQ(seed.size(), 32u);
  EXPECT_EQ(ActivateWithSeed(seed, Hex(kToolsAkName), id),
            ToBytes(AsBytes("custody credential secret 32byte")));
}

TEST_F(CredentialTest, IsBoundToTheAkNameAndTheEk) {
  Result<Credential> cred = MakeCredential(ek_public_, ak_name_, secret_);
  ASSERT_TRUE(cred.ok());
  Bytes seed = EccSeed(ek_, cred->encrypted_secret);
  Bytes other_name = AkName();
  EXPECT_TRUE(ActivateWithSeed(seed, other_name, cred->id_object).empty());
  Result<crypto::P256PrivateKey> other_ek = crypto::P256PrivateKey::Generate();
  ASSERT_TRUE(other_ek.ok());
  Bytes wrong_seed = EccSeed(*other_ek, cred->encrypted_secret);
  EXPECT_TRUE(ActivateWithSeed(wrong_seed, ak_name_, cred->id_object).empty());
}

TEST_F(CredentialTest, EveryCredentialUsesAFreshSeed) {
  Result<Credential> a = MakeCredential(ek_public_, ak_name_, secret_);
  Result<Credential> b = MakeCredential(ek_public_, ak_name_, secret_);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->encrypted_secret, b->encrypted_secret);
  EXPECT_NE(a->id_object, b->id_object);
  EXPECT_EQ(ActivateWithSeed(EccSeed(ek_, b->encrypted_secret), ak_name_, b->id_object), secret_);
}

TEST_F(CredentialTest, AcceptsSecretsOfOneTo32BytesOnly) {
  for (size_t n : {size_t{1}, size_t{16}, size_t{32}}) {
    Bytes secret(n, 0x42);
    Result<Credential> cred = MakeCredential(ek_public_, ak_name_, secret);
    ASSERT_TRUE(cred.ok()) << n;
    EXPECT_EQ(cred->id_object.size(), 2u + 2 + 32 + 2 + n);
    EXPECT_EQ(ActivateWithSeed(EccSeed(ek_, cred->encrypted_secret), ak_name_, cred->id_object),
              secret);
  }
  EXPECT_EQ(MakeCredential(ek_public_, ak_name_, {}).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCredential(ek_public_, ak_name_, Bytes(33, 1)).error().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(CredentialTest, RejectsAnAkNameThatIsNotASha256Name) {
  Bytes longer = ak_name_;
  longer.push_back(0);
  Bytes sha1 = ak_name_;
  sha1[1] = 0x04;
  Bytes handle = ak_name_;
  handle[0] = 0x40;
  for (const Bytes& name : {Bytes(), ToBytes(ByteSpan(ak_name_).first(33)), longer, sha1, handle}) {
    Result<Credential> r = MakeCredential(ek_public_, name, secret_);
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << HexEncode(name);
    EXPECT_NE(r.error().message().find("AK name"), std::string::npos) << r.error().message();
  }
}

TEST_F(CredentialTest, RejectsKeysThatAreNotEkShaped) {
  struct Case {
    const char* needle;
    void (*mutate)(TPMT_PUBLIC&);
  };
  const Case cases[] = {
      {"restricted decryption key",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; }},
      {"restricted decryption key",
       [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_DECRYPT; }},
      {"restricted decryption key",
       [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_SIGN_ENCRYPT; }},
      {"nameAlg", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; }},
      {"AES-128-CFB", [](TPMT_PUBLIC& p) { p.parameters.eccDetail.symmetric.keyBits.aes = 256; }},
      {"AES-128-CFB",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CBC; }},
      {"AES-128-CFB",
       [](TPMT_PUBLIC& p) { p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL; }},
      {"curve", [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384; }},
      {"not a point on the curve", [](TPMT_PUBLIC& p) { p.unique.ecc.y.buffer[31] ^= 1; }},
  };
  for (const Case& c : cases) {
    TPMT_PUBLIC ek = EccEkPublic(ek_.public_key());
    c.mutate(ek);
    Result<Credential> r = MakeCredential(Marshal2B(ek), ak_name_, secret_);
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << c.needle;
    EXPECT_NE(r.error().message().find(c.needle), std::string::npos) << r.error().message();
  }
  TPMT_PUBLIC rsa3072 = EkTemplate(EkType::kRsa);
  rsa3072.parameters.rsaDetail.keyBits = 3072;
  rsa3072.unique.rsa.size = 384;
  EXPECT_EQ(MakeCredential(Marshal2B(rsa3072), ak_name_, secret_).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCredential(Marshal2B(AkTemplate()), ak_name_, secret_).error().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeCredential(Hex("0004deadbeef"), ak_name_, secret_).error().code(),
            StatusCode::kInvalidArgument);
  Bytes trailing = ek_public_;
  trailing.push_back(0);
  EXPECT_EQ(MakeCredential(trailing, ak_name_, secret_).error().code(),
            StatusCode::kInvalidArgument);
}

class CredentialRsaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
    ASSERT_TRUE(key_);
    BIGNUM* n = nullptr;
    ASSERT_EQ(EVP_PKEY_get_bn_param(key_.get(), OSSL_PKEY_PARAM_RSA_N, &n), 1);
    crypto::BignumPtr owner(n);
    TPMT_PUBLIC ek = EkTemplate(EkType::kRsa);
    ASSERT_EQ(BN_bn2binpad(n, ek.unique.rsa.buffer, 256), 256);
    ek_public_ = Marshal2B(ek);
  }

  // The TPM's side: OAEP-decrypt the seed with the label "IDENTITY\0" (or `label_bytes` of it).
  Bytes RsaSeed(ByteSpan encrypted_secret, size_t label_bytes = 9) {
    ByteReader reader(encrypted_secret);
    ByteSpan ciphertext;
    if (!ReadTpm2b(reader, ciphertext) || reader.remaining() != 0) return {};
    crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key_.get(), nullptr));
    EXPECT_EQ(EVP_PKEY_decrypt_init(ctx.get()), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha256()), 1);
    static const char kLabel[] = "IDENTITY";  // sizeof includes the NUL
    void* label = OPENSSL_memdup(kLabel, sizeof(kLabel));
    EXPECT_EQ(EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), label, static_cast<int>(label_bytes)), 1);
    Bytes seed(256);
    size_t len = seed.size();
    if (EVP_PKEY_decrypt(ctx.get(), seed.data(), &len, ciphertext.data(), ciphertext.size()) != 1) {
      return {};
    }
    seed.resize(len);
    return seed;
  }

  crypto::EvpPkeyPtr key_;
  Bytes ek_public_;
  Bytes ak_name_ = AkName();
  Bytes secret_ = Hex("c0ffee00c0ffee00c0ffee00c0ffee00");
};

TEST_F(CredentialRsaTest, RsaCredentialHasTheTpmLayoutAndActivates) {
  Result<Credential> cred = MakeCredential(ek_public_, ak_name_, secret_);
  ASSERT_TRUE(cred.ok()) << cred.error().ToString();
  EXPECT_EQ(cred->encrypted_secret.size(), 2u + 256);
  EXPECT_EQ(HexEncode(ByteSpan(cred->encrypted_secret).first(2)), "0100");
  EXPECT_EQ(cred->id_object.size(), 2u + 2 + 32 + 2 + 16);
  Bytes seed = RsaSeed(cred->encrypted_secret);
  ASSERT_EQ(seed.size(), 32u);
  EXPECT_EQ(ActivateWithSeed(seed, ak_name_, cred->id_object), secret_);
  EXPECT_TRUE(ActivateWithSeed(seed, AkName(), cred->id_object).empty());
  // The OAEP label includes the NUL: without it the TPM's decryption fails.
  EXPECT_TRUE(RsaSeed(cred->encrypted_secret, 8).empty());
}

TEST_F(CredentialRsaTest, RejectsAnRsaEkWithAWrongSizedModulus) {
  Result<TPMT_PUBLIC> ek = UnmarshalPublic2B(ek_public_);
  ASSERT_TRUE(ek.ok());
  ek->unique.rsa.size = 128;
  Result<Credential> r = MakeCredential(Marshal2B(*ek), ak_name_, secret_);
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("RSA 2048"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace custody::tpm
