#include "core/tpm/ek_cert.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"
#include "core/tpm/objects.h"
#include "tests/support/must.h"
#include "tests/support/unprivileged.h"

namespace custody::tpm {
namespace {

using crypto::EvpPkeyPtr;
using crypto::X509Ptr;
using std::chrono::days;
using std::chrono::sys_seconds;

constexpr int64_t kDaySeconds = 24 * 60 * 60;

struct CertSpec {
  std::string name;
  bool ca = false;
  int64_t not_before_days = -1;  // relative to now
  int64_t not_after_days = 365;
  std::vector<std::string> critical_oids;  // extensions OpenSSL does not know, marked critical
};

void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  EXPECT_EQ(X509_add_ext(cert, ext, -1), 1);
  X509_EXTENSION_free(ext);
}

void AddOpaqueCriticalExtension(X509* cert, const std::string& oid) {
  ASN1_OBJECT* obj = OBJ_txt2obj(oid.c_str(), /*no_name=*/1);
  ASN1_OCTET_STRING* value = ASN1_OCTET_STRING_new();
  const unsigned char der_null[] = {0x05, 0x00};
  ASSERT_TRUE(obj != nullptr && value != nullptr);
  ASSERT_EQ(ASN1_OCTET_STRING_set(value, der_null, sizeof(der_null)), 1);
  X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, obj, /*crit=*/1, value);
  ASSERT_NE(ext, nullptr);
  EXPECT_EQ(X509_add_ext(cert, ext, -1), 1);
  X509_EXTENSION_free(ext);
  ASN1_OCTET_STRING_free(value);
  ASN1_OBJECT_free(obj);
}

// Issues a certificate for `subject_key` (signed by `issuer_key`, self-signed when issuer is null).
X509Ptr Issue(const CertSpec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  static long serial = 1;
  X509Ptr cert(X509_new());
  EXPECT_TRUE(cert);
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_NAME* name = X509_get_subject_name(cert.get());
  // EK certificates usually have an empty subject (the TPM is named in subjectAltName).
  if (!spec.name.empty()) {
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(spec.name.c_str()), -1, -1,
                               0);
  }
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), spec.not_before_days * kDaySeconds);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), spec.not_after_days * kDaySeconds);
  X509_set_pubkey(cert.get(), subject_key);
  X509* issuer_cert = issuer != nullptr ? issuer : cert.get();
  if (spec.ca) {
    AddExtension(cert.get(), issuer_cert, NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(cert.get(), issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    // As TPM makers issue EK certificates (TCG EK Credential Profile).
    AddExtension(cert.get(), issuer_cert, NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(cert.get(), issuer_cert, NID_key_usage, "critical,keyEncipherment");
    AddExtension(cert.get(), issuer_cert, NID_ext_key_usage, "2.23.133.8.1");
  }
  AddExtension(cert.get(), issuer_cert, NID_subject_key_identifier, "hash");
  for (const std::string& oid : spec.critical_oids) AddOpaqueCriticalExtension(cert.get(), oid);
  EXPECT_GT(X509_sign(cert.get(), issuer_key, EVP_sha256()), 0);
  return cert;
}

Bytes Der(X509* cert) {
  int len = i2d_X509(cert, nullptr);
  Bytes out(static_cast<size_t>(len));
  unsigned char* p = out.data();
  EXPECT_EQ(i2d_X509(cert, &p), len);
  return out;
}

std::string Pem(X509* cert) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_X509(bio.get(), cert), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

EvpPkeyPtr EcKey() { return EvpPkeyPtr(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")); }

Bytes EccEkPublic(EVP_PKEY* key) {
  BIGNUM* x = nullptr;
  BIGNUM* y = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y), 1);
  crypto::BignumPtr x_owner(x), y_owner(y);
  TPMT_PUBLIC ek = EkTemplate(EkType::kEcc);
  EXPECT_EQ(BN_bn2binpad(x, ek.unique.ecc.x.buffer, 32), 32);
  EXPECT_EQ(BN_bn2binpad(y, ek.unique.ecc.y.buffer, 32), 32);
  return *MarshalPublic2B(ek);
}

Bytes RsaEkPublic(EVP_PKEY* key) {
  BIGNUM* n = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n), 1);
  crypto::BignumPtr owner(n);
  TPMT_PUBLIC ek = EkTemplate(EkType::kRsa);
  EXPECT_EQ(BN_bn2binpad(n, ek.unique.rsa.buffer, 256), 256);
  return *MarshalPublic2B(ek);
}

