#include "custodian/ca.h"

#include <arpa/inet.h>
#include <openssl/asn1.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <climits>
#include <span>
#include <utility>

#include "core/crypto/openssl_ptr.h"

namespace custody::custodian {
namespace {

using crypto::OpenSslErrors;

// Validity limits. The CA lives for the longest period a certificate may have, so that nothing it
// issues can outlive it by construction of the check below.
constexpr int kMaxValidityDays = 7300;  // 20 years
constexpr int kCaValidityDays = kMaxValidityDays;
// notBefore is backdated so that a device whose clock is a little behind accepts a certificate
// issued a moment ago (and the custodian accepts a device certificate the same way).
constexpr long kClockSkewSeconds = 5 * 60;
constexpr int kSerialBits = 128;
// RFC 5280 ub-common-name.
constexpr size_t kMaxCommonNameBytes = 64;
constexpr std::string_view kServerFallbackCommonName = "Custody custodian";
// Device ids: "dev_" ‖ 32 lower-case hex digits (128 random bits).
constexpr std::string_view kDeviceIdPrefix = "dev_";
constexpr size_t kDeviceIdHexDigits = 32;
// RFC 1035 / 1123 host names.
constexpr size_t kMaxDnsNameBytes = 253;
constexpr size_t kMaxDnsLabelBytes = 63;

// An extension in X509V3_EXT_conf_nid's syntax. Only these fixed strings go through that
// parser; names and addresses from callers are encoded with the typed API (SubjectAltNames) so
// that no input can smuggle in extra extension syntax.
struct Extension {
  int nid;
  const char* value;
};

// subjectKeyIdentifier comes before authorityKeyIdentifier: for the self-signed CA the
// authority key id is read back from the subject key id just added.
constexpr std::array kCaExtensions = {
    Extension{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
    Extension{NID_key_usage, "critical,keyCertSign,cRLSign"},
    Extension{NID_subject_key_identifier, "hash"},
    Extension{NID_authority_key_identifier, "keyid:always"},
};
constexpr std::array kServerExtensions = {
    Extension{NID_basic_constraints, "critical,CA:FALSE"},
    Extension{NID_key_usage, "critical,digitalSignature"},
    Extension{NID_ext_key_usage, "serverAuth"},
    Extension{NID_subject_key_identifier, "hash"},
    Extension{NID_authority_key_identifier, "keyid:always"},
};
constexpr std::array kDeviceExtensions = {
    Extension{NID_basic_constraints, "critical,CA:FALSE"},
    Extension{NID_key_usage, "critical,digitalSignature"},
    Extension{NID_ext_key_usage, "clientAuth"},
    Extension{NID_subject_key_identifier, "hash"},
    Extension{NID_authority_key_identifier, "keyid:always"},
};

Status OpenSslFailure(std::string_view what) {
  std::string errors = OpenSslErrors();
  if (errors.empty()) errors = "no OpenSSL error queued";
  return Internal(std::string(what) + ": " + errors);
}

Status CheckDays(int days) {
  if (days < 1 || days > kMaxValidityDays) {
    return InvalidArgument("certificate validity must be 1.." + std::to_string(kMaxValidityDays) +
                           " days, got " + std::to_string(days));
  }
  return OkStatus();
}

Status CheckDeviceId(std::string_view id) {
  bool ok = id.size() == kDeviceIdPrefix.size() + kDeviceIdHexDigits &&
            id.starts_with(kDeviceIdPrefix) &&
            std::all_of(id.begin() + static_cast<std::ptrdiff_t>(kDeviceIdPrefix.size()), id.end(),
                        [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
  if (!ok) {
    // Device ids arrive from the network: say what is wrong without echoing them into logs.
    return InvalidArgument("device id must be \"dev_\" followed by 32 lower-case hex digits (got " +
                           std::to_string(id.size()) + " characters)");
  }
  return OkStatus();
}

bool IsIpv4Text(const std::string& text) {
  in_addr addr{};
  return inet_pton(AF_INET, text.c_str(), &addr) == 1;
}

Status CheckDnsName(const std::string& name) {
  auto bad = [&name](std::string_view why) {
    return InvalidArgument("\"" + name.substr(0, 80) +
                           "\" is not a DNS host name: " + std::string(why));
  };
  if (name.empty() || name.size() > kMaxDnsNameBytes) return bad("it must be 1..253 characters");
  if (IsIpv4Text(name)) return bad("it is an IP address; pass it as one");
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = std::min(name.find('.', start), name.size());
    std::string_view label(name.data() + start, end - start);
    if (label.empty() || label.size() > kMaxDnsLabelBytes) {
      return bad("every dot-separated label must be 1..63 characters");
    }
    if (label.front() == '-' || label.back() == '-') return bad("a label starts or ends with '-'");
    for (char c : label) {
      bool ok =
          (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return bad("only letters, digits, '-' and '.' are allowed (no wildcards)");
    }
    start = end + 1;
  }
  return OkStatus();
}

// The 4 or 16 bytes of an IPv4 or IPv6 address in text form (inet_pton: strict, no trailing
// characters, unlike a2i_IPADDRESS's sscanf).
Result<Bytes> ParseIpAddress(const std::string& text) {
  std::array<uint8_t, 16> buf{};
  if (text.find('\0') != std::string::npos) return InvalidArgument("an IP address contains NUL");
  if (inet_pton(AF_INET, text.c_str(), buf.data()) == 1) return Bytes(buf.begin(), buf.begin() + 4);
  if (inet_pton(AF_INET6, text.c_str(), buf.data()) == 1) return Bytes(buf.begin(), buf.end());
  return InvalidArgument("\"" + text.substr(0, 80) + "\" is not an IPv4 or IPv6 address");
}

Status PushGeneralName(GENERAL_NAMES* names, int type, crypto::Asn1StringPtr value) {
  crypto::GeneralNamePtr name(GENERAL_NAME_new());
  if (!name) return OpenSslFailure("GENERAL_NAME_new");
  GENERAL_NAME_set0_value(name.get(), type, value.release());
  if (sk_GENERAL_NAME_push(names, name.get()) <= 0) return OpenSslFailure("sk_GENERAL_NAME_push");
  name.release();  // now owned by `names`
  return OkStatus();
}

Result<crypto::Asn1StringPtr> Asn1String(crypto::Asn1StringPtr str, ByteSpan bytes) {
  if (!str || ASN1_STRING_set(str.get(), bytes.data(), static_cast<int>(bytes.size())) != 1) {
    return OpenSslFailure("ASN1_STRING_set");
  }
  return str;
}

Result<crypto::GeneralNamesPtr> SubjectAltNames(const std::vector<std::string>& dns_names,
                                                const std::vector<std::string>& ip_addresses) {
  crypto::GeneralNamesPtr names(GENERAL_NAMES_new());
  if (!names) return OpenSslFailure("GENERAL_NAMES_new");
  for (const std::string& dns : dns_names) {
    CUSTODY_RETURN_IF_ERROR(CheckDnsName(dns));
    CUSTODY_ASSIGN_OR_RETURN(crypto::Asn1StringPtr value,
                             Asn1String(crypto::Asn1StringPtr(ASN1_IA5STRING_new()), AsBytes(dns)));
    CUSTODY_RETURN_IF_ERROR(PushGeneralName(names.get(), GEN_DNS, std::move(value)));
  }
  for (const std::string& ip : ip_addresses) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes raw, ParseIpAddress(ip));
    CUSTODY_ASSIGN_OR_RETURN(crypto::Asn1StringPtr value,
                             Asn1String(crypto::Asn1StringPtr(ASN1_OCTET_STRING_new()), raw));
    CUSTODY_RETURN_IF_ERROR(PushGeneralName(names.get(), GEN_IPADD, std::move(value)));
  }
  return names;
}

// A random positive serial of kSerialBits bits, never zero, written into `cert`. Returns it as
// lower-case hex without leading zeros.
Result<std::string> SetRandomSerial(X509* cert) {
  crypto::BignumPtr serial(BN_new());
  if (!serial) return OpenSslFailure("BN_new");
  do {
    if (BN_rand(serial.get(), kSerialBits, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1) {
      return OpenSslFailure("BN_rand");
    }
  } while (BN_is_zero(serial.get()));
  if (BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert)) == nullptr) {
    return OpenSslFailure("BN_to_ASN1_INTEGER");
  }
  Bytes bytes(static_cast<size_t>(BN_num_bytes(serial.get())));
  BN_bn2bin(serial.get(), bytes.data());
  std::string hex = HexEncode(bytes);
  hex.erase(0, std::min(hex.find_first_not_of('0'), hex.size() - 1));
  return hex;
}

Result<crypto::X509NamePtr> CommonNameOnly(std::string_view common_name) {
  bool printable = std::none_of(common_name.begin(), common_name.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
  if (common_name.empty() || common_name.size() > kMaxCommonNameBytes || !printable) {
    return InvalidArgument("a certificate common name must be 1..64 bytes of printable UTF-8");
  }
  crypto::X509NamePtr name(X509_NAME_new());
  if (!name) return OpenSslFailure("X509_NAME_new");
  if (X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.data()),
                                 static_cast<int>(common_name.size()), -1, 0) != 1) {
    ERR_clear_error();
    return InvalidArgument("a certificate common name must be 1..64 characters of valid UTF-8");
  }
  return name;
}

struct CertificateRequest {
  EVP_PKEY* subject_key = nullptr;  // its public half is certified
  std::string_view common_name;
  int days = 0;
  std::span<const Extension> extensions;
  GENERAL_NAMES* subject_alt_names = nullptr;  // optional
};

struct SignedCertificate {
  crypto::X509Ptr cert;
  std::string serial_hex;
};

// Builds and signs a certificate. `issuer` null means self-signed (the CA certificate).
Result<SignedCertificate> Sign(const CertificateRequest& request, X509* issuer,
                               EVP_PKEY* issuer_key) {
  CUSTODY_RETURN_IF_ERROR(CheckDays(request.days));
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509NamePtr subject, CommonNameOnly(request.common_name));
  SignedCertificate out;
  out.cert.reset(X509_new());
  X509* cert = out.cert.get();
  if (cert == nullptr) return OpenSslFailure("X509_new");
  CUSTODY_ASSIGN_OR_RETURN(out.serial_hex, SetRandomSerial(cert));
  const X509_NAME* issuer_name = issuer != nullptr ? X509_get_subject_name(issuer) : subject.get();
  if (X509_set_version(cert, 2) != 1 || X509_set_subject_name(cert, subject.get()) != 1 ||
      X509_set_issuer_name(cert, issuer_name) != 1 ||
      X509_gmtime_adj(X509_getm_notBefore(cert), -kClockSkewSeconds) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert), request.days, 0, nullptr) == nullptr ||
      X509_set_pubkey(cert, request.subject_key) != 1) {
    return OpenSslFailure("filling in the certificate");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert, cert, nullptr, nullptr, 0);
  for (const Extension& ext : request.extensions) {
    crypto::X509ExtensionPtr made(X509V3_EXT_conf_nid(nullptr, &ctx, ext.nid, ext.value));
    if (!made || X509_add_ext(cert, made.get(), -1) != 1) {
      return OpenSslFailure(std::string("adding extension ") + OBJ_nid2sn(ext.nid));
    }
  }
  if (request.subject_alt_names != nullptr &&
      X509_add1_ext_i2d(cert, NID_subject_alt_name, request.subject_alt_names, 0,
                        X509V3_ADD_APPEND) != 1) {
    return OpenSslFailure("adding extension subjectAltName");
  }
  if (X509_sign(cert, issuer_key, EVP_sha256()) <= 0) return OpenSslFailure("X509_sign");
  return out;
}

