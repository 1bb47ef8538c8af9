// A device for end-to-end tests: a real software TPM (swtpm), the agent's protocol half
// (agent/device_protocol.h) and an HTTPS client, talking to a real custodian over the real API.
// What the agent will do, minus serving models: enroll, attest, poll events, report usage,
// ask for more budget.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/device_protocol.h"
#include "core/base/status.h"
#include "http/client.h"
#include "tests/support/swtpm_fixture.h"

namespace custody::testing {

class TestDevice {
 public:
  // A device with its own swtpm, that will talk to the custodian at 127.0.0.1:port, trusting
  // `custodian_ca_pem` (the custodian's CA, which also issued its server certificate).
  static Result<std::unique_ptr<TestDevice>> Create(uint16_t port, std::string custodian_ca_pem,
                                                    Swtpm::Options tpm_options = {});

  // Both enrollment round trips; afterwards the client uses mutual TLS with the new certificate.
  // `counter_unit`: requests per TPM counter increment (PROTOCOL.md §7).
  Status Enroll(const std::string& enrollment_token, uint64_t counter_unit = 1);

  Result<Bytes> Nonce();
  // Nonce + quote + verified leases.
  Result<std::vector<protocol::LeasePayload>> Attest();
  Result<protocol::EventsResponse> Poll(uint64_t after, int wait_ms);
  // Advances the TPM counter by the blocks `inferences` need (ceil(inferences / counter unit))
  // and reports them for `model_id`, with nothing prepaid.
  Result<nlohmann::json> UseAndReport(const std::string& model_id, uint64_t inferences,
                                      const std::string& report_id);
  // Advances the TPM counter by `blocks` increments.
  Status AdvanceCounter(uint64_t blocks);
  // Reports `inferences` for `model_id` with the counter as it is, claiming `prepaid` requests
  // paid and not served, and an optional meter anomaly.
  Result<nlohmann::json> Report(const std::string& model_id, uint64_t inferences,
                                const std::string& report_id, uint64_t prepaid,
                                std::optional<std::string> anomaly = std::nullopt);
  Result<nlohmann::json> RequestExtension(const std::string& licence_id, uint64_t requested);
  Result<SecretBuffer> Unwrap(const protocol::LeasePayload& lease);

  // Raw access for attacks.
  Result<http::ClientResponse> Post(const std::string& target, const nlohmann::json& body);
  tpm::Tpm& tpm() { return *tpm_; }
  Swtpm& swtpm() { return *swtpm_; }
  agent::DeviceIdentity& identity() { return identity_; }
  http::Client& client() { return *client_; }
  const std::string& tls_key_pem() const { return tls_key_pem_; }

 private:
  TestDevice() = default;
  Result<std::unique_ptr<http::Client>> MakeClient(bool mutual_tls) const;

  uint16_t port_ = 0;
  std::string ca_pem_;
  std::unique_ptr<Swtpm> swtpm_;
  std::unique_ptr<tpm::Tpm> tpm_;
  agent::DeviceIdentity identity_;
  std::string tls_key_pem_;
  Bytes tls_spki_;
  std::unique_ptr<http::Client> client_;
};

// Turns a non-2xx answer into the Status its error body describes (code and message), so tests
// can assert on the custodian's refusal.
Status StatusFromResponse(const http::ClientResponse& r);

}  // namespace custody::testing
