#include "core/tpm/ek_cert.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <climits>
#include <ctime>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

constexpr uint64_t kMaxCaFileBytes = 1 << 20;
constexpr std::string_view kPemBegin = "-----BEGIN";
// Critical extensions OpenSSL does not process that EK certificates legitimately carry (TCG EK
// Credential Profile): subjectDirectoryAttributes holds the TPM specification and security
// assertions, and the TCG arc holds TCG-defined extensions. Neither restricts what the
// certificate may be used for in a way that matters to us: we check only that the certificate
// chains to a trusted maker CA and names this EK.
constexpr std::string_view kSubjectDirectoryAttributesOid = "2.5.29.9";
constexpr std::string_view kTcgOidArc = "2.23.133.";

bool IsTolerableCriticalExtension(X509_EXTENSION* ext) {
  char oid[128];
  int len = OBJ_obj2txt(oid, sizeof(oid), X509_EXTENSION_get_object(ext), /*no_name=*/1);
  if (len <= 0 || static_cast<size_t>(len) >= sizeof(oid)) return false;
  std::string_view text(oid, static_cast<size_t>(len));
  return text == kSubjectDirectoryAttributesOid || text.rfind(kTcgOidArc, 0) == 0;
}

// OpenSSL refuses any certificate with a critical extension it does not implement. That is right
// for CA certificates, which must be understood completely, but EK certificates from TPM makers
// mark TCG-specific extensions critical. So the refusal is overridden only for the EK
// certificate itself (depth 0) and only when every unhandled critical extension is one of the
// TCG ones above; anything else still fails the chain.
int TolerateTcgCriticalExtensions(int ok, X509_STORE_CTX* ctx) {
  if (ok == 1) return 1;
  if (X509_STORE_CTX_get_error(ctx) != X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION ||
      X509_STORE_CTX_get_error_depth(ctx) != 0) {
    return 0;
  }
  X509* cert = X509_STORE_CTX_get_current_cert(ctx);
  if (cert == nullptr) return 0;
  for (int i = 0; i < X509_get_ext_count(cert); ++i) {
    X509_EXTENSION* ext = X509_get_ext(cert, i);
    if (X509_EXTENSION_get_critical(ext) == 1 && X509_supported_extension(ext) == 0 &&
        !IsTolerableCriticalExtension(ext)) {
      return 0;
    }
  }
  X509_STORE_CTX_set_error(ctx, X509_V_OK);
  return 1;
}

// Some TPM makers size the EK certificate's NV index larger than the certificate and pad the rest
// with 0x00 or 0xFF; that padding is not part of the certificate. Any other trailing byte is.
bool IsNvPadding(ByteSpan tail) {
  return std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0x00; }) ||
         std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0xff; });
}

Result<crypto::X509Ptr> ParseEkCertificate(ByteSpan der) {
  if (der.empty() || der.size() > static_cast<size_t>(LONG_MAX)) {
    return InvalidArgument("EK certificate: no bytes");
  }
  const unsigned char* p = der.data();
  crypto::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) {
    ERR_clear_error();
    return InvalidArgument("EK certificate is not a DER X.509 certificate");
  }
  size_t used = static_cast<size_t>(p - der.data());
  if (used != der.size() && !IsNvPadding(der.subspan(used))) {
    return InvalidArgument("EK certificate is followed by " + std::to_string(der.size() - used) +
                           " unexpected bytes");
  }
  return cert;
}

// Adds every certificate in `bytes` (PEM, any number of blocks, or one DER certificate) to the
// store; returns how many. A file that holds no certificate (a key, a serial number file, a
// README) adds none: it grants no trust, so ignoring it is safe. A PEM certificate block that
// does not parse is an error, since the operator meant it to be trusted.
Result<size_t> AddCertificates(X509_STORE* store, ByteSpan bytes, const std::string& path) {
  std::vector<crypto::X509Ptr> certs;
  std::string_view text = AsChars(bytes);
  if (text.find(kPemBegin) != std::string_view::npos) {
    if (bytes.size() > static_cast<size_t>(INT_MAX)) return InvalidArgument(path + " is too large");
    crypto::BioPtr bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    if (!bio) return Internal("BIO_new_mem_buf: " + crypto::OpenSslErrors());
    while (true) {
      // _AUX also reads "TRUSTED CERTIFICATE" blocks; blocks of other types are skipped.
      crypto::X509Ptr cert(PEM_read_bio_X509_AUX(bio.get(), nullptr, nullptr, nullptr));
      if (!cert) break;
      certs.push_back(std::move(cert));
    }
    unsigned long err = ERR_peek_last_error();
    if (ERR_GET_LIB(err) == ERR_LIB_PEM && ERR_GET_REASON(err) == PEM_R_NO_START_LINE) {
      ERR_clear_error();  // the normal end of the file
    } else if (err != 0) {
      return InvalidArgument(path + ": a PEM certificate does not parse (" +
                             crypto::OpenSslErrors() + ")");
    }
  } else {
    const unsigned char* p = bytes.data();
    crypto::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(bytes.size())));
    if (cert && p == bytes.data() + bytes.size()) certs.push_back(std::move(cert));
    ERR_clear_error();
  }
  for (const crypto::X509Ptr& cert : certs) {
    // Adding a certificate that is already in the store succeeds (OpenSSL 3 ignores duplicates),
    // so a hash-named link next to its target is harmless.
    if (X509_STORE_add_cert(store, cert.get()) != 1) {
      return Internal("X509_STORE_add_cert(" + path + "): " + crypto::OpenSslErrors());
    }
  }
  return certs.size();
}