Result<std::string> ToPem(X509* cert) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return OpenSslFailure("PEM_write_bio_X509");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) return OpenSslFailure("PEM_write_bio_X509 produced no output");
  return std::string(data, static_cast<size_t>(len));
}

Result<IssuedCertificate> ToIssued(SignedCertificate signed_cert) {
  IssuedCertificate out;
  CUSTODY_ASSIGN_OR_RETURN(out.pem, ToPem(signed_cert.cert.get()));
  out.serial_hex = std::move(signed_cert.serial_hex);
  return out;
}

// Whether `cert` certifies the public half of `key`.
bool CertifiesKey(const X509* cert, const EVP_PKEY* key) {
  const EVP_PKEY* cert_key = X509_get0_pubkey(cert);
  bool match = cert_key != nullptr && key != nullptr && EVP_PKEY_eq(cert_key, key) == 1;
  ERR_clear_error();
  return match;
}

// The first certificate in `pem`.
Result<crypto::X509Ptr> ParseCertificatePem(std::string_view pem) {
  if (pem.size() > static_cast<size_t>(INT_MAX))
    return InvalidArgument("certificate PEM is too large");
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return OpenSslFailure("BIO_new_mem_buf");
  crypto::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return InvalidArgument("not a PEM X.509 certificate");
  }
  return cert;
}

