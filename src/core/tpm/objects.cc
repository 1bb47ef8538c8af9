#include "core/tpm/objects.h"

#include <tss2/tss2_mu.h>

#include <cstring>

#include "core/tpm/marshal.h"
#include "core/tpm/tss_status.h"

namespace custody::tpm {
namespace {

constexpr TPMA_OBJECT kKeyOrigin =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;

TPMT_PUBLIC EccBase(TPMA_OBJECT attributes) {
  TPMT_PUBLIC p{};
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = attributes;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return p;
}

void Aes128Cfb(TPMT_SYM_DEF_OBJECT& sym) {
  sym.algorithm = TPM2_ALG_AES;
  sym.keyBits.aes = 128;
  sym.mode.aes = TPM2_ALG_CFB;
}

// Primary templates carry zero-filled unique fields of the key size (TCG guidance), which makes
// the derived primary key the one every conforming implementation derives.
void ZeroUniqueEcc(TPMT_PUBLIC& p) {
  p.unique.ecc.x.size = 32;
  p.unique.ecc.y.size = 32;
}

Status CheckNameAlg(TPMI_ALG_HASH name_alg) {
  if (name_alg == TPM2_ALG_SHA256) return OkStatus();
  return Unimplemented("name algorithm " + RcHex(name_alg) + " is not supported (only SHA-256)");
}

// nameAlg (SHA-256) || SHA-256(marshalled public area).
Bytes Sha256Name(ByteSpan marshalled) {
  const crypto::Sha256Digest digest = crypto::Sha256(marshalled);
  Bytes name(2 + digest.size());
  name[0] = static_cast<uint8_t>(TPM2_ALG_SHA256 >> 8);
  name[1] = static_cast<uint8_t>(TPM2_ALG_SHA256 & 0xff);
  std::memcpy(name.data() + 2, digest.data(), digest.size());
  return name;
}

}  // namespace

TPMT_PUBLIC SrkTemplate() {
  TPMT_PUBLIC p = EccBase(kKeyOrigin | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA |
                          TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT);
  Aes128Cfb(p.parameters.eccDetail.symmetric);
  ZeroUniqueEcc(p);
  return p;
}

TPMT_PUBLIC EkTemplate(EkType type) {
  const TPMA_OBJECT attributes =
      kKeyOrigin | TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;
  TPMT_PUBLIC p{};
  if (type == EkType::kEcc) {
    p = EccBase(attributes);
    Aes128Cfb(p.parameters.eccDetail.symmetric);
    ZeroUniqueEcc(p);
  } else {
    p.type = TPM2_ALG_RSA;
    p.nameAlg = TPM2_ALG_SHA256;
    p.objectAttributes = attributes;
    Aes128Cfb(p.parameters.rsaDetail.symmetric);
    p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    p.parameters.rsaDetail.keyBits = 2048;
    p.parameters.rsaDetail.exponent = 0;
    p.unique.rsa.size = 256;
  }
  p.authPolicy.size = kEkPolicyDigest.size();
  std::memcpy(p.authPolicy.buffer, kEkPolicyDigest.data(), kEkPolicyDigest.size());
  return p;
}

TPMT_PUBLIC AkTemplate() {
  TPMT_PUBLIC p = EccBase(kKeyOrigin | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
                          TPMA_OBJECT_SIGN_ENCRYPT);
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  return p;
}

TPMT_PUBLIC BindingKeyTemplate(const crypto::Sha256Digest& auth_policy) {
  // No userWithAuth: TPM2_ECDH_ZGen (USER role) is possible only through the authPolicy. No
  // adminWithPolicy: ADMIN-role commands (TPM2_Certify by the AK) work with the empty authValue;
  // none of them can use or export the private key.
  TPMT_PUBLIC p = EccBase(kKeyOrigin | TPMA_OBJECT_NODA | TPMA_OBJECT_DECRYPT);
  p.authPolicy.size = auth_policy.size();
  std::memcpy(p.authPolicy.buffer, auth_policy.data(), auth_policy.size());
  return p;
}

TPMT_PUBLIC SealedDataTemplate() {
  TPMT_PUBLIC p{};
  p.type = TPM2_ALG_KEYEDHASH;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes =
      TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA;
  p.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  return p;
}

TPMT_PUBLIC PolicyKeyPublic(const crypto::P256PublicKey& key) {
  TPMT_PUBLIC p = EccBase(TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH);
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  const auto& point = key.uncompressed();
  p.unique.ecc.x.size = 32;
  std::memcpy(p.unique.ecc.x.buffer, point.data() + 1, 32);
  p.unique.ecc.y.size = 32;
  std::memcpy(p.unique.ecc.y.buffer, point.data() + 33, 32);
  return p;
}

TPMS_NV_PUBLIC NvCounterPublic(TPM2_HANDLE index, bool written) {
  TPMS_NV_PUBLIC p{};
  p.nvIndex = index;
  p.nameAlg = TPM2_ALG_SHA256;
  p.attributes = (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT) | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD |
                 TPMA_NV_OWNERREAD | TPMA_NV_NO_DA;
  if (written) p.attributes |= TPMA_NV_WRITTEN;
  p.dataSize = 8;
  return p;
}

Result<Bytes> NvName(const TPMS_NV_PUBLIC& pub) {
  CUSTODY_RETURN_IF_ERROR(CheckNameAlg(pub.nameAlg));
  CUSTODY_ASSIGN_OR_RETURN(Bytes marshalled,
                           MarshalTss(pub, Tss2_MU_TPMS_NV_PUBLIC_Marshal, "TPMS_NV_PUBLIC"));
  return Sha256Name(marshalled);
}

Result<Bytes> MarshalPublic(const TPMT_PUBLIC& pub) {
  return MarshalTss(pub, Tss2_MU_TPMT_PUBLIC_Marshal, "TPMT_PUBLIC");
}

Result<Bytes> MarshalPublic2B(const TPMT_PUBLIC& pub) {
  TPM2B_PUBLIC wrapped{};
  wrapped.publicArea = pub;
  return MarshalTss(wrapped, Tss2_MU_TPM2B_PUBLIC_Marshal, "TPM2B_PUBLIC");
}

Result<TPMT_PUBLIC> UnmarshalPublic2B(ByteSpan bytes) {
  CUSTODY_ASSIGN_OR_RETURN(
      TPM2B_PUBLIC wrapped,
      UnmarshalTss<TPM2B_PUBLIC>(bytes, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC"));
  return wrapped.publicArea;
}

Result<TPML_PCR_SELECTION> ToTpml(const PcrSelection& selection) {
  TPML_PCR_SELECTION tpml{};
  tpml.count = 1;
  tpml.pcrSelections[0].hash = TPM2_ALG_SHA256;
  tpml.pcrSelections[0].sizeofSelect = 3;
  for (uint32_t pcr : selection.pcrs) {
    if (pcr >= kPcrCount) return InvalidArgument("PCR " + std::to_string(pcr) + " does not exist");
    tpml.pcrSelections[0].pcrSelect[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
  }
  return tpml;
}

Result<Bytes> MarshalPcrSelection(const PcrSelection& selection) {
  CUSTODY_ASSIGN_OR_RETURN(TPML_PCR_SELECTION tpml, ToTpml(selection));
  return MarshalTss(tpml, Tss2_MU_TPML_PCR_SELECTION_Marshal, "TPML_PCR_SELECTION");
}

Result<Bytes> ObjectName(const TPMT_PUBLIC& pub) {
  CUSTODY_RETURN_IF_ERROR(CheckNameAlg(pub.nameAlg));
  CUSTODY_ASSIGN_OR_RETURN(Bytes marshalled, MarshalPublic(pub));
  return Sha256Name(marshalled);
}

Result<crypto::P256PublicKey> EccPublicKey(const TPMT_PUBLIC& pub) {
  if (pub.type != TPM2_ALG_ECC || pub.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    return InvalidArgument("the key is not an ECC P-256 key");
  }
  const TPM2B_ECC_PARAMETER& x = pub.unique.ecc.x;
  const TPM2B_ECC_PARAMETER& y = pub.unique.ecc.y;
  if (x.size == 0 || x.size > 32 || y.size == 0 || y.size > 32) {
    return InvalidArgument("the key's public point has coordinates of " + std::to_string(x.size) +
                           " and " + std::to_string(y.size) + " bytes (expected up to 32)");
  }
  Bytes point(65, 0);
  point[0] = 0x04;
  std::memcpy(point.data() + 1 + (32 - x.size), x.buffer, x.size);
  std::memcpy(point.data() + 33 + (32 - y.size), y.buffer, y.size);
  return crypto::P256PublicKey::FromUncompressed(point);
}

Result<crypto::Sha256Digest> PcrDigest(const PcrSelection& selection, const PcrValues& values) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Hasher hasher, crypto::Sha256Hasher::Create());
  for (uint32_t pcr : selection.pcrs) {
    auto it = values.find(pcr);
    if (it == values.end()) {
      return InvalidArgument("no value for selected PCR " + std::to_string(pcr));
    }
    CUSTODY_RETURN_IF_ERROR(hasher.Update(it->second));
  }
  return hasher.Finish();
}

}  // namespace custody::tpm