void ExpectError(const Status& status, StatusCode code, std::string_view needle) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << status.message() << "' does not mention '" << needle << "'";
}

// A TPM maker's PKI in a temp dir: root (PEM) -> intermediate (DER) -> EK certificate.
class EkCertTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ek_key_ = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
  }
  static void TearDownTestSuite() {
    EVP_PKEY_free(rsa_ek_key_);
    rsa_ek_key_ = nullptr;
  }

  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "ekcert.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    ca_dir_ = dir_ + "/ca";
    std::filesystem::create_directory(ca_dir_);
    root_key_ = EcKey();
    intermediate_key_ = EcKey();
    ek_key_ = EcKey();
    ASSERT_TRUE(root_key_ && intermediate_key_ && ek_key_ && rsa_ek_key_);
    root_ = Issue({"TPM Maker Root", true, -30, 3650}, root_key_.get(), nullptr, root_key_.get());
    intermediate_ = Issue({"TPM Maker EK CA", true, -30, 3650}, intermediate_key_.get(),
                          root_.get(), root_key_.get());
    WriteCa("root.pem", AsBytes(Pem(root_.get())));
    WriteCa("intermediate.der", Der(intermediate_.get()));
    ek_public_ = EccEkPublic(ek_key_.get());
  }

  void TearDown() override { std::filesystem::remove_all(dir_); }

  void WriteCa(const std::string& file, ByteSpan bytes) {
    ASSERT_TRUE(WriteFileAtomic(ca_dir_ + "/" + file, bytes, {0644, Overwrite::kAllow}).ok());
  }

  // An EK certificate as a TPM maker issues it: TCG extensions marked critical included.
  Bytes EkCert(EVP_PKEY* key, CertSpec spec = {"", false, -1, 365, {"2.5.29.9", "2.23.133.2.16"}}) {
    return Der(Issue(spec, key, intermediate_.get(), intermediate_key_.get()).get());
  }

  Status Verify(ByteSpan cert, ByteSpan ek_public, std::optional<sys_seconds> now = std::nullopt) {
    return VerifyEkCertificate(cert, ek_public, ca_dir_, now);
  }

  static EVP_PKEY* rsa_ek_key_;
  std::string dir_;
  std::string ca_dir_;
  EvpPkeyPtr root_key_, intermediate_key_, ek_key_;
  X509Ptr root_, intermediate_;
  Bytes ek_public_;
};

EVP_PKEY* EkCertTest::rsa_ek_key_ = nullptr;

sys_seconds Now() {
  return std::chrono::time_point_cast<std::chrono::seconds>(std::chrono::system_clock::now());
}