// A SubjectPublicKeyInfo (DER) that must hold a P-256 public key, and nothing after it.
Result<crypto::EvpPkeyPtr> ParseP256Spki(ByteSpan spki_der) {
  if (spki_der.empty() || spki_der.size() > static_cast<size_t>(LONG_MAX)) {
    return InvalidArgument("device public key is empty");
  }
  const unsigned char* p = spki_der.data();
  crypto::EvpPkeyPtr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(spki_der.size())));
  if (!key) {
    ERR_clear_error();
    return InvalidArgument("device public key is not a DER SubjectPublicKeyInfo");
  }
  if (p != spki_der.data() + spki_der.size()) {
    return InvalidArgument("device public key has bytes after the SubjectPublicKeyInfo");
  }
  if (!EVP_PKEY_is_a(key.get(), "EC")) {
    return InvalidArgument(std::string("device public key must be EC P-256, found ") +
                           EVP_PKEY_get0_type_name(key.get()));
  }
  std::array<char, 64> group{};
  size_t group_len = 0;
  if (EVP_PKEY_get_utf8_string_param(key.get(), OSSL_PKEY_PARAM_GROUP_NAME, group.data(),
                                     group.size(), &group_len) != 1) {
    ERR_clear_error();
    return InvalidArgument("device public key is EC without a named curve; P-256 is required");
  }
  std::string_view curve(group.data(), group_len);
  if (curve != "prime256v1" && curve != "P-256") {
    return InvalidArgument("device public key must be on P-256, found curve " + std::string(curve));
  }
  return key;
}

}  // namespace

