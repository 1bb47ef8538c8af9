// The custodian's internal certificate authority (DESIGN.md §4, "Device TLS identity"): it
// issues the custodian's own server certificate and, at enrollment, each device's TLS client
// certificate, so that device endpoints are mutual TLS against a CA only the custodian controls.
//
// Keys: ECDSA P-256; certificates X.509 v3 signed with ECDSA-SHA256, random positive 128-bit
// serials. The CA certificate: CA:TRUE, pathlen 0, keyUsage keyCertSign|cRLSign, 20 years.
// Device certificates: CN = the device id, keyUsage digitalSignature, extendedKeyUsage
// clientAuth, CA:FALSE. Server certificates: subjectAltName DNS and IP entries, extendedKeyUsage
// serverAuth. All carry subjectKeyIdentifier and authorityKeyIdentifier.
//
// Threading: issuing is safe from several threads (the key is immutable after load).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::custodian {

// What a certificate is checked for: TLS server (extendedKeyUsage serverAuth) or client
// (clientAuth), as OpenSSL's sslserver and sslclient purposes define them.
enum class CertificateUse { kServer, kClient };

struct IssuedCertificate {
  std::string pem;
  std::string serial_hex;  // lower-case hex, no leading zeros
};

class CertificateAuthority {
 public:
  // A new CA with a fresh P-256 key; `name` (1..64 bytes of printable UTF-8) becomes the CA
  // certificate's CN.
  static Result<CertificateAuthority> Create(const std::string& name);
  // From the PKCS#8 PEM private key and the PEM certificate written by Create; checks that they
  // belong together (kInvalidArgument otherwise).
  static Result<CertificateAuthority> Load(std::string_view key_pem, std::string_view cert_pem);

  CertificateAuthority(CertificateAuthority&&) noexcept;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept;
  ~CertificateAuthority();

  Result<SecretBuffer> KeyPem() const;  // PKCS#8, to write (mode 0600)
  const std::string& CertificatePem() const;

  // Checks that the first certificate in `cert_pem` was issued by this CA, is valid now and is
  // fit for `use`. kInvalidArgument if it is not a PEM certificate; kUnauthenticated (with
  // OpenSSL's reason, e.g. "certificate has expired") if it does not verify.
  Status Verify(std::string_view cert_pem, CertificateUse use) const;

  // A server certificate for a key this call generates (returned as PKCS#8 PEM), valid `days`,
  // for the DNS names and IP addresses given (at least one). kInvalidArgument for a name that is
  // not a host name (letters, digits, hyphens; no wildcards), an address that is not IPv4 or
  // IPv6 text, or `days` outside 1..7300. The subject CN is the first name (or address), or
  // "Custody custodian" when that is longer than a CN may be (64 bytes).
  struct ServerIdentity {
    SecretBuffer key_pem;
    IssuedCertificate certificate;
  };
  Result<ServerIdentity> IssueServer(const std::vector<std::string>& dns_names,
                                     const std::vector<std::string>& ip_addresses, int days) const;

  // A device client certificate for `spki_der` (SubjectPublicKeyInfo DER of a P-256 key; other
  // key types are kInvalidArgument) with CN = device_id, valid `days`. The device id must be
  // "dev_" and 32 lower-case hex digits, and `days` within 1..7300 (kInvalidArgument otherwise).
  Result<IssuedCertificate> IssueDevice(ByteSpan spki_der, const std::string& device_id,
                                        int days) const;

 private:
  struct Impl;
  explicit CertificateAuthority(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Whether the first certificate in `cert_pem` certifies the public half of `key`.
// kInvalidArgument if `cert_pem` is not a PEM certificate.
Result<bool> CertificateMatchesKey(std::string_view cert_pem, const crypto::P256PrivateKey& key);

}  // namespace custody::custodian
