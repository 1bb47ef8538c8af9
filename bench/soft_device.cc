#include "soft_device.h"

#include <openssl/x509.h>
#include <tss2/tss2_mu.h>

#include <chrono>
#include <cstring>

#include "core/tpm/marshal.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::bench {
namespace {

// The object's public area with `key`'s point in unique.ecc, as TPM2_Create would return it.
Result<TPMT_PUBLIC> WithPoint(TPMT_PUBLIC pub, const crypto::P256PublicKey& key) {
  const auto& point = key.uncompressed();
  pub.unique.ecc.x.size = 32;
  std::memcpy(pub.unique.ecc.x.buffer, point.data() + 1, 32);
  pub.unique.ecc.y.size = 32;
  std::memcpy(pub.unique.ecc.y.buffer, point.data() + 33, 32);
  return pub;
}

Result<Bytes> SpkiDer(const crypto::P256PrivateKey& key) {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(key.get(), &der);
  if (len <= 0) return Internal("i2d_PUBKEY: " + crypto::OpenSslErrors());
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

// The fields every TPMS_ATTEST of this device shares. The TPM clock is simulated by the process's
// monotonic clock; resetCount and restartCount stay fixed (no reboots).
TPMS_ATTEST BaseAttest(TPM2_ST type, ByteSpan signer_name, ByteSpan nonce) {
  TPMS_ATTEST a{};
  a.magic = TPM2_GENERATED_VALUE;
  a.type = type;
  a.qualifiedSigner.size = static_cast<uint16_t>(signer_name.size());
  std::memcpy(a.qualifiedSigner.name, signer_name.data(), signer_name.size());
  a.extraData.size = static_cast<uint16_t>(nonce.size());
  std::memcpy(a.extraData.buffer, nonce.data(), nonce.size());
  a.clockInfo.clock = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now().time_since_epoch())
                                                .count());
  a.clockInfo.resetCount = 1;
  a.clockInfo.restartCount = 0;
  a.clockInfo.safe = TPM2_YES;
  a.firmwareVersion = 0x0002000100000000ull;
  return a;
}

}  // namespace

Result<SoftDevice> SoftDevice::Create(const std::string& device_id,
                                      const crypto::Sha256Digest& binding_auth_policy,
                                      SoftDeviceOptions options) {
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection,
                           tpm::PcrSelection::Of(options.pcr_selection));
  for (uint32_t pcr : selection.pcrs) {
    if (!options.pcrs.contains(pcr)) {
      return InvalidArgument("soft device: no value for selected PCR " + std::to_string(pcr));
    }
  }
  SoftDevice d;
  d.device_id_ = device_id;
  d.options_ = std::move(options);
  d.options_.pcr_selection = selection.pcrs;
  CUSTODY_ASSIGN_OR_RETURN(d.ak_, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(d.binding_, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC ak, WithPoint(tpm::AkTemplate(), d.ak_.public_key()));
  CUSTODY_ASSIGN_OR_RETURN(d.ak_public_, tpm::MarshalPublic2B(ak));
  CUSTODY_ASSIGN_OR_RETURN(d.ak_name_, tpm::ObjectName(ak));
  CUSTODY_ASSIGN_OR_RETURN(
      TPMT_PUBLIC binding,
      WithPoint(tpm::BindingKeyTemplate(binding_auth_policy), d.binding_.public_key()));
  CUSTODY_ASSIGN_OR_RETURN(d.binding_public_, tpm::MarshalPublic2B(binding));
  CUSTODY_ASSIGN_OR_RETURN(d.counter_name_,
                           tpm::NvName(tpm::NvCounterPublic(d.options_.counter_index, true)));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey tls, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(d.tls_spki_der_, SpkiDer(tls));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer pem, tls.ToPem());
  d.tls_key_pem_.assign(AsChars(pem.span()));
  return d;
}

// A TPM signs SHA-256 of exactly the TPMS_ATTEST bytes with the AK (ECDSA), as TPMT_SIGNATURE.
Result<tpm::Attestation> SoftDevice::Sign(Bytes attest) const {
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256Signature r_s, ak_.SignDigest(crypto::Sha256(attest)));
  CUSTODY_ASSIGN_OR_RETURN(Bytes signature, tpm::MarshalEcdsaSignature(r_s));
  return tpm::Attestation{std::move(attest), std::move(signature)};
}

Result<tpm::Quote> SoftDevice::Quote(ByteSpan nonce) const {
  if (nonce.size() > sizeof(TPMU_HA)) return InvalidArgument("quote nonce is too long");
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection,
                           tpm::PcrSelection::Of(options_.pcr_selection));
  TPMS_ATTEST a = BaseAttest(TPM2_ST_ATTEST_QUOTE, ak_name_, nonce);
  CUSTODY_ASSIGN_OR_RETURN(a.attested.quote.pcrSelect, tpm::ToTpml(selection));
  tpm::PcrValues quoted;
  for (uint32_t pcr : selection.pcrs) quoted[pcr] = options_.pcrs.at(pcr);
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest digest, tpm::PcrDigest(selection, quoted));
  a.attested.quote.pcrDigest.size = static_cast<uint16_t>(digest.size());
  std::memcpy(a.attested.quote.pcrDigest.buffer, digest.data(), digest.size());
  CUSTODY_ASSIGN_OR_RETURN(Bytes attest,
                           tpm::MarshalTss(a, Tss2_MU_TPMS_ATTEST_Marshal, "TPMS_ATTEST"));
  CUSTODY_ASSIGN_OR_RETURN(tpm::Attestation signed_attest, Sign(std::move(attest)));
  return tpm::Quote{std::move(signed_attest), std::move(quoted)};
}

Result<protocol::AttestRequest> SoftDevice::MakeAttestation(ByteSpan nonce) const {
  protocol::AttestRequest r;
  r.nonce.assign(nonce.begin(), nonce.end());
  CUSTODY_ASSIGN_OR_RETURN(r.quote, Quote(nonce));
  return r;
}

Result<tpm::Attestation> SoftDevice::CertifyCounter(ByteSpan nonce) const {
  if (nonce.size() > sizeof(TPMU_HA)) return InvalidArgument("certify nonce is too long");
  TPMS_ATTEST a = BaseAttest(TPM2_ST_ATTEST_NV, ak_name_, nonce);
  TPMS_NV_CERTIFY_INFO& nv = a.attested.nv;
  nv.indexName.size = static_cast<uint16_t>(counter_name_.size());
  std::memcpy(nv.indexName.name, counter_name_.data(), counter_name_.size());
  nv.offset = 0;
  nv.nvContents.size = sizeof(uint64_t);
  for (size_t i = 0; i < sizeof(uint64_t); ++i) {
    nv.nvContents.buffer[i] = static_cast<uint8_t>(options_.counter_value >> (56 - 8 * i));
  }
  CUSTODY_ASSIGN_OR_RETURN(Bytes attest,
                           tpm::MarshalTss(a, Tss2_MU_TPMS_ATTEST_Marshal, "TPMS_ATTEST"));
  return Sign(std::move(attest));
}

Result<SecretBuffer> SoftDevice::UnwrapLeaseKey(const protocol::LeasePayload& lease) const {
  return crypto::EciesUnwrap(binding_, lease.wrapped_dek,
                             protocol::LeaseDekContext(device_id_, lease.model_id));
}

}  // namespace custody::bench
