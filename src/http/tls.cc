#include "http/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cstdint>
#include <vector>

#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"
#include "core/protocol/json.h"

namespace custody::http {
namespace {

using crypto::BioPtr;
using crypto::EvpPkeyPtr;
using crypto::SslCtxPtr;
using crypto::X509Ptr;

// TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only. TLS 1.3 suites are all acceptable.
constexpr char kTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// Longest chain accepted from a device: device certificate, at most two intermediates, root.
constexpr int kMaxClientChainDepth = 4;

// Resumed sessions must carry the client certificate they were established with; OpenSSL
// refuses to resume (with an error) on a server that requests certificates without this.
constexpr unsigned char kSessionIdContext[] = "custody-custodian";

constexpr size_t kMaxCommonNameBytes = 128;

BioPtr MemoryBio(std::string_view pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

Result<std::vector<X509Ptr>> ParseCertificates(std::string_view pem, std::string_view what) {
  BioPtr bio = MemoryBio(pem);
  if (!bio) return Internal("BIO_new_mem_buf: " + crypto::OpenSslErrors());
  std::vector<X509Ptr> certs;
  while (X509* raw = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    certs.emplace_back(raw);
  }
  // The loop ends on "no start line" at the end of the text; any other error is a bad PEM block.
  const unsigned long err = ERR_peek_last_error();
  if (ERR_GET_REASON(err) == PEM_R_NO_START_LINE && !certs.empty()) {
    ERR_clear_error();
  } else if (err != 0 || certs.empty()) {
    const std::string detail = crypto::OpenSslErrors();
    return InvalidArgument(std::string(what) + ": expected one or more PEM certificates (" +
                           (detail.empty() ? "none found" : detail) + ")");
  }
  return certs;
}

Result<EvpPkeyPtr> ParsePrivateKey(std::string_view pem, std::string_view what) {
  BioPtr bio = MemoryBio(pem);
  if (!bio) return Internal("BIO_new_mem_buf: " + crypto::OpenSslErrors());
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    return InvalidArgument(std::string(what) + ": expected an unencrypted PEM private key (" +
                           crypto::OpenSslErrors() + ")");
  }
  return key;
}

Result<SslCtxPtr> NewContext(const SSL_METHOD* method) {
  SslCtxPtr ctx(SSL_CTX_new(method));
  if (!ctx) return Internal("SSL_CTX_new: " + crypto::OpenSslErrors());
  SSL_CTX_set_options(
      ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx.get(), kTls12Ciphers) != 1) {
    return Internal("configuring TLS versions and ciphers: " + crypto::OpenSslErrors());
  }
  return ctx;
}

// Installs a certificate chain (leaf first) and its private key.
Status UseIdentity(SSL_CTX* ctx, std::string_view chain_pem, std::string_view key_pem,
                   std::string_view what) {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<X509Ptr> chain,
                           ParseCertificates(chain_pem, std::string(what) + " certificate chain"));
  CUSTODY_ASSIGN_OR_RETURN(EvpPkeyPtr key,
                           ParsePrivateKey(key_pem, std::string(what) + " private key"));
  if (SSL_CTX_use_certificate(ctx, chain[0].get()) != 1) {
    return InvalidArgument(std::string(what) + " certificate refused: " + crypto::OpenSslErrors());
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1) {
      return Internal("adding chain certificate: " + crypto::OpenSslErrors());
    }
  }
  if (SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return InvalidArgument(std::string(what) + " private key does not match its certificate: " +
                           crypto::OpenSslErrors());
  }
  return OkStatus();
}

Status AddTrustAnchors(SSL_CTX* ctx, std::string_view pem, std::string_view what) {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<X509Ptr> cas, ParseCertificates(pem, what));
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  for (const X509Ptr& ca : cas) {
    if (X509_STORE_add_cert(store, ca.get()) != 1) {
      return InvalidArgument(std::string(what) + ": " + crypto::OpenSslErrors());
    }
  }
  return OkStatus();
}

std::shared_ptr<asio::ssl::context> Wrap(SslCtxPtr ctx) {
  // asio::ssl::context takes ownership of the SSL_CTX (and frees it in its destructor).
  auto out = std::make_shared<asio::ssl::context>(ctx.get());
  (void)ctx.release();
  return out;
}

