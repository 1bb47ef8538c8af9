// libFuzzer target for the custodian's TPM verifier (src/core/tpm/verifier.h): everything a
// device sends about its TPM is parsed here.
//
// The first input byte picks what the rest is:
//   0  a TPMS_ATTEST, signed here with the fixed AK (tpm_fixtures.h) so that mutations get past
//      the signature and exercise the parsing and checks behind it; verified as a quote, a
//      certification and an NV certification;
//   1  a TPM2B_PUBLIC, checked as an AK and as a binding key, named, and used to wrap a key;
//   2  a TPMT_SIGNATURE over a fixed message, verified under the fixed AK;
//   3  an unsigned TPMS_ATTEST with the fixed AK's real signature of something else appended
//      (the signature check itself on arbitrary input).
// Properties beyond "no crash, no sanitizer report": an accepted quote matched the only golden
// set and returned its values; an accepted NV certification is never below last_seen.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/tpm/objects.h"
#include "core/tpm/verifier.h"
#include "tpm_fixtures.h"

namespace {

using namespace custody;

void Attestations(ByteSpan attest) {
  const tpm::Attestation signed_attest = fuzz::SignWithFixedAk(attest);
  const Bytes nonce = fuzz::FixedNonce();
  tpm::Quote quote{signed_attest, fuzz::FixedPcrs()};
  tpm::QuoteExpectation expect{
      fuzz::FixedAkPublic(), nonce, fuzz::FixedSelection(), {{"golden", fuzz::FixedPcrs()}}};
  auto q = tpm::VerifyQuote(quote, expect);
  if (q && (q->matched_set != "golden" || q->pcrs != fuzz::FixedPcrs())) std::abort();
  tpm::VerifyCertify(signed_attest, fuzz::FixedAkPublic(), nonce, fuzz::FixedAkPublic())
      .IgnoreError();
  tpm::NvCertifyExpectation nv{fuzz::FixedAkPublic(), nonce,
                               tpm::NvName(tpm::NvCounterPublic(0x01000C57, true)).value(), 7};
  auto counter = tpm::VerifyNvCertify(signed_attest, nv);
  if (counter && *counter < 7) std::abort();  // below last_seen must be refused
}

void PublicArea(ByteSpan bytes) {
  tpm::CheckAkPublic(bytes).IgnoreError();
  const crypto::Sha256Digest policy{};
  tpm::CheckBindingKeyPublic(bytes, policy).IgnoreError();
  auto pub = tpm::UnmarshalPublic2B(bytes);
  if (pub) {
    tpm::ObjectName(*pub).status().IgnoreError();
    tpm::EccPublicKey(*pub).status().IgnoreError();
  }
  const uint8_t secret[32] = {1};
  tpm::WrapToBindingKey(bytes, policy, secret, AsBytes("fuzz")).status().IgnoreError();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const ByteSpan rest(data + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      Attestations(rest);
      break;
    case 1:
      PublicArea(rest);
      break;
    case 2:
      tpm::VerifyTpmSignature(fuzz::FixedAkPublic(), AsBytes("fixed message"), rest).IgnoreError();
      break;
    case 3: {
      const tpm::Attestation real = fuzz::SignWithFixedAk(AsBytes("something else"));
      tpm::Attestation forged{Bytes(rest.begin(), rest.end()), real.signature};
      tpm::VerifyCertify(forged, fuzz::FixedAkPublic(), fuzz::FixedNonce(), fuzz::FixedAkPublic())
          .IgnoreError();
      break;
    }
  }
  return 0;
}
