#include "tests/support/test_device.h"

#include <openssl/x509.h>

#include "core/crypto/crypto.h"

namespace custody::testing {
namespace {

using http::Client;
using http::ClientOptions;
using http::ClientResponse;

Result<Bytes> PublicKeyDer(const crypto::P256PrivateKey& key) {
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key.get(), &der);
  if (len <= 0) return Internal("i2d_PUBKEY failed");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

template <typename T, typename Parse>
Result<T> Expect(Result<ClientResponse> r, Parse&& parse) {
  if (!r) return r.error();
  if (r->status / 100 != 2) return StatusFromResponse(*r);
  return parse(r->body);
}

}  // namespace

Status StatusFromResponse(const ClientResponse& r) {
  Result<nlohmann::json> j = r.Json();
  std::string code_name = "internal";
  std::string message = "HTTP " + std::to_string(r.status) + ": " + r.body.substr(0, 200);
  if (j && j->contains("error") && (*j)["error"].is_object()) {
    const nlohmann::json& e = (*j)["error"];
    if (e.contains("code") && e["code"].is_string()) code_name = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string())
      message = e["message"].get<std::string>();
  }
  for (int c = 1; c <= static_cast<int>(StatusCode::kInternal); ++c) {
    if (StatusCodeName(static_cast<StatusCode>(c)) == code_name) {
      return Status(static_cast<StatusCode>(c),
                    "HTTP " + std::to_string(r.status) + ": " + message);
    }
  }
  return Internal(message);
}

Result<std::unique_ptr<TestDevice>> TestDevice::Create(uint16_t port, std::string custodian_ca_pem,
                                                       Swtpm::Options tpm_options) {
  std::unique_ptr<TestDevice> d(new TestDevice());
  d->port_ = port;
  d->ca_pem_ = std::move(custodian_ca_pem);
  CUSTODY_ASSIGN_OR_RETURN(d->swtpm_, Swtpm::Start(std::move(tpm_options)));
  CUSTODY_ASSIGN_OR_RETURN(d->tpm_, tpm::Tpm::Open(d->swtpm_->tcti()));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey tls, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer pem, tls.ToPem());
  d->tls_key_pem_.assign(AsChars(pem.span()));
  CUSTODY_ASSIGN_OR_RETURN(d->tls_spki_, PublicKeyDer(tls));
  CUSTODY_ASSIGN_OR_RETURN(d->client_, d->MakeClient(/*mutual_tls=*/false));
  return d;
}

Result<std::unique_ptr<Client>> TestDevice::MakeClient(bool mutual_tls) const {
  ClientOptions o;
  o.host = "127.0.0.1";
  o.port = port_;
  o.ca_pem = ca_pem_;
  o.request_timeout = std::chrono::seconds(70);
  if (mutual_tls) {
    o.client_certificate_pem = identity_.certificate_pem;
    o.client_key_pem = tls_key_pem_;
  }
  return Client::Create(std::move(o));
}

Result<http::ClientResponse> TestDevice::Post(const std::string& target,
                                              const nlohmann::json& body) {
  return client_->PostJson(target, body);
}

Status TestDevice::Enroll(const std::string& token, uint64_t counter_unit) {
  CUSTODY_ASSIGN_OR_RETURN(agent::EnrollmentInProgress e,
                           agent::BeginEnrollment(*tpm_, token, tpm::EkType::kEcc,
                                                  tpm::kDefaultCounterIndex, counter_unit));
  CUSTODY_ASSIGN_OR_RETURN(
      protocol::EnrollBeginResponse challenge,
      (Expect<protocol::EnrollBeginResponse>(Post("/v1/enroll/begin", protocol::ToJson(e.request)),
                                             protocol::ParseEnrollBeginResponse)));
  CUSTODY_ASSIGN_OR_RETURN(protocol::EnrollCompleteRequest complete,
                           agent::ContinueEnrollment(*tpm_, e, challenge, tls_spki_));
  CUSTODY_ASSIGN_OR_RETURN(protocol::EnrollCompleteResponse result,
                           (Expect<protocol::EnrollCompleteResponse>(
                               Post("/v1/enroll/complete", protocol::ToJson(complete)),
                               protocol::ParseEnrollCompleteResponse)));
  CUSTODY_RETURN_IF_ERROR(agent::FinishEnrollment(e, result));
  identity_ = e.identity;
  CUSTODY_ASSIGN_OR_RETURN(client_, MakeClient(/*mutual_tls=*/true));
  return OkStatus();
}