TEST_F(EkCertTest, AcceptsAnEccEkCertificateChainingToTheRoot) {
  Status st = Verify(EkCert(ek_key_.get()), ek_public_);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(EkCertTest, AcceptsAnRsaEkCertificate) {
  Status st = Verify(EkCert(rsa_ek_key_), RsaEkPublic(rsa_ek_key_));
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(EkCertTest, ReadsPemBundlesAndIgnoresFilesWithoutCertificates) {
  std::filesystem::remove(ca_dir_ + "/root.pem");
  std::filesystem::remove(ca_dir_ + "/intermediate.der");
  std::string bundle = Pem(intermediate_.get()) + "\n" + Pem(root_.get());
  WriteCa("bundle.crt", AsBytes(bundle));
  WriteCa("root-copy.pem", AsBytes(Pem(root_.get())));  // the same root twice is harmless
  WriteCa("README", AsBytes("TPM maker roots, refreshed yearly\n"));
  WriteCa("signkey.pem", AsBytes("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
  WriteCa("certserial", AsBytes("7"));
  std::filesystem::create_directory(ca_dir_ + "/subdir");
  Status st = Verify(EkCert(ek_key_.get()), ek_public_);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(EkCertTest, RejectsACertificateFromAnotherCa) {
  EvpPkeyPtr rogue_key = EcKey();
  X509Ptr rogue =
      Issue({"TPM Maker EK CA", true, -30, 3650}, rogue_key.get(), nullptr, rogue_key.get());
  Bytes cert =
      Der(Issue({"", false, -1, 365, {}}, ek_key_.get(), rogue.get(), rogue_key.get()).get());
  ExpectError(Verify(cert, ek_public_), StatusCode::kUnauthenticated,
              "does not chain to a trusted TPM maker CA");
  // Trusting only another maker's root refuses this maker's certificates.
  std::filesystem::remove(ca_dir_ + "/root.pem");
  std::filesystem::remove(ca_dir_ + "/intermediate.der");
  WriteCa("other.pem", AsBytes(Pem(rogue.get())));
  ExpectError(Verify(EkCert(ek_key_.get()), ek_public_), StatusCode::kUnauthenticated,
              "does not chain");
}

TEST_F(EkCertTest, RequiresTheChainToEndAtARoot) {
  std::filesystem::remove(ca_dir_ + "/root.pem");
  ExpectError(Verify(EkCert(ek_key_.get()), ek_public_), StatusCode::kUnauthenticated,
              "does not chain");
}

TEST_F(EkCertTest, AnEkCertificateCannotIssueAnother) {
  X509Ptr ek_cert = Issue({"EK", false, -1, 365, {}}, ek_key_.get(), intermediate_.get(),
                          intermediate_key_.get());
  WriteCa("ek-as-ca.pem", AsBytes(Pem(ek_cert.get())));
  EvpPkeyPtr victim = EcKey();
  Bytes forged =
      Der(Issue({"", false, -1, 365, {}}, victim.get(), ek_cert.get(), ek_key_.get()).get());
  ExpectError(Verify(forged, EccEkPublic(victim.get())), StatusCode::kUnauthenticated,
              "does not chain");
}

TEST_F(EkCertTest, RejectsAnExpiredOrNotYetValidCertificate) {
  Bytes cert = EkCert(ek_key_.get());
  ExpectError(Verify(cert, ek_public_, Now() + days(400)), StatusCode::kUnauthenticated,
              "certificate has expired");
  ExpectError(Verify(cert, ek_public_, Now() - days(30)), StatusCode::kUnauthenticated,
              "not yet valid");
  EXPECT_TRUE(Verify(cert, ek_public_, Now() + days(300)).ok());
}

TEST_F(EkCertTest, ChecksValidityAtTheGivenTimeNotTheClock) {
  Bytes old = EkCert(ek_key_.get(), {"", false, -20, -10, {"2.23.133.2.16"}});
  ExpectError(Verify(old, ek_public_), StatusCode::kUnauthenticated, "expired");
  Status st = Verify(old, ek_public_, Now() - days(15));
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST_F(EkCertTest, RejectsACertificateForAnotherKey) {
  EvpPkeyPtr other = EcKey();
  ExpectError(Verify(EkCert(other.get()), ek_public_), StatusCode::kUnauthenticated,
              "for another key");
  ExpectError(Verify(EkCert(rsa_ek_key_), ek_public_), StatusCode::kUnauthenticated,
              "for another key");
  ExpectError(Verify(EkCert(ek_key_.get()), RsaEkPublic(rsa_ek_key_)), StatusCode::kUnauthenticated,
              "for another key");
}

TEST_F(EkCertTest, ToleratesOnlyTcgCriticalExtensionsAndOnlyOnTheEkCertificate) {
  // A critical extension nobody defined for EK certificates still fails the chain.
  Bytes unknown = EkCert(ek_key_.get(), {"", false, -1, 365, {"1.3.6.1.4.1.55555.1"}});
  ExpectError(Verify(unknown, ek_public_), StatusCode::kUnauthenticated,
              "unhandled critical extension");
  // A CA certificate must be fully understood, TCG extension or not.
  EvpPkeyPtr ca_key = EcKey();
  X509Ptr odd_ca = Issue({"Odd CA", true, -30, 3650, {"2.23.133.2.16"}}, ca_key.get(), root_.get(),
                         root_key_.get());
  WriteCa("odd-ca.pem", AsBytes(Pem(odd_ca.get())));
  Bytes cert =
      Der(Issue({"", false, -1, 365, {}}, ek_key_.get(), odd_ca.get(), ca_key.get()).get());
  ExpectError(Verify(cert, ek_public_), StatusCode::kUnauthenticated,
              "unhandled critical extension");
}

TEST_F(EkCertTest, RejectsGarbageAndTrailingBytesButAcceptsNvPadding) {
  Bytes cert = EkCert(ek_key_.get());
  ExpectError(Verify(AsBytes("not a certificate"), ek_public_), StatusCode::kInvalidArgument,
              "not a DER X.509 certificate");
  ExpectError(Verify({}, ek_public_), StatusCode::kInvalidArgument, "EK certificate");
  ExpectError(Verify(ByteSpan(cert).first(cert.size() - 1), ek_public_),
              StatusCode::kInvalidArgument, "not a DER X.509 certificate");
  Bytes trailing = cert;
  AppendBytes(trailing, AsBytes("xyz"));
  ExpectError(Verify(trailing, ek_public_), StatusCode::kInvalidArgument, "unexpected bytes");
  for (uint8_t pad : {0x00, 0xff}) {
    Bytes padded = cert;
    padded.resize(cert.size() + 100, pad);
    Status st = Verify(padded, ek_public_);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  ExpectError(Verify(cert, AsBytes("junk")), StatusCode::kInvalidArgument, "EK public");
}

TEST_F(EkCertTest, ReportsAnUnusableCaDirectory) {
  Bytes cert = EkCert(ek_key_.get());
  ExpectError(VerifyEkCertificate(cert, ek_public_, dir_ + "/missing"), StatusCode::kNotFound,
              dir_ + "/missing");
  std::filesystem::create_directory(dir_ + "/empty");
  ExpectError(VerifyEkCertificate(cert, ek_public_, dir_ + "/empty"), StatusCode::kNotFound,
              "holds no certificates");
  ExpectError(VerifyEkCertificate(cert, ek_public_, ca_dir_ + "/root.pem"), StatusCode::kNotFound,
              "not a directory");
  WriteCa("broken.pem",
          AsBytes("-----BEGIN CERTIFICATE-----\nMIIBnotbase64!!\n-----END CERTIFICATE-----\n"));
  ExpectError(Verify(cert, ek_public_), StatusCode::kInvalidArgument, "broken.pem");
}

TEST_F(EkCertTest, ReportsAnUnreadableCaDirectory) {
  // Root reads any directory: an ordinary user (nobody, when the suite runs as root) verifies.
  const Bytes cert = EkCert(ek_key_.get());
  auto verify = [&] {
    return MUST(testing::AsUnprivilegedUser([&] { return Verify(cert, ek_public_).ToString(); }));
  };
  testing::LetOthersThrough(dir_);
  std::filesystem::permissions(ca_dir_, std::filesystem::perms::all);
  EXPECT_EQ(verify(), "ok") << "the control: the user may read the directory";
  std::filesystem::permissions(ca_dir_, std::filesystem::perms::none);
  const std::string refused = verify();
  std::filesystem::permissions(ca_dir_, std::filesystem::perms::owner_all);
  EXPECT_TRUE(refused.starts_with("permission_denied: ")) << refused;
  EXPECT_NE(refused.find(ca_dir_), std::string::npos) << refused;
}

}  // namespace
}  // namespace custody::tpm