Result<crypto::X509StorePtr> LoadTrustStore(const std::string& ca_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator it(ca_dir, ec);
  if (ec) {
    if (ec.value() == ENOTDIR) return NotFound("EK CA directory " + ca_dir + " is not a directory");
    return ErrnoStatus(ec.value(), "EK CA directory " + ca_dir);
  }
  std::vector<std::string> files;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) return ErrnoStatus(ec.value(), "EK CA directory " + ca_dir);
    std::error_code type_ec;
    if (it->is_regular_file(type_ec)) files.push_back(it->path().string());
  }
  if (ec) return ErrnoStatus(ec.value(), "EK CA directory " + ca_dir);
  std::sort(files.begin(), files.end());

  crypto::X509StorePtr store(X509_STORE_new());
  if (!store) return Internal("X509_STORE_new: " + crypto::OpenSslErrors());
  size_t total = 0;
  for (const std::string& path : files) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes bytes, ReadFile(path, kMaxCaFileBytes));
    CUSTODY_ASSIGN_OR_RETURN(size_t added, AddCertificates(store.get(), bytes, path));
    total += added;
  }
  if (total == 0) return NotFound("EK CA directory " + ca_dir + " holds no certificates");
  return store;
}

// The EK as an OpenSSL key, for comparison with the certificate's key.
Result<crypto::EvpPkeyPtr> EkKey(const TPMT_PUBLIC& ek) {
  if (ek.type == TPM2_ALG_ECC) {
    CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey key, EccPublicKey(ek));
    crypto::EvpPkeyPtr copy(EVP_PKEY_dup(key.get()));
    if (!copy) return Internal("EVP_PKEY_dup: " + crypto::OpenSslErrors());
    return copy;
  }
  if (ek.type == TPM2_ALG_RSA) {
    return RsaPublicKeyFromTpm(ByteSpan(ek.unique.rsa.buffer, ek.unique.rsa.size),
                               ek.parameters.rsaDetail.exponent);
  }
  return InvalidArgument("EK public: key type is neither ECC nor RSA");
}

}  // namespace

Status VerifyEkCertificate(ByteSpan ek_cert, ByteSpan ek_public, const std::string& ca_dir,
                           std::optional<std::chrono::sys_seconds> now) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509Ptr cert, ParseEkCertificate(ek_cert));
  Result<TPMT_PUBLIC> ek = UnmarshalPublic2B(ek_public);
  if (!ek) return ek.error().WithContext("EK public");
  Result<crypto::EvpPkeyPtr> ek_key = EkKey(*ek);
  if (!ek_key) return ek_key.error().WithContext("EK public");
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509StorePtr store, LoadTrustStore(ca_dir));

  crypto::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return Internal("X509_STORE_CTX_init: " + crypto::OpenSslErrors());
  }
  X509_STORE_CTX_set_verify_cb(ctx.get(), TolerateTcgCriticalExtensions);
  if (now.has_value()) {
    X509_STORE_CTX_set_time(ctx.get(), 0, static_cast<time_t>(now->time_since_epoch().count()));
  }
  int verified = X509_verify_cert(ctx.get());
  if (verified != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Unauthenticated("EK certificate does not chain to a trusted TPM maker CA in " + ca_dir +
                           ": " + X509_verify_cert_error_string(err) + " (at depth " +
                           std::to_string(X509_STORE_CTX_get_error_depth(ctx.get())) + ")");
  }

  EVP_PKEY* cert_key = X509_get0_pubkey(cert.get());
  if (cert_key == nullptr) {
    ERR_clear_error();
    return Unauthenticated("EK certificate's public key cannot be read");
  }
  if (EVP_PKEY_eq(cert_key, ek_key->get()) != 1) {
    ERR_clear_error();
    return Unauthenticated("EK certificate is for another key than the EK the device presented");
  }
  return OkStatus();
}

namespace {

std::string NameText(const X509_NAME* name) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return "?";
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

}  // namespace

Result<EkCertificateSummary> DescribeEkCertificate(ByteSpan ek_cert) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::X509Ptr cert, ParseEkCertificate(ek_cert));
  EkCertificateSummary out;
  out.subject = NameText(X509_get_subject_name(cert.get()));
  out.issuer = NameText(X509_get_issuer_name(cert.get()));
  struct tm tm {};
  if (ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm) == 1) {
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    out.not_after = buf;
  }
  return out;
}

}  // namespace custody::tpm
