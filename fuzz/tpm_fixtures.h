// Fixed keys and expectations shared by the TPM verifier fuzzer and the seed generator: a
// software stand-in for a device's AK (test key only), the nonce, PCR selection and golden
// values the fuzzer verifies against, and builders of well-formed attestations, so that seeds
// pass every check and mutations explore what lies behind each one.
#pragma once

#include <tss2/tss2_mu.h>

#include <cstdlib>
#include <cstring>

#include "core/crypto/crypto.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"
#include "core/tpm/tpm_types.h"

namespace custody::fuzz {

inline const crypto::P256PrivateKey& FixedAk() {
  static const crypto::P256PrivateKey* key = [] {
    auto k = crypto::P256PrivateKey::FromPem(
        "-----BEGIN PRIVATE KEY-----\n"
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg2bKNmjrGHabT1LTK\n"
        "yLLsl7uGHAFt4yVl0sHzt8q6OFehRANCAAR5+RoDbMo+PtVOwqJ26wfEO/1l0tz+\n"
        "5TxX7/pnrgLULg/3HWSqRAsrKIzMAKDJPPxOg/ewM2crgS1iwBXG95ZS\n"
        "-----END PRIVATE KEY-----\n");
    if (!k) std::abort();
    return new crypto::P256PrivateKey(std::move(k).value());
  }();
  return *key;
}

// The AK's public area: AkTemplate() with the fixed key's point.
inline const Bytes& FixedAkPublic() {
  static const Bytes* bytes = [] {
    TPMT_PUBLIC pub = tpm::AkTemplate();
    const auto& point = FixedAk().public_key().uncompressed();
    pub.unique.ecc.x.size = 32;
    std::memcpy(pub.unique.ecc.x.buffer, point.data() + 1, 32);
    pub.unique.ecc.y.size = 32;
    std::memcpy(pub.unique.ecc.y.buffer, point.data() + 33, 32);
    auto b = tpm::MarshalPublic2B(pub);
    if (!b) std::abort();
    return new Bytes(std::move(b).value());
  }();
  return *bytes;
}

inline Bytes FixedNonce() { return Bytes(32, 0x4e); }

inline tpm::PcrSelection FixedSelection() { return tpm::PcrSelection::Of({0, 2, 4, 7}).value(); }

inline tpm::PcrValues FixedPcrs() {
  tpm::PcrValues v;
  for (uint32_t pcr : FixedSelection().pcrs) v[pcr].fill(static_cast<uint8_t>(0x10 + pcr));
  return v;
}

// Signs `attest` with the fixed AK as a TPM would (ECDSA over SHA-256, TPMT_SIGNATURE).
inline tpm::Attestation SignWithFixedAk(ByteSpan attest) {
  auto r_s = FixedAk().SignDigest(crypto::Sha256(attest));
  if (!r_s) std::abort();
  auto sig = tpm::MarshalEcdsaSignature(*r_s);
  if (!sig) std::abort();
  return tpm::Attestation{Bytes(attest.begin(), attest.end()), std::move(sig).value()};
}

// A TPMS_ATTEST of `type` over the fixed nonce, its type-specific part filled to pass the
// fuzzer's expectations (quote of FixedPcrs, certify of the AK itself, NV certify of counter
// value 42).
inline Bytes BuildAttest(TPM2_ST type) {
  TPMS_ATTEST a{};
  a.magic = TPM2_GENERATED_VALUE;
  a.type = type;
  const Bytes nonce = FixedNonce();
  a.extraData.size = static_cast<UINT16>(nonce.size());
  std::memcpy(a.extraData.buffer, nonce.data(), nonce.size());
  a.clockInfo.clock = 123456;
  a.clockInfo.safe = TPM2_YES;
  auto ak_name = tpm::ObjectName(tpm::UnmarshalPublic2B(FixedAkPublic()).value()).value();
  a.qualifiedSigner.size = static_cast<UINT16>(ak_name.size());
  std::memcpy(a.qualifiedSigner.name, ak_name.data(), ak_name.size());
  if (type == TPM2_ST_ATTEST_QUOTE) {
    a.attested.quote.pcrSelect = tpm::ToTpml(FixedSelection()).value();
    auto digest = tpm::PcrDigest(FixedSelection(), FixedPcrs()).value();
    a.attested.quote.pcrDigest.size = 32;
    std::memcpy(a.attested.quote.pcrDigest.buffer, digest.data(), 32);
  } else if (type == TPM2_ST_ATTEST_CERTIFY) {
    a.attested.certify.name.size = static_cast<UINT16>(ak_name.size());
    std::memcpy(a.attested.certify.name.name, ak_name.data(), ak_name.size());
  } else if (type == TPM2_ST_ATTEST_NV) {
    auto index = tpm::NvName(tpm::NvCounterPublic(0x01000C57, true)).value();
    a.attested.nv.indexName.size = static_cast<UINT16>(index.size());
    std::memcpy(a.attested.nv.indexName.name, index.data(), index.size());
    a.attested.nv.nvContents.size = 8;
    a.attested.nv.nvContents.buffer[7] = 42;
  }
  auto bytes = tpm::MarshalTss(a, Tss2_MU_TPMS_ATTEST_Marshal, "TPMS_ATTEST");
  if (!bytes) std::abort();
  return std::move(bytes).value();
}

}  // namespace custody::fuzz