// SSL ex_data slot holding the first certificate verification error of a connection (plus one,
// so that 0 means none). SSL_get_verify_result reports the LAST error, and only the first says
// what was wrong ("unable to get local issuer certificate" rather than what followed from it).
int FirstVerifyErrorIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int AcceptAnyClientCertificate(int preverify_ok, X509_STORE_CTX* store_ctx) {
  // The verdict is kept in the SSL object and enforced per route; see the header for why the
  // handshake itself does not fail.
  if (preverify_ok == 0) {
    auto* ssl = static_cast<SSL*>(
        X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
    if (ssl != nullptr && SSL_get_ex_data(ssl, FirstVerifyErrorIndex()) == nullptr) {
      const intptr_t code = X509_STORE_CTX_get_error(store_ctx);
      SSL_set_ex_data(ssl, FirstVerifyErrorIndex(), reinterpret_cast<void*>(code + 1));
    }
  }
  return 1;
}

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> MakeServerTlsContext(
    const ServerTlsMaterial& material) {
  if (FirstVerifyErrorIndex() < 0) return Internal("SSL_get_ex_new_index failed");
  CUSTODY_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewContext(TLS_server_method()));
  CUSTODY_RETURN_IF_ERROR(
      UseIdentity(ctx.get(), material.certificate_chain_pem, material.private_key_pem, "server"));
  if (SSL_CTX_set_session_id_context(ctx.get(), kSessionIdContext, sizeof(kSessionIdContext) - 1) !=
      1) {
    return Internal("SSL_CTX_set_session_id_context: " + crypto::OpenSslErrors());
  }
  if (material.client_ca_pem) {
    CUSTODY_RETURN_IF_ERROR(AddTrustAnchors(ctx.get(), *material.client_ca_pem, "client CA"));
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, AcceptAnyClientCertificate);
    SSL_CTX_set_verify_depth(ctx.get(), kMaxClientChainDepth);
    // Refuse certificates whose key usage says they are not for TLS clients.
    if (SSL_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT) != 1) {
      return Internal("SSL_CTX_set_purpose: " + crypto::OpenSslErrors());
    }
  } else {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  return Wrap(std::move(ctx));
}

Result<std::shared_ptr<asio::ssl::context>> MakeClientTlsContext(
    const ClientTlsMaterial& material) {
  CUSTODY_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewContext(TLS_client_method()));
  CUSTODY_RETURN_IF_ERROR(AddTrustAnchors(ctx.get(), material.ca_pem, "server CA"));
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (material.certificate_chain_pem.has_value() != material.private_key_pem.has_value()) {
    return InvalidArgument("a client certificate needs its private key and vice versa");
  }
  if (material.certificate_chain_pem) {
    CUSTODY_RETURN_IF_ERROR(UseIdentity(ctx.get(), *material.certificate_chain_pem,
                                        *material.private_key_pem, "client"));
  }
  return Wrap(std::move(ctx));
}

Status PrepareClientSsl(SSL* ssl, const std::string& expected_name) {
  if (expected_name.empty()) return InvalidArgument("expected server name is empty");
  boost::system::error_code ec;
  asio::ip::make_address(expected_name, ec);
  const bool is_ip = !ec;
  if (is_ip) {
    // IP literals are not valid SNI and match iPAddress SANs, not DNS names.
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), expected_name.c_str()) != 1) {
      return Internal("X509_VERIFY_PARAM_set1_ip_asc: " + crypto::OpenSslErrors());
    }
  } else {
    if (SSL_set_tlsext_host_name(ssl, expected_name.c_str()) != 1 ||
        SSL_set1_host(ssl, expected_name.c_str()) != 1) {
      return InvalidArgument("server name '" + expected_name +
                             "' is not a valid host name: " + crypto::OpenSslErrors());
    }
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  }
  return OkStatus();
}

PeerCertificate InspectPeerCertificate(SSL* ssl) {
  PeerCertificate out;
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) {
    out.problem = "no client certificate was presented";
    return out;
  }
  long verify = SSL_get_verify_result(ssl);
  if (const void* first = SSL_get_ex_data(ssl, FirstVerifyErrorIndex()); first != nullptr) {
    verify = static_cast<long>(reinterpret_cast<intptr_t>(first) - 1);
  }
  if (verify != X509_V_OK) {
    out.problem = std::string(
                      "client certificate did not verify against the custodian's client "
                      "CA: ") +
                  X509_verify_cert_error_string(verify);
    return out;
  }
  X509_NAME* subject = X509_get_subject_name(cert);
  const int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, index) >= 0) {
    out.problem = "client certificate subject must carry exactly one common name (the device id)";
    return out;
  }
  unsigned char* utf8 = nullptr;
  const int len =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index)));
  if (len < 0) {
    out.problem = "client certificate common name is not a valid string";
    return out;
  }
  std::string cn(reinterpret_cast<const char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  if (cn.empty() || cn.size() > kMaxCommonNameBytes || !protocol::IsCleanText(cn)) {
    out.problem = "client certificate common name must be 1 to 128 bytes of clean UTF-8";
    return out;
  }
  out.subject_cn = std::move(cn);
  return out;
}

std::string DescribeTlsError(SSL* ssl, const boost::system::error_code& ec) {
  std::string out = ec.message();
  if (ssl != nullptr) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
      out += " (certificate verification: ";
      out += X509_verify_cert_error_string(verify);
      out += ")";
    }
  }
  return out;
}

}  // namespace custody::http