struct CertificateAuthority::Impl {
  crypto::P256PrivateKey key;
  crypto::X509Ptr cert;
  std::string cert_pem;
};

CertificateAuthority::CertificateAuthority(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  // Fill OpenSSL's per-certificate extension cache now, while one thread owns the object, so
  // that concurrent issuing and verifying only ever read it.
  X509_check_purpose(impl_->cert.get(), -1, 0);
}
CertificateAuthority::CertificateAuthority(CertificateAuthority&&) noexcept = default;
CertificateAuthority& CertificateAuthority::operator=(CertificateAuthority&&) noexcept = default;
CertificateAuthority::~CertificateAuthority() = default;

Result<CertificateAuthority> CertificateAuthority::Create(const std::string& name) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey key, crypto::P256PrivateKey::Generate());
  CertificateRequest request;
  request.subject_key = key.get();
  request.common_name = name;
  request.days = kCaValidityDays;
  request.extensions = kCaExtensions;
  CUSTODY_ASSIGN_OR_RETURN(SignedCertificate signed_cert, Sign(request, nullptr, key.get()));
  auto impl = std::make_unique<Impl>();
  CUSTODY_ASSIGN_OR_RETURN(impl->cert_pem, ToPem(signed_cert.cert.get()));
  impl->key = std::move(key);
  impl->cert = std::move(signed_cert.cert);
  return CertificateAuthority(std::move(impl));
}