Result<Bytes> TestDevice::Nonce() {
  CUSTODY_ASSIGN_OR_RETURN(
      protocol::NonceResponse n,
      (Expect<protocol::NonceResponse>(Post("/v1/nonce", nlohmann::json::object()),
                                       protocol::ParseNonceResponse)));
  return n.nonce;
}

Result<std::vector<protocol::LeasePayload>> TestDevice::Attest() {
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, Nonce());
  CUSTODY_ASSIGN_OR_RETURN(protocol::AttestRequest req,
                           agent::MakeAttestation(*tpm_, identity_, nonce));
  CUSTODY_ASSIGN_OR_RETURN(
      protocol::AttestResponse resp,
      (Expect<protocol::AttestResponse>(Post("/v1/attest", protocol::ToJson(req)),
                                        protocol::ParseAttestResponse)));
  std::vector<protocol::LeasePayload> leases;
  for (const nlohmann::json& env : resp.leases) {
    CUSTODY_ASSIGN_OR_RETURN(protocol::LeasePayload l, agent::OpenLease(identity_, env));
    leases.push_back(std::move(l));
  }
  return leases;
}

Result<protocol::EventsResponse> TestDevice::Poll(uint64_t after, int wait_ms) {
  http::ClientRequest req;
  req.method = "GET";
  req.target = "/v1/events?after=" + std::to_string(after) + "&wait_ms=" + std::to_string(wait_ms);
  req.timeout = std::chrono::milliseconds(wait_ms + 10'000);
  return Expect<protocol::EventsResponse>(client_->Send(req), protocol::ParseEventsResponse);
}

Status TestDevice::AdvanceCounter(uint64_t blocks) {
  for (uint64_t i = 0; i < blocks; ++i) {
    CUSTODY_RETURN_IF_ERROR(
        tpm_->IncrementCounter(identity_.counter_index, identity_.counter_auth).status());
  }
  return OkStatus();
}

Result<nlohmann::json> TestDevice::UseAndReport(const std::string& model_id, uint64_t inferences,
                                                const std::string& report_id) {
  const uint64_t unit = identity_.counter_unit;
  CUSTODY_RETURN_IF_ERROR(AdvanceCounter(inferences / unit + (inferences % unit != 0 ? 1 : 0)));
  return Report(model_id, inferences, report_id, /*prepaid=*/0);
}

Result<nlohmann::json> TestDevice::Report(const std::string& model_id, uint64_t inferences,
                                          const std::string& report_id, uint64_t prepaid,
                                          std::optional<std::string> anomaly) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, Nonce());
  CUSTODY_ASSIGN_OR_RETURN(
      protocol::UsageRequest req,
      agent::MakeUsageReport(*tpm_, identity_, nonce, report_id, {{model_id, "kiosk", inferences}},
                             prepaid, std::move(anomaly)));
  return Expect<nlohmann::json>(Post("/v1/usage", protocol::ToJson(req)),
                                [](std::string_view body) {
                                  return protocol::ParseJsonObject(body, 1 << 20, "usage answer");
                                });
}

Result<nlohmann::json> TestDevice::RequestExtension(const std::string& licence_id,
                                                    uint64_t requested) {
  protocol::ExtensionRequestMessage m{licence_id, requested, "budget running low"};
  return Expect<nlohmann::json>(
      Post("/v1/extensions", protocol::ToJson(m)), [](std::string_view body) {
        return protocol::ParseJsonObject(body, 1 << 20, "extension answer");
      });
}

Result<SecretBuffer> TestDevice::Unwrap(const protocol::LeasePayload& lease) {
  return agent::UnwrapLeaseKey(*tpm_, identity_, lease);
}

}  // namespace custody::testing
