// A device whose TPM is simulated in software, for load generators: its keys are ordinary
// OpenSSL P-256 keys with TPM-shaped public areas, and it produces the same marshalled TPM
// structures a real TPM does (TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE; TCG TPM 2.0 Part 2),
// so the custodian's real verifier (core/tpm/verifier.h) accepts them. Thousands of such
// devices cost a few milliseconds each to create and need no swtpm.
//
//   AK       AkTemplate() with the key's point: restricted ECDSA-P256/SHA-256 signing key
//   binding  BindingKeyTemplate(BindingKeyAuthPolicy(policy key)) with the key's point
//   counter  the NV counter's Name (NvCounterPublic(index, written)) and a value held here
//   TLS      a separate P-256 key for the device's client certificate (its SPKI and PEM)
//
// NOT a security boundary: the "TPM" is this process. It proves nothing about a platform; it
// exists to load the custodian with well-formed, correctly signed traffic. Enrollment's
// credential activation needs an EK inside a TPM, so these devices are registered directly in the
// custodian's store by whoever uses them (the benchmark's setup).
//
// Threading: const methods may be called from several threads at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/protocol/messages.h"
#include "core/tpm/tpm_types.h"

namespace custody::bench {

struct SoftDeviceOptions {
  std::vector<uint32_t> pcr_selection;  // what the device quotes (its group's selection)
  tpm::PcrValues pcrs;                  // the platform state it reports (every selected PCR)
  uint32_t counter_index = 0x01000C57;  // tpm::kDefaultCounterIndex
  uint64_t counter_value = 1;
};

class SoftDevice {
 public:
  // Fresh keys. `binding_auth_policy`: tpm::BindingKeyAuthPolicy(the custodian's policy key),
  // the authPolicy its binding key must carry (computed once by the caller for a whole fleet).
  // `device_id` is what the custodian will know the device as ("dev_" + 32 hex digits).
  static Result<SoftDevice> Create(const std::string& device_id,
                                   const crypto::Sha256Digest& binding_auth_policy,
                                   SoftDeviceOptions options);

  const std::string& device_id() const { return device_id_; }
  const Bytes& ak_public() const { return ak_public_; }            // TPM2B_PUBLIC
  const Bytes& binding_public() const { return binding_public_; }  // TPM2B_PUBLIC
  const Bytes& counter_name() const { return counter_name_; }      // NV Name, written
  uint32_t counter_index() const { return options_.counter_index; }
  uint64_t counter_value() const { return options_.counter_value; }
  const std::vector<uint32_t>& pcr_selection() const { return options_.pcr_selection; }
  const Bytes& tls_spki_der() const { return tls_spki_der_; }      // SubjectPublicKeyInfo, P-256
  const std::string& tls_key_pem() const { return tls_key_pem_; }  // PKCS#8 (not secret here)

  // TPM2_Quote of the selection over `nonce` (extraData), signed by the AK, with the PCR values.
  Result<tpm::Quote> Quote(ByteSpan nonce) const;
  // What the agent sends to POST /v1/attest (agent::MakeAttestation, without a TPM).
  Result<protocol::AttestRequest> MakeAttestation(ByteSpan nonce) const;
  // TPM2_NV_Certify of the counter (its 8 bytes at offset 0, big-endian) over `nonce`.
  Result<tpm::Attestation> CertifyCounter(ByteSpan nonce) const;
  // The lease's model key: ECIES unwrap with the binding key (what TPM2_ECDH_ZGen does under the
  // approved policy on a real device; no policy is checked here).
  Result<SecretBuffer> UnwrapLeaseKey(const protocol::LeasePayload& lease) const;

 private:
  SoftDevice() = default;
  Result<tpm::Attestation> Sign(Bytes attest) const;

  std::string device_id_;
  SoftDeviceOptions options_;
  crypto::P256PrivateKey ak_;
  crypto::P256PrivateKey binding_;
  Bytes ak_public_;
  Bytes ak_name_;
  Bytes binding_public_;
  Bytes counter_name_;
  Bytes tls_spki_der_;
  std::string tls_key_pem_;
};

}  // namespace custody::bench