Result<CertificateAuthority> CertificateAuthority::Load(std::string_view key_pem,
                                                        std::string_view cert_pem) {
  Result<crypto::P256PrivateKey> key = crypto::P256PrivateKey::FromPem(key_pem);
  if (!key) return key.error().WithContext("CA key");
  Result<crypto::X509Ptr> cert = ParseCertificatePem(cert_pem);
  if (!cert) return cert.error().WithContext("CA certificate");
  if (!CertifiesKey(cert->get(), key->get())) {
    return InvalidArgument("the CA certificate is not for the CA key (they come from two CAs)");
  }
  if (X509_check_ca(cert->get()) != 1) {
    return InvalidArgument("the CA certificate is not a CA certificate (basicConstraints CA:TRUE)");
  }
  if (X509_verify(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return InvalidArgument("the CA certificate's self-signature does not verify");
  }
  auto impl = std::make_unique<Impl>();
  CUSTODY_ASSIGN_OR_RETURN(impl->cert_pem, ToPem(cert->get()));
  impl->key = std::move(*key);
  impl->cert = std::move(*cert);
  return CertificateAuthority(std::move(impl));
}

Result<SecretBuffer> CertificateAuthority::KeyPem() const { return impl_->key.ToPem(); }

const std::string& CertificateAuthority::CertificatePem() const { return impl_->cert_pem; }

Status CertificateAuthority::Verify(std::string_view cert_pem, CertificateUse use) const {
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509Ptr cert, ParseCertificatePem(cert_pem));
  crypto::X509StorePtr store(X509_STORE_new());
  if (!store || X509_STORE_add_cert(store.get(), impl_->cert.get()) != 1) {
    return OpenSslFailure("building the CA trust store");
  }
  crypto::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return OpenSslFailure("X509_STORE_CTX_init");
  }
  X509_STORE_CTX_set_flags(ctx.get(), X509_V_FLAG_X509_STRICT);
  bool server = use == CertificateUse::kServer;
  if (X509_STORE_CTX_set_purpose(ctx.get(),
                                 server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT) != 1) {
    return OpenSslFailure("X509_STORE_CTX_set_purpose");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Unauthenticated(std::string("certificate does not verify as a TLS ") +
                           (server ? "server" : "client") +
                           " certificate of this CA: " + X509_verify_cert_error_string(err));
  }
  return OkStatus();
}

Result<CertificateAuthority::ServerIdentity> CertificateAuthority::IssueServer(
    const std::vector<std::string>& dns_names, const std::vector<std::string>& ip_addresses,
    int days) const {
  if (dns_names.empty() && ip_addresses.empty()) {
    return InvalidArgument("a server certificate needs at least one DNS name or IP address");
  }
  CUSTODY_RETURN_IF_ERROR(CheckDays(days));
  CUSTODY_ASSIGN_OR_RETURN(crypto::GeneralNamesPtr names, SubjectAltNames(dns_names, ip_addresses));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey key, crypto::P256PrivateKey::Generate());
  std::string_view common_name = dns_names.empty() ? ip_addresses.front() : dns_names.front();
  if (common_name.size() > kMaxCommonNameBytes) common_name = kServerFallbackCommonName;
  CertificateRequest request;
  request.subject_key = key.get();
  request.common_name = common_name;
  request.days = days;
  request.extensions = kServerExtensions;
  request.subject_alt_names = names.get();
  CUSTODY_ASSIGN_OR_RETURN(SignedCertificate signed_cert,
                           Sign(request, impl_->cert.get(), impl_->key.get()));
  ServerIdentity out;
  CUSTODY_ASSIGN_OR_RETURN(out.certificate, ToIssued(std::move(signed_cert)));
  CUSTODY_ASSIGN_OR_RETURN(out.key_pem, key.ToPem());
  return out;
}

Result<IssuedCertificate> CertificateAuthority::IssueDevice(ByteSpan spki_der,
                                                            const std::string& device_id,
                                                            int days) const {
  CUSTODY_RETURN_IF_ERROR(CheckDeviceId(device_id));
  CUSTODY_RETURN_IF_ERROR(CheckDays(days));
  CUSTODY_ASSIGN_OR_RETURN(crypto::EvpPkeyPtr device_key, ParseP256Spki(spki_der));
  CertificateRequest request;
  request.subject_key = device_key.get();
  request.common_name = device_id;
  request.days = days;
  request.extensions = kDeviceExtensions;
  CUSTODY_ASSIGN_OR_RETURN(SignedCertificate signed_cert,
                           Sign(request, impl_->cert.get(), impl_->key.get()));
  return ToIssued(std::move(signed_cert));
}

Result<bool> CertificateMatchesKey(std::string_view cert_pem, const crypto::P256PrivateKey& key) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509Ptr cert, ParseCertificatePem(cert_pem));
  return CertifiesKey(cert.get(), key.get());
}

}  // namespace custody::custodian
