// Test-only PKI for the custodian's HTTP layer: CAs, a server certificate for 127.0.0.1 and
// localhost, and client certificates, all generated in memory with OpenSSL (P-256 keys, so it is
// fast). Test code only; nothing here is fit for production keys.
#pragma once

#include <chrono>
#include <string>

namespace custody::http::testing {

struct KeyAndCert {
  std::string cert_pem;
  std::string key_pem;
};

struct CertSpec {
  std::string common_name;
  bool is_ca = false;
  bool server = false;                     // serverAuth EKU and SANs 127.0.0.1, ::1, localhost
  bool client = false;                     // clientAuth EKU
  std::chrono::seconds not_before{-3600};  // relative to now
  std::chrono::seconds not_after{86400};
};

// Issues a certificate for `spec`, signed by `issuer` (self-signed if issuer is null). Aborts
// the test binary on OpenSSL failure (test code).
KeyAndCert Issue(const CertSpec& spec, const KeyAndCert* issuer);

// A fixed set, generated once per process.
struct TestPki {
  KeyAndCert ca;               // "Custody Test CA": issues the server and device certificates
  KeyAndCert other_ca;         // "Other CA": unrelated
  KeyAndCert server;           // CN=custodian, SANs 127.0.0.1, ::1, localhost
  KeyAndCert device;           // CN=device-0001, from ca
  KeyAndCert device_other_ca;  // CN=device-0001, from other_ca
  KeyAndCert device_expired;   // CN=device-0002, from ca, expired an hour ago
};
const TestPki& Pki();

}  // namespace custody::http::testing
