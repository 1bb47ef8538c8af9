// TLS contexts for the custodian's HTTP server and its clients (DESIGN.md §6, §11): HTTPS only,
// TLS 1.2 minimum (1.3 preferred, negotiated when both sides have it), forward-secret AEAD
// cipher suites only for TLS 1.2, no renegotiation, no compression.
//
// Certificates and keys are PEM text, so callers can pass material held in memory (the
// custodian's own CA issues device certificates; tests generate everything on the fly).
//
// Client certificates on the server: when a client CA is configured the server ASKS for a
// certificate but does not fail the handshake over it. The verification result is kept and
// checked per route (InspectPeerCertificate), so a device with an expired certificate gets an
// HTTP 401 that says "certificate has expired" instead of an opaque TLS alert, and people with
// bearer tokens can use the same listener without a certificate.
//
// Errors: malformed PEM, a key that does not match its certificate, or an OpenSSL failure is
// kInvalidArgument / kInternal with OpenSSL's reason. Contexts are immutable after creation and
// may be shared by any number of connections and threads.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/base/status.h"
#include "http/asio.h"

namespace custody::http {

struct ServerTlsMaterial {
  std::string certificate_chain_pem;  // the server certificate first, then intermediates
  std::string private_key_pem;        // unencrypted PKCS#8 or traditional PEM
  // Trust anchors (one or more PEM certificates) for device client certificates; none means
  // the server does not ask for client certificates.
  std::optional<std::string> client_ca_pem;
};

Result<std::shared_ptr<asio::ssl::context>> MakeServerTlsContext(const ServerTlsMaterial& material);

struct ClientTlsMaterial {
  std::string ca_pem;  // trust anchors for the server's certificate (required)
  // Optional client certificate (mutual TLS): both or neither.
  std::optional<std::string> certificate_chain_pem;
  std::optional<std::string> private_key_pem;
};

Result<std::shared_ptr<asio::ssl::context>> MakeClientTlsContext(const ClientTlsMaterial& material);

// Prepares a client connection's SSL object before the handshake: the server certificate must
// name `expected_name` (a DNS name, matched per RFC 6125, or an IP address literal, matched
// against iPAddress SANs); DNS names are also sent as SNI.
Status PrepareClientSsl(SSL* ssl, const std::string& expected_name);

// The client certificate of an established server-side connection.
struct PeerCertificate {
  // The subject CN, set only if a certificate was presented, verified against the configured
  // client CA and carries exactly one clean (UTF-8, no control characters) CN.
  std::optional<std::string> subject_cn;
  // Otherwise why not, phrased for the client: "no client certificate was presented",
  // "client certificate did not verify: certificate has expired", ...
  std::string problem;
};
PeerCertificate InspectPeerCertificate(SSL* ssl);

// Text for a failed handshake or TLS read/write: the error, and OpenSSL's certificate
// verification result when that was the cause.
std::string DescribeTlsError(SSL* ssl, const boost::system::error_code& ec);

}  // namespace custody::http
