#include "http/test_pki.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"

namespace custody::http::testing {
namespace {

using crypto::BioPtr;
using crypto::EvpPkeyPtr;
using crypto::X509ExtensionPtr;
using crypto::X509Ptr;

void Check(bool ok, const char* what) {
  if (!ok) Panic(std::string("test PKI: ") + what + ": " + crypto::OpenSslErrors());
}

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

EvpPkeyPtr ReadKey(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  Check(key != nullptr, "read key");
  return key;
}

X509Ptr ReadCert(const std::string& pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  Check(cert != nullptr, "read certificate");
  return cert;
}

void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  Check(ext != nullptr, "make extension");
  Check(X509_add_ext(cert, ext.get(), -1) == 1, "add extension");
}

}  // namespace

KeyAndCert Issue(const CertSpec& spec, const KeyAndCert* issuer) {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  Check(key != nullptr, "generate key");
  X509Ptr cert(X509_new());
  Check(cert != nullptr, "X509_new");
  Check(X509_set_version(cert.get(), 2) == 1, "set version");
  static long serial = 1;
  Check(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++) == 1, "set serial");
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), static_cast<long>(spec.not_before.count()));
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(spec.not_after.count()));
  X509_NAME* name = X509_get_subject_name(cert.get());
  Check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(spec.common_name.c_str()),
                                   -1, -1, 0) == 1,
        "set CN");
  Check(X509_set_pubkey(cert.get(), key.get()) == 1, "set public key");

  X509Ptr issuer_cert = issuer != nullptr ? ReadCert(issuer->cert_pem) : nullptr;
  EvpPkeyPtr issuer_key = issuer != nullptr ? ReadKey(issuer->key_pem) : nullptr;
  X509* signer_cert = issuer != nullptr ? issuer_cert.get() : cert.get();
  EVP_PKEY* signer_key = issuer != nullptr ? issuer_key.get() : key.get();
  Check(X509_set_issuer_name(cert.get(), X509_get_subject_name(signer_cert)) == 1, "set issuer");

  AddExtension(cert.get(), signer_cert, NID_subject_key_identifier, "hash");
  if (spec.is_ca) {
    AddExtension(cert.get(), signer_cert, NID_basic_constraints, "critical,CA:TRUE");
    AddExtension(cert.get(), signer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    AddExtension(cert.get(), signer_cert, NID_basic_constraints, "critical,CA:FALSE");
    AddExtension(cert.get(), signer_cert, NID_key_usage, "critical,digitalSignature");
    AddExtension(cert.get(), signer_cert, NID_authority_key_identifier, "keyid");
  }
  if (spec.server) {
    AddExtension(cert.get(), signer_cert, NID_ext_key_usage, "serverAuth");
    AddExtension(cert.get(), signer_cert, NID_subject_alt_name,
                 "IP:127.0.0.1,IP:::1,DNS:localhost");
  }
  if (spec.client) AddExtension(cert.get(), signer_cert, NID_ext_key_usage, "clientAuth");
  Check(X509_sign(cert.get(), signer_key, EVP_sha256()) > 0, "sign");

  BioPtr cert_bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_X509(cert_bio.get(), cert.get()) == 1, "write certificate");
  BioPtr key_bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) ==
            1,
        "write key");
  return {BioText(cert_bio.get()), BioText(key_bio.get())};
}

const TestPki& Pki() {
  static const TestPki pki = [] {
    TestPki p;
    p.ca = Issue({.common_name = "Custody Test CA", .is_ca = true}, nullptr);
    p.other_ca = Issue({.common_name = "Other CA", .is_ca = true}, nullptr);
    p.server = Issue({.common_name = "custodian", .server = true}, &p.ca);
    p.device = Issue({.common_name = "device-0001", .client = true}, &p.ca);
    p.device_other_ca = Issue({.common_name = "device-0001", .client = true}, &p.other_ca);
    p.device_expired = Issue({.common_name = "device-0002",
                              .client = true,
                              .not_before = std::chrono::seconds(-7200),
                              .not_after = std::chrono::seconds(-3600)},
                             &p.ca);
    return p;
  }();
  return pki;
}

}  // namespace custody::http::testing
