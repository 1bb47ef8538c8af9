#include "custodian/ca.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"

namespace custody::custodian {
namespace {

using crypto::EvpPkeyPtr;
using crypto::X509Ptr;

constexpr char kDeviceId[] = "dev_0123456789abcdef0123456789abcdef";
constexpr int64_t kDaySeconds = 24 * 60 * 60;

void ExpectError(const Status& status, StatusCode code, std::string_view needle = "") {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << status.message() << "' does not mention '" << needle << "'";
}

X509Ptr ParsePem(std::string_view pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  EXPECT_TRUE(cert) << pem;
  return cert;
}

// X509_verify_cert of `cert_pem` against `ca_pem` alone, for `purpose`: the same check a TLS
// peer makes, independent of CertificateAuthority::Verify. Returns the X509_V_* result.
int VerifyAgainst(const std::string& ca_pem, const std::string& cert_pem, int purpose) {
  X509Ptr ca = ParsePem(ca_pem);
  X509Ptr cert = ParsePem(cert_pem);
  crypto::X509StorePtr store(X509_STORE_new());
  EXPECT_EQ(X509_STORE_add_cert(store.get(), ca.get()), 1);
  crypto::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  EXPECT_EQ(X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr), 1);
  EXPECT_EQ(X509_STORE_CTX_set_purpose(ctx.get(), purpose), 1);
  if (X509_verify_cert(ctx.get()) == 1) return X509_V_OK;
  int err = X509_STORE_CTX_get_error(ctx.get());
  return err == X509_V_OK ? X509_V_ERR_UNSPECIFIED : err;
}

Bytes SpkiDer(EVP_PKEY* key) {
  int len = i2d_PUBKEY(key, nullptr);
  EXPECT_GT(len, 0);
  Bytes out(static_cast<size_t>(len));
  unsigned char* p = out.data();
  EXPECT_EQ(i2d_PUBKEY(key, &p), len);
  return out;
}

EvpPkeyPtr EcKey(const char* curve) {
  return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
}

std::string CommonName(X509* cert) {
  X509_NAME* name = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return "";
  const ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<size_t>(ASN1_STRING_length(value)));
}

bool IsCritical(X509* cert, int nid) {
  int index = X509_get_ext_by_NID(cert, nid, -1);
  return index >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, index)) == 1;
}

// subjectAltName as "DNS:name" / "IP:address" strings.
std::set<std::string> SubjectAltNames(X509* cert) {
  std::set<std::string> out;
  crypto::GeneralNamesPtr names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    int type = 0;
    auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(name, &type));
    const unsigned char* data = ASN1_STRING_get0_data(value);
    int len = ASN1_STRING_length(value);
    if (type == GEN_DNS) {
      out.insert("DNS:" + std::string(reinterpret_cast<const char*>(data), len));
    } else if (type == GEN_IPADD) {
      char text[INET6_ADDRSTRLEN] = {};
      inet_ntop(len == 4 ? AF_INET : AF_INET6, data, text, sizeof(text));
      out.insert(std::string("IP:") + text);
    }
  }
  return out;
}

std::string SerialHex(X509* cert) {
  crypto::BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  char* hex = BN_bn2hex(bn.get());
  std::string out(hex);
  OPENSSL_free(hex);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // BN_bn2hex prints whole bytes, so it may start with one zero digit.
  out.erase(0, std::min(out.find_first_not_of('0'), out.size() - 1));
  return out;
}

// Seconds from now to `t` (negative: in the past).
int64_t SecondsFromNow(const ASN1_TIME* t) {
  int days = 0;
  int seconds = 0;
  EXPECT_EQ(ASN1_TIME_diff(&days, &seconds, nullptr, t), 1);
  return int64_t{days} * kDaySeconds + seconds;
}

class CaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_ = new CertificateAuthority(*CertificateAuthority::Create("Test custodian CA"));
  }
  static void TearDownTestSuite() {
    delete ca_;
    ca_ = nullptr;
  }
  static const CertificateAuthority& ca() { return *ca_; }

  static IssuedCertificate IssueDevice(const std::string& id = kDeviceId) {
    EvpPkeyPtr key = EcKey("P-256");
    Result<IssuedCertificate> cert = ca().IssueDevice(SpkiDer(key.get()), id, 30);
    EXPECT_TRUE(cert.ok()) << cert.error().ToString();
    return cert.ok() ? *cert : IssuedCertificate{};
  }

 private:
  static CertificateAuthority* ca_;
};

CertificateAuthority* CaTest::ca_ = nullptr;

TEST_F(CaTest, CaCertificateHasTheDocumentedExtensionsAndVerifiesItself) {
  X509Ptr cert = ParsePem(ca().CertificatePem());
  ASSERT_TRUE(cert);
  EXPECT_EQ(X509_get_version(cert.get()), 2);  // v3
  EXPECT_EQ(CommonName(cert.get()), "Test custodian CA");
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_issuer_name(cert.get())), 0);
  EXPECT_EQ(X509_get_signature_nid(cert.get()), NID_ecdsa_with_SHA256);

  EXPECT_EQ(X509_check_ca(cert.get()), 1);  // basicConstraints CA:TRUE
  EXPECT_TRUE(IsCritical(cert.get(), NID_basic_constraints));
  EXPECT_EQ(X509_get_pathlen(cert.get()), 0);
  EXPECT_TRUE(IsCritical(cert.get(), NID_key_usage));
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  EXPECT_EQ(X509_get_ext_by_NID(cert.get(), NID_ext_key_usage, -1), -1);
  const ASN1_OCTET_STRING* skid = X509_get0_subject_key_id(cert.get());
  const ASN1_OCTET_STRING* akid = X509_get0_authority_key_id(cert.get());
  ASSERT_NE(skid, nullptr);
  ASSERT_NE(akid, nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(skid, akid), 0);

  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  ASSERT_NE(key, nullptr);
  EXPECT_TRUE(EVP_PKEY_is_a(key, "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(key), 256);
  EXPECT_EQ(X509_verify(cert.get(), key), 1);
  EXPECT_EQ(X509_check_issued(cert.get(), cert.get()), X509_V_OK);
  // A CA verifies as its own trust anchor.
  EXPECT_EQ(VerifyAgainst(ca().CertificatePem(), ca().CertificatePem(), X509_PURPOSE_ANY),
            X509_V_OK);

  // Backdated five minutes for clock skew; valid for 20 years.
  int64_t not_before = SecondsFromNow(X509_get0_notBefore(cert.get()));
  EXPECT_LE(not_before, -4 * 60);
  EXPECT_GE(not_before, -6 * 60);
  int64_t not_after = SecondsFromNow(X509_get0_notAfter(cert.get()));
  EXPECT_NEAR(static_cast<double>(not_after), 7300.0 * kDaySeconds, 60.0);
}

TEST_F(CaTest, CreateRejectsAnUnusableName) {
  ExpectError(CertificateAuthority::Create("").error(), StatusCode::kInvalidArgument,
              "common name");
  ExpectError(CertificateAuthority::Create(std::string(65, 'x')).error(),
              StatusCode::kInvalidArgument, "common name");
  ExpectError(CertificateAuthority::Create("line\nbreak").error(), StatusCode::kInvalidArgument,
              "common name");
  ExpectError(CertificateAuthority::Create("bad \xff utf-8").error(), StatusCode::kInvalidArgument,
              "UTF-8");
}

TEST_F(CaTest, LoadRoundTripsCreate) {
  Result<SecretBuffer> key_pem = ca().KeyPem();
  ASSERT_TRUE(key_pem.ok()) << key_pem.error().ToString();
  EXPECT_NE(AsChars(key_pem->span()).find("BEGIN PRIVATE KEY"), std::string_view::npos);
  Result<CertificateAuthority> loaded =
      CertificateAuthority::Load(AsChars(key_pem->span()), ca().CertificatePem());
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  EXPECT_EQ(loaded->CertificatePem(), ca().CertificatePem());

  // The loaded CA signs with the same key: what it issues chains to the original certificate.
  EvpPkeyPtr device = EcKey("P-256");
  Result<IssuedCertificate> cert = loaded->IssueDevice(SpkiDer(device.get()), kDeviceId, 1);
  ASSERT_TRUE(cert.ok()) << cert.error().ToString();
  EXPECT_EQ(VerifyAgainst(ca().CertificatePem(), cert->pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
}

TEST_F(CaTest, LoadRefusesAKeyFromAnotherCa) {
  Result<CertificateAuthority> other = CertificateAuthority::Create("Other CA");
  ASSERT_TRUE(other.ok());
  Result<SecretBuffer> other_key = other->KeyPem();
  ASSERT_TRUE(other_key.ok());
  ExpectError(CertificateAuthority::Load(AsChars(other_key->span()), ca().CertificatePem()).error(),
              StatusCode::kInvalidArgument, "two CAs");
}

TEST_F(CaTest, LoadRefusesANonCaCertificateAndGarbage) {
  // A server identity: a matching key and certificate, but not a CA.
  Result<CertificateAuthority::ServerIdentity> server = ca().IssueServer({"example.com"}, {}, 1);
  ASSERT_TRUE(server.ok());
  ExpectError(
      CertificateAuthority::Load(AsChars(server->key_pem.span()), server->certificate.pem).error(),
      StatusCode::kInvalidArgument, "not a CA certificate");

  Result<SecretBuffer> key_pem = ca().KeyPem();
  ASSERT_TRUE(key_pem.ok());
  ExpectError(CertificateAuthority::Load("garbage", ca().CertificatePem()).error(),
              StatusCode::kInvalidArgument, "CA key");
  ExpectError(CertificateAuthority::Load(AsChars(key_pem->span()), "garbage").error(),
              StatusCode::kInvalidArgument, "CA certificate");
}

TEST_F(CaTest, ServerCertificateVerifiesForSslServerWithItsNamesAndKey) {
  Result<CertificateAuthority::ServerIdentity> server = ca().IssueServer(
      {"custodian.example.com", "localhost"}, {"127.0.0.1", "10.0.0.7", "::1"}, 825);
  ASSERT_TRUE(server.ok()) << server.error().ToString();
  const std::string& pem = server->certificate.pem;

  EXPECT_EQ(VerifyAgainst(ca().CertificatePem(), pem, X509_PURPOSE_SSL_SERVER), X509_V_OK);
  // serverAuth only: not usable as a client certificate.
  EXPECT_NE(VerifyAgainst(ca().CertificatePem(), pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  EXPECT_TRUE(ca().Verify(pem, CertificateUse::kServer).ok());
  ExpectError(ca().Verify(pem, CertificateUse::kClient), StatusCode::kUnauthenticated,
              "unsuitable certificate purpose");

  X509Ptr cert = ParsePem(pem);
  ASSERT_TRUE(cert);
  EXPECT_EQ(SubjectAltNames(cert.get()),
            (std::set<std::string>{"DNS:custodian.example.com", "DNS:localhost", "IP:127.0.0.1",
                                   "IP:10.0.0.7", "IP:::1"}));
  EXPECT_EQ(CommonName(cert.get()), "custodian.example.com");
  EXPECT_EQ(X509_check_host(cert.get(), "custodian.example.com", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_TRUE(IsCritical(cert.get(), NID_basic_constraints));
  EXPECT_TRUE(IsCritical(cert.get(), NID_key_usage));
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(cert.get()), static_cast<uint32_t>(XKU_SSL_SERVER));
  ASSERT_NE(X509_get0_authority_key_id(cert.get()), nullptr);
  X509Ptr ca_cert = ParsePem(ca().CertificatePem());
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(cert.get()),
                                  X509_get0_subject_key_id(ca_cert.get())),
            0);
  EXPECT_NE(X509_get0_subject_key_id(cert.get()), nullptr);
  EXPECT_EQ(server->certificate.serial_hex, SerialHex(cert.get()));
  EXPECT_NEAR(static_cast<double>(SecondsFromNow(X509_get0_notAfter(cert.get()))),
              825.0 * kDaySeconds, 60.0);

  // The returned key is the certified one, and a P-256 PKCS#8 key.
  Result<crypto::P256PrivateKey> key =
      crypto::P256PrivateKey::FromPem(AsChars(server->key_pem.span()));
  ASSERT_TRUE(key.ok()) << key.error().ToString();
  EXPECT_EQ(X509_check_private_key(cert.get(), key->get()), 1);
  Result<bool> matches = CertificateMatchesKey(pem, *key);
  ASSERT_TRUE(matches.ok());
  EXPECT_TRUE(*matches);
  Result<crypto::P256PrivateKey> other = crypto::P256PrivateKey::Generate();
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(*CertificateMatchesKey(pem, *other));
}

TEST_F(CaTest, ServerCertificateWithOnlyAnAddressIsNamedAfterIt) {
  Result<CertificateAuthority::ServerIdentity> server = ca().IssueServer({}, {"192.0.2.1"}, 1);
  ASSERT_TRUE(server.ok()) << server.error().ToString();
  X509Ptr cert = ParsePem(server->certificate.pem);
  EXPECT_EQ(CommonName(cert.get()), "192.0.2.1");
  EXPECT_EQ(SubjectAltNames(cert.get()), (std::set<std::string>{"IP:192.0.2.1"}));
}

TEST_F(CaTest, IssueServerRejectsBadNamesAddressesAndValidity) {
  ExpectError(ca().IssueServer({}, {}, 1).error(), StatusCode::kInvalidArgument, "at least one");
  for (const char* dns :
       {"", "bad_name", "*.example.com", "a..b", ".example.com", "example.com.", "-a.example.com",
        "a-.example.com", "a b", "exa\nmple", "1.2.3.4", "host,IP:1.2.3.4"}) {
    ExpectError(ca().IssueServer({dns}, {}, 1).error(), StatusCode::kInvalidArgument,
                "not a DNS host name");
  }
  ExpectError(ca().IssueServer({std::string(64, 'a') + ".com"}, {}, 1).error(),
              StatusCode::kInvalidArgument, "1..63");
  for (const char* ip : {"", "1.2.3", "1.2.3.4x", "300.1.1.1", "localhost", "1.2.3.4/24", "::g"}) {
    ExpectError(ca().IssueServer({"ok.example"}, {ip}, 1).error(), StatusCode::kInvalidArgument,
                "not an IPv4 or IPv6 address");
  }
  ExpectError(ca().IssueServer({"ok.example"}, {std::string("1.2.3.4\0x", 9)}, 1).error(),
              StatusCode::kInvalidArgument, "NUL");
  for (int days : {0, -1, 7301}) {
    ExpectError(ca().IssueServer({"ok.example"}, {}, days).error(), StatusCode::kInvalidArgument,
                "1..7300 days");
  }
  EXPECT_TRUE(ca().IssueServer({"ok.example"}, {}, 7300).ok());
}

TEST_F(CaTest, DeviceCertificateVerifiesForSslClientWithTheDeviceIdAsCn) {
  EvpPkeyPtr key = EcKey("P-256");
  Result<IssuedCertificate> issued = ca().IssueDevice(SpkiDer(key.get()), kDeviceId, 90);
  ASSERT_TRUE(issued.ok()) << issued.error().ToString();

  EXPECT_EQ(VerifyAgainst(ca().CertificatePem(), issued->pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  // clientAuth only: a device certificate cannot pose as a server.
  EXPECT_NE(VerifyAgainst(ca().CertificatePem(), issued->pem, X509_PURPOSE_SSL_SERVER), X509_V_OK);
  EXPECT_TRUE(ca().Verify(issued->pem, CertificateUse::kClient).ok());
  ExpectError(ca().Verify(issued->pem, CertificateUse::kServer), StatusCode::kUnauthenticated,
              "unsuitable certificate purpose");

  X509Ptr cert = ParsePem(issued->pem);
  ASSERT_TRUE(cert);
  EXPECT_EQ(CommonName(cert.get()), kDeviceId);
  EXPECT_EQ(X509_get_version(cert.get()), 2);
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_TRUE(IsCritical(cert.get(), NID_basic_constraints));
  EXPECT_TRUE(IsCritical(cert.get(), NID_key_usage));
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
  EXPECT_EQ(X509_get_extended_key_usage(cert.get()), static_cast<uint32_t>(XKU_SSL_CLIENT));
  EXPECT_NE(X509_get0_subject_key_id(cert.get()), nullptr);
  EXPECT_NE(X509_get0_authority_key_id(cert.get()), nullptr);
  EXPECT_EQ(X509_get_ext_by_NID(cert.get(), NID_subject_alt_name, -1), -1);
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(cert.get()), key.get()), 1);
  EXPECT_EQ(X509_get_signature_nid(cert.get()), NID_ecdsa_with_SHA256);
  EXPECT_LE(SecondsFromNow(X509_get0_notBefore(cert.get())), -4 * 60);
  EXPECT_NEAR(static_cast<double>(SecondsFromNow(X509_get0_notAfter(cert.get()))),
              90.0 * kDaySeconds, 60.0);
}

TEST_F(CaTest, SerialsAreRandomPositiveAndDifferBetweenIssues) {
  std::set<std::string> serials;
  for (int i = 0; i < 8; ++i) {
    IssuedCertificate issued = IssueDevice();
    X509Ptr cert = ParsePem(issued.pem);
    ASSERT_TRUE(cert);
    const ASN1_INTEGER* serial = X509_get0_serialNumber(cert.get());
    EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);  // not V_ASN1_NEG_INTEGER
    EXPECT_EQ(issued.serial_hex, SerialHex(cert.get()));
    EXPECT_LE(issued.serial_hex.size(), 32u);
    EXPECT_NE(issued.serial_hex.front(), '0');
    EXPECT_EQ(issued.serial_hex.find_first_not_of("0123456789abcdef"), std::string::npos);
    serials.insert(issued.serial_hex);
  }
  EXPECT_EQ(serials.size(), 8u);
}

TEST_F(CaTest, IssueDeviceRejectsKeysOtherThanP256) {
  EvpPkeyPtr rsa(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}));
  EvpPkeyPtr ed25519(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  EvpPkeyPtr p384 = EcKey("P-384");
  EvpPkeyPtr k256 = EcKey("secp256k1");
  ExpectError(ca().IssueDevice(SpkiDer(rsa.get()), kDeviceId, 1).error(),
              StatusCode::kInvalidArgument, "must be EC P-256, found RSA");
  ExpectError(ca().IssueDevice(SpkiDer(ed25519.get()), kDeviceId, 1).error(),
              StatusCode::kInvalidArgument, "must be EC P-256, found ED25519");
  ExpectError(ca().IssueDevice(SpkiDer(p384.get()), kDeviceId, 1).error(),
              StatusCode::kInvalidArgument, "found curve secp384r1");
  ExpectError(ca().IssueDevice(SpkiDer(k256.get()), kDeviceId, 1).error(),
              StatusCode::kInvalidArgument, "found curve secp256k1");
}

TEST_F(CaTest, IssueDeviceRejectsGarbageSpki) {
  EvpPkeyPtr key = EcKey("P-256");
  Bytes spki = SpkiDer(key.get());
  ExpectError(ca().IssueDevice({}, kDeviceId, 1).error(), StatusCode::kInvalidArgument, "empty");
  Bytes garbage(91, 0x41);
  ExpectError(ca().IssueDevice(garbage, kDeviceId, 1).error(), StatusCode::kInvalidArgument,
              "not a DER SubjectPublicKeyInfo");
  for (size_t len = 1; len < spki.size(); ++len) {
    Result<IssuedCertificate> truncated =
        ca().IssueDevice(ByteSpan(spki.data(), len), kDeviceId, 1);
    EXPECT_EQ(truncated.error().code(), StatusCode::kInvalidArgument) << "length " << len;
  }
  Bytes trailing = spki;
  trailing.push_back(0);
  ExpectError(ca().IssueDevice(trailing, kDeviceId, 1).error(), StatusCode::kInvalidArgument,
              "bytes after");
  // A point that is not on the curve (last coordinate byte changed).
  Bytes off_curve = spki;
  off_curve.back() ^= 0x01;
  EXPECT_EQ(ca().IssueDevice(off_curve, kDeviceId, 1).error().code(), StatusCode::kInvalidArgument);
}

TEST_F(CaTest, IssueDeviceRejectsBadDeviceIdsAndValidity) {
  EvpPkeyPtr key = EcKey("P-256");
  Bytes spki = SpkiDer(key.get());
  const std::string hex32 = "0123456789abcdef0123456789abcdef";
  for (const std::string& id :
       {std::string(), std::string("dev_"), "dev_" + hex32.substr(1), "dev_" + hex32 + "0",
        std::string("dev_0123456789ABCDEF0123456789abcdef"), "DEV_" + hex32, "dev-" + hex32,
        "device_" + hex32, "dev_" + hex32.substr(1) + "g", "dev_" + hex32.substr(1) + "\n",
        " dev_" + hex32.substr(1)}) {
    ExpectError(ca().IssueDevice(spki, id, 1).error(), StatusCode::kInvalidArgument, "device id");
  }
  for (int days : {0, -5, 7301}) {
    ExpectError(ca().IssueDevice(spki, kDeviceId, days).error(), StatusCode::kInvalidArgument,
                "1..7300 days");
  }
}

TEST_F(CaTest, VerifyRefusesCertificatesOfAnotherCaAndGarbage) {
  Result<CertificateAuthority> other = CertificateAuthority::Create("Other CA");
  ASSERT_TRUE(other.ok());
  EvpPkeyPtr key = EcKey("P-256");
  Result<IssuedCertificate> foreign = other->IssueDevice(SpkiDer(key.get()), kDeviceId, 1);
  ASSERT_TRUE(foreign.ok());
  ExpectError(ca().Verify(foreign->pem, CertificateUse::kClient), StatusCode::kUnauthenticated,
              "unable to get local issuer certificate");
  EXPECT_NE(VerifyAgainst(ca().CertificatePem(), foreign->pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  ExpectError(ca().Verify("garbage", CertificateUse::kClient), StatusCode::kInvalidArgument,
              "not a PEM X.509 certificate");
}

TEST_F(CaTest, IssuingFromSeveralThreadsAtOnceWorks) {
  std::vector<std::string> pems(4);
  std::vector<std::thread> threads;
  for (std::string& pem : pems) {
    threads.emplace_back([&pem] {
      for (int i = 0; i < 5; ++i) pem = IssueDevice().pem;
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& pem : pems) {
    EXPECT_EQ(VerifyAgainst(ca().CertificatePem(), pem, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
  }
}

// The openssl command line tool agrees: what operators use to check a device by hand.
TEST_F(CaTest, OpensslVerifyAcceptsADeviceCertificateForSslClient) {
  std::string dir = ::testing::TempDir() + "ca_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  std::string ca_path = dir + "/ca.pem";
  std::string device_path = dir + "/device.pem";
  ASSERT_TRUE(WriteFileAtomic(ca_path, AsBytes(ca().CertificatePem())).ok());
  ASSERT_TRUE(WriteFileAtomic(device_path, AsBytes(IssueDevice().pem)).ok());

  auto run = [&](const char* purpose) {
    std::string command = "openssl verify -CAfile '" + ca_path + "' -purpose " + purpose + " '" +
                          device_path + "' 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    EXPECT_NE(pipe, nullptr);
    std::string output;
    char buf[256];
    while (pipe != nullptr && fgets(buf, sizeof(buf), pipe) != nullptr) output += buf;
    int status = pipe != nullptr ? pclose(pipe) : -1;
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, output);
  };
  auto [client_rc, client_out] = run("sslclient");
  EXPECT_EQ(client_rc, 0) << client_out;
  EXPECT_NE(client_out.find(": OK"), std::string::npos) << client_out;
  auto [server_rc, server_out] = run("sslserver");
  EXPECT_NE(server_rc, 0) << server_out;

  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

}  // namespace
}  // namespace custody::custodian
