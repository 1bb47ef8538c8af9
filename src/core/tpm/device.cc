// Device-side TPM operations on ESAPI (device.h). Each public method is one short sequence of
// TPM commands; every transient object and session it creates is owned by a Handle and flushed
// when the method returns, on success and on every error path.
#include "core/tpm/device.h"

#include <tss2/tss2_mu.h>
#include <tss2/tss2_sys.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "core/tpm/marshal.h"
#include "core/tpm/objects.h"
#include "core/tpm/tss_status.h"

namespace custody::tpm {

// ----- Handle: one transient object or session ------------------------------------------------

class Tpm::Handle {
 public:
  Handle() = default;
  Handle(ESYS_CONTEXT* esys, ESYS_TR tr) : esys_(esys), tr_(tr) {}
  ~Handle() { Reset(); }
  Handle(Handle&& other) noexcept
      : esys_(std::exchange(other.esys_, nullptr)), tr_(std::exchange(other.tr_, ESYS_TR_NONE)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      Reset();
      esys_ = std::exchange(other.esys_, nullptr);
      tr_ = std::exchange(other.tr_, ESYS_TR_NONE);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  ESYS_TR get() const { return tr_; }

 private:
  void Reset() {
    // A failed flush leaves nothing to do: the object is gone or the TPM unreachable, and Open()
    // of the next connection flushes leftovers.
    if (esys_ != nullptr && tr_ != ESYS_TR_NONE) Esys_FlushContext(esys_, tr_);
    tr_ = ESYS_TR_NONE;
  }

  ESYS_CONTEXT* esys_ = nullptr;
  ESYS_TR tr_ = ESYS_TR_NONE;
};

namespace {

// An ESYS_TR for a TPM entity that is not flushed (NV index): only ESAPI's metadata is released.
class ResourceRef {
 public:
  ResourceRef(ESYS_CONTEXT* esys, ESYS_TR tr) : esys_(esys), tr_(tr) {}
  ~ResourceRef() {
    if (tr_ != ESYS_TR_NONE) Esys_TR_Close(esys_, &tr_);
  }
  ResourceRef(const ResourceRef&) = delete;
  ResourceRef& operator=(const ResourceRef&) = delete;
  ESYS_TR get() const { return tr_; }
  // For when a command consumed the ESYS_TR (NV_UndefineSpace deletes it).
  void Forget() { tr_ = ESYS_TR_NONE; }

 private:
  ESYS_CONTEXT* esys_;
  ESYS_TR tr_;
};

Result<TPM2B_DATA> Nonce(ByteSpan nonce) {
  TPM2B_DATA data{};
  if (nonce.empty() || nonce.size() > sizeof(data.buffer)) {
    return InvalidArgument("a nonce must be 1.." + std::to_string(sizeof(data.buffer)) +
                           " bytes, got " + std::to_string(nonce.size()));
  }
  data.size = static_cast<UINT16>(nonce.size());
  std::memcpy(data.buffer, nonce.data(), nonce.size());
  return data;
}

Result<TPM2B_AUTH> AuthValue(ByteSpan auth) {
  TPM2B_AUTH value{};
  if (auth.size() > 32) {
    return InvalidArgument("an authValue may be at most 32 bytes, got " +
                           std::to_string(auth.size()));
  }
  value.size = static_cast<UINT16>(auth.size());
  if (!auth.empty()) std::memcpy(value.buffer, auth.data(), auth.size());
  return value;
}

Result<Attestation> ToAttestation(const TPM2B_ATTEST& attest, const TPMT_SIGNATURE& signature) {
  Attestation out;
  out.attest.assign(attest.attestationData, attest.attestationData + attest.size);
  CUSTODY_ASSIGN_OR_RETURN(out.signature,
                           MarshalTss(signature, Tss2_MU_TPMT_SIGNATURE_Marshal, "TPMT_SIGNATURE"));
  return out;
}

Result<TPM2B_ECC_POINT> EccPoint(const crypto::P256PublicKey& key) {
  TPM2B_ECC_POINT point{};
  const auto& raw = key.uncompressed();
  point.point.x.size = 32;
  std::memcpy(point.point.x.buffer, raw.data() + 1, 32);
  point.point.y.size = 32;
  std::memcpy(point.point.y.buffer, raw.data() + 33, 32);
  return point;
}

// Transient objects and sessions of an earlier connection that died mid-command stay loaded in
// a TPM without a resource manager (swtpm), and a few of them exhaust its slots. With the
// kernel's resource manager the lists below are this connection's own, i.e. empty.
Status FlushAll(TSS2_TCTI_CONTEXT* tcti) {
  size_t size = Tss2_Sys_GetContextSize(0);
  std::vector<uint8_t> storage(size);
  auto* sys = reinterpret_cast<TSS2_SYS_CONTEXT*>(storage.data());
  TSS2_ABI_VERSION abi = TSS2_ABI_VERSION_CURRENT;
  TSS2_RC rc = Tss2_Sys_Initialize(sys, size, tcti, &abi);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "initialise the TPM system API");
  Status status;
  for (TPM2_HANDLE first : {TPM2_TRANSIENT_FIRST, TPM2_LOADED_SESSION_FIRST}) {
    TPMS_CAPABILITY_DATA data{};
    TPMI_YES_NO more = TPM2_NO;
    rc = Tss2_Sys_GetCapability(sys, nullptr, TPM2_CAP_HANDLES, first, TPM2_MAX_CAP_HANDLES, &more,
                                &data, nullptr);
    if (rc != TSS2_RC_SUCCESS) {
      status = TssStatus(rc, "list loaded TPM handles");
      break;
    }
    for (UINT32 i = 0; i < data.data.handles.count; ++i) {
      Tss2_Sys_FlushContext(sys, data.data.handles.handle[i]);
    }
  }
  Tss2_Sys_Finalize(sys);
  return status;
}

constexpr int kQuoteAttempts = 3;

}  // namespace

// ----- lifecycle ---------------------------------------------------------------------------------

Tpm::Tpm(std::string tcti, TctiPtr tcti_ctx, EsysPtr esys)
    : tcti_(std::move(tcti)), tcti_ctx_(std::move(tcti_ctx)), esys_(std::move(esys)) {}

Tpm::~Tpm() {
  if (srk_ != ESYS_TR_NONE) Esys_FlushContext(esys_.get(), srk_);
  esys_.reset();  // before the TCTI it uses
}

Result<std::unique_ptr<Tpm>> Tpm::Open(const std::string& tcti) {
  if (tcti.empty()) return InvalidArgument("no TPM TCTI configured (e.g. device:/dev/tpmrm0)");
  TSS2_TCTI_CONTEXT* raw_tcti = nullptr;
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti.c_str(), &raw_tcti);
  if (rc != TSS2_RC_SUCCESS) {
    return Unavailable("cannot connect to the TPM through '" + tcti +
                       "': " + TssStatus(rc, "TCTI").message());
  }
  TctiPtr tcti_ctx(raw_tcti);
  CUSTODY_RETURN_IF_ERROR(FlushAll(tcti_ctx.get()).WithContext("TPM at '" + tcti + "'"));
  ESYS_CONTEXT* raw_esys = nullptr;
  rc = Esys_Initialize(&raw_esys, tcti_ctx.get(), nullptr);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "initialise ESAPI for '" + tcti + "'");
  EsysPtr esys(raw_esys);
  return std::unique_ptr<Tpm>(new Tpm(tcti, std::move(tcti_ctx), std::move(esys)));
}

Result<ESYS_TR> Tpm::Srk() {
  if (srk_ != ESYS_TR_NONE) return srk_;
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC in_public{};
  in_public.publicArea = SrkTemplate();
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creation_pcr{};
  TSS2_RC rc = Esys_CreatePrimary(esys_.get(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                  ESYS_TR_NONE, &sensitive, &in_public, &outside, &creation_pcr,
                                  &srk_, nullptr, nullptr, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    srk_ = ESYS_TR_NONE;
    return TssStatus(rc, "create the storage root key in the owner hierarchy");
  }
  return srk_;
}

Result<Tpm::Handle> Tpm::Load(const KeyBlob& key, std::string_view what) {
  CUSTODY_ASSIGN_OR_RETURN(
      TPM2B_PUBLIC pub,
      UnmarshalTss<TPM2B_PUBLIC>(key.public_area, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "public area"));
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_PRIVATE priv,
                           UnmarshalTss<TPM2B_PRIVATE>(
                               key.private_area, Tss2_MU_TPM2B_PRIVATE_Unmarshal, "private area"));
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR srk, Srk());
  ESYS_TR handle = ESYS_TR_NONE;
  TSS2_RC rc = Esys_Load(esys_.get(), srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv,
                         &pub, &handle);
  if (rc != TSS2_RC_SUCCESS) {
    Status s = TssStatus(rc, "load the " + std::string(what));
    // A blob made by another TPM (or for another SRK) fails its integrity check here.
    if (TpmBaseCode(rc) == TPM2_RC_INTEGRITY) {
      return Unauthenticated(s.message() + ": this key was not created by this TPM");
    }
    return s;
  }
  return Handle(esys_.get(), handle);
}

Result<Tpm::Handle> Tpm::StartSession(TPM2_SE type, BusSecret secret, std::string_view what) {
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR salt_key, Srk());
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_AES;
  symmetric.keyBits.aes = 128;
  symmetric.mode.aes = TPM2_ALG_CFB;
  ESYS_TR session = ESYS_TR_NONE;
  TSS2_RC rc =
      Esys_StartAuthSession(esys_.get(), salt_key, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            ESYS_TR_NONE, nullptr, type, &symmetric, TPM2_ALG_SHA256, &session);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "start a session for " + std::string(what));
  Handle handle(esys_.get(), session);
  // Sessions stay open until the Handle flushes them, whatever the command's outcome.
  const TPMA_SESSION attributes =
      TPMA_SESSION_CONTINUESESSION |
      (secret == BusSecret::kInResponse ? TPMA_SESSION_ENCRYPT : TPMA_SESSION_DECRYPT);
  rc = Esys_TRSess_SetAttributes(esys_.get(), session, attributes, 0xff);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "set session attributes");
  return handle;
}

Result<KeyBlob> Tpm::CreateUnderSrk(const TPMT_PUBLIC& templ, std::string_view what,
                                    ByteSpan data) {
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR srk, Srk());
  TPM2B_SENSITIVE_CREATE sensitive{};
  // The TSS's buffer is larger than what TPMs accept (MAX_SYM_DATA).
  if (data.size() > kMaxSealedBytes) {
    return InvalidArgument("the " + std::string(what) + " is " + std::to_string(data.size()) +
                           " bytes; a TPM seals at most " + std::to_string(kMaxSealedBytes));
  }
  std::memcpy(sensitive.sensitive.data.buffer, data.data(), data.size());
  sensitive.sensitive.data.size = static_cast<UINT16>(data.size());
  // Data to seal crosses the bus encrypted: a salted session in the second slot encrypts the
  // first command parameter (inSensitive). The SRK's own authorisation stays the empty password.
  Handle encrypt;
  if (!data.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(encrypt, StartSession(TPM2_SE_HMAC, BusSecret::kInCommand, what));
  }
  TPM2B_PUBLIC in_public{};
  in_public.publicArea = templ;
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creation_pcr{};
  TPM2B_PRIVATE* raw_priv = nullptr;
  TPM2B_PUBLIC* raw_pub = nullptr;
  TSS2_RC rc =
      Esys_Create(esys_.get(), srk, ESYS_TR_PASSWORD, data.empty() ? ESYS_TR_NONE : encrypt.get(),
                  ESYS_TR_NONE, &sensitive, &in_public, &outside, &creation_pcr, &raw_priv,
                  &raw_pub, nullptr, nullptr, nullptr);
  SecureWipe(&sensitive, sizeof(sensitive));
  EsysOut<TPM2B_PRIVATE> priv(raw_priv);
  EsysOut<TPM2B_PUBLIC> pub(raw_pub);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "create the " + std::string(what));
  KeyBlob blob;
  CUSTODY_ASSIGN_OR_RETURN(blob.public_area,
                           MarshalTss(*pub, Tss2_MU_TPM2B_PUBLIC_Marshal, "public"));
  CUSTODY_ASSIGN_OR_RETURN(blob.private_area,
                           MarshalTss(*priv, Tss2_MU_TPM2B_PRIVATE_Marshal, "private"));
  // Load it once before handing it out: a blob that does not load is caught now, not at the
  // first attestation.
  CUSTODY_ASSIGN_OR_RETURN(Handle loaded, Load(blob, what));
  return blob;
}

// ----- identity
// -----------------------------------------------------------------------------------

Result<Tpm::Handle> Tpm::CreateEk(EkType type, Bytes* public_area) {
  TPM2B_SENSITIVE_CREATE sensitive{};
  TPM2B_PUBLIC in_public{};
  in_public.publicArea = EkTemplate(type);
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creation_pcr{};
  ESYS_TR ek = ESYS_TR_NONE;
  TPM2B_PUBLIC* raw_pub = nullptr;
  TSS2_RC rc = Esys_CreatePrimary(esys_.get(), ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD,
                                  ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &in_public, &outside,
                                  &creation_pcr, &ek, &raw_pub, nullptr, nullptr, nullptr);
  EsysOut<TPM2B_PUBLIC> pub(raw_pub);
  if (rc != TSS2_RC_SUCCESS) {
    return TssStatus(rc, std::string("create the ") + (type == EkType::kEcc ? "ECC" : "RSA") +
                             " endorsement key");
  }
  Handle handle(esys_.get(), ek);
  if (public_area != nullptr) {
    CUSTODY_ASSIGN_OR_RETURN(*public_area,
                             MarshalTss(*pub, Tss2_MU_TPM2B_PUBLIC_Marshal, "EK public"));
  }
  return handle;
}

Result<Endorsement> Tpm::ReadEndorsement(EkType type) {
  Endorsement out;
  CUSTODY_ASSIGN_OR_RETURN(Handle ek, CreateEk(type, &out.public_area));
  const TPM2_HANDLE cert_index = type == EkType::kEcc ? kEkCertNvIndexEcc : kEkCertNvIndexRsa;
  ESYS_TR raw_nv = ESYS_TR_NONE;
  if (Esys_TR_FromTPMPublic(esys_.get(), cert_index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            &raw_nv) != TSS2_RC_SUCCESS) {
    return out;  // no certificate stored: allowed, the custodian's policy decides
  }
  ResourceRef nv(esys_.get(), raw_nv);
  TPM2B_NV_PUBLIC* raw_nv_pub = nullptr;
  TSS2_RC rc = Esys_NV_ReadPublic(esys_.get(), nv.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                  &raw_nv_pub, nullptr);
  EsysOut<TPM2B_NV_PUBLIC> nv_pub(raw_nv_pub);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "read the EK certificate index");
  const UINT16 total = nv_pub->nvPublic.dataSize;
  // The index authorises reads either by its own (empty) authValue or by the owner.
  const ESYS_TR auth =
      (nv_pub->nvPublic.attributes & TPMA_NV_AUTHREAD) ? nv.get() : ESYS_TR_RH_OWNER;
  Bytes cert;
  cert.reserve(total);
  constexpr UINT16 kChunkBytes = 512;  // below every TPM's MAX_NV_BUFFER_SIZE
  while (cert.size() < total) {
    const UINT16 n = static_cast<UINT16>(std::min<size_t>(kChunkBytes, total - cert.size()));
    TPM2B_MAX_NV_BUFFER* raw_data = nullptr;
    rc = Esys_NV_Read(esys_.get(), auth, nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n,
                      static_cast<UINT16>(cert.size()), &raw_data);
    EsysOut<TPM2B_MAX_NV_BUFFER> data(raw_data);
    if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "read the EK certificate");
    cert.insert(cert.end(), data->buffer, data->buffer + data->size);
    if (data->size == 0) break;
  }
  // Makers pad the index; a DER certificate says its own length (SEQUENCE, long form).
  if (cert.size() >= 4 && cert[0] == 0x30 && cert[1] == 0x82) {
    size_t der_len = 4 + ((size_t{cert[2]} << 8) | cert[3]);
    if (der_len <= cert.size()) cert.resize(der_len);
  }
  out.certificate = std::move(cert);
  return out;
}

Result<KeyBlob> Tpm::CreateAttestationKey() {
  return CreateUnderSrk(AkTemplate(), "attestation key");
}

Result<KeyBlob> Tpm::CreateBindingKey(const crypto::Sha256Digest& auth_policy) {
  return CreateUnderSrk(BindingKeyTemplate(auth_policy), "binding key");
}

// ----- sealed data
// --------------------------------------------------------------------------------

Result<KeyBlob> Tpm::Seal(ByteSpan data) {
  if (data.empty()) return InvalidArgument("nothing to seal");
  return CreateUnderSrk(SealedDataTemplate(), "sealed data", data);
}

Result<SecretBuffer> Tpm::Unseal(const KeyBlob& sealed) {
  CUSTODY_ASSIGN_OR_RETURN(Handle object, Load(sealed, "sealed data"));
  CUSTODY_ASSIGN_OR_RETURN(Handle session,
                           StartSession(TPM2_SE_HMAC, BusSecret::kInResponse, "the sealed data"));
  TPM2B_SENSITIVE_DATA* raw_data = nullptr;
  TSS2_RC rc = Esys_Unseal(esys_.get(), object.get(), ESYS_TR_PASSWORD, session.get(), ESYS_TR_NONE,
                           &raw_data);
  EsysOut<TPM2B_SENSITIVE_DATA> data(raw_data);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "unseal the sealed data");
  Result<SecretBuffer> out = SecretBuffer::CopyFrom(ByteSpan(data->buffer, data->size));
  SecureWipe(data->buffer, sizeof(data->buffer));
  return out;
}

Result<SecretBuffer> Tpm::ActivateCredential(const KeyBlob& ak, EkType ek_type,
                                             const Credential& credential) {
  CUSTODY_ASSIGN_OR_RETURN(
      TPM2B_ID_OBJECT id_object,
      UnmarshalTss<TPM2B_ID_OBJECT>(credential.id_object, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal,
                                    "credential blob"));
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_ENCRYPTED_SECRET secret,
                           UnmarshalTss<TPM2B_ENCRYPTED_SECRET>(
                               credential.encrypted_secret,
                               Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, "credential secret"));
  CUSTODY_ASSIGN_OR_RETURN(Handle ak_handle, Load(ak, "attestation key"));
  CUSTODY_ASSIGN_OR_RETURN(Handle ek, CreateEk(ek_type, nullptr));
  // The EK is usable only through its policy, PolicySecret(endorsement hierarchy).
  CUSTODY_ASSIGN_OR_RETURN(
      Handle session, StartSession(TPM2_SE_POLICY, BusSecret::kInResponse, "the endorsement key"));
  TSS2_RC rc =
      Esys_PolicySecret(esys_.get(), ESYS_TR_RH_ENDORSEMENT, session.get(), ESYS_TR_PASSWORD,
                        ESYS_TR_NONE, ESYS_TR_NONE, nullptr, nullptr, nullptr, 0, nullptr, nullptr);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "authorise the endorsement key");
  TPM2B_DIGEST* raw_cert_info = nullptr;
  rc = Esys_ActivateCredential(esys_.get(), ak_handle.get(), ek.get(), ESYS_TR_PASSWORD,
                               session.get(), ESYS_TR_NONE, &id_object, &secret, &raw_cert_info);
  EsysOut<TPM2B_DIGEST> cert_info(raw_cert_info);
  if (rc != TSS2_RC_SUCCESS) {
    Status s = TssStatus(rc, "activate the credential");
    const TSS2_RC base = TpmBaseCode(rc);
    if (base == TPM2_RC_INTEGRITY || base == TPM2_RC_VALUE || base == TPM2_RC_ECC_POINT ||
        base == TPM2_RC_SIZE || base == TPM2_RC_NO_RESULT) {
      return Unauthenticated(s.message() +
                             ": the credential was not made for this TPM's EK and this AK");
    }
    return s;
  }
  Result<SecretBuffer> out = SecretBuffer::CopyFrom(ByteSpan(cert_info->buffer, cert_info->size));
  SecureWipe(cert_info->buffer, sizeof(cert_info->buffer));
  return out;
}

// ----- attestation
// --------------------------------------------------------------------------------

Result<Quote> Tpm::QuotePcrs(const KeyBlob& ak, const PcrSelection& selection, ByteSpan nonce) {
  if (selection.empty()) return InvalidArgument("a quote needs at least one PCR");
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_DATA qualifying, Nonce(nonce));
  CUSTODY_ASSIGN_OR_RETURN(TPML_PCR_SELECTION tpml, ToTpml(selection));
  CUSTODY_ASSIGN_OR_RETURN(Handle ak_handle, Load(ak, "attestation key"));
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the key's own: ECDSA/SHA-256
  for (int attempt = 0; attempt < kQuoteAttempts; ++attempt) {
    TPM2B_ATTEST* raw_attest = nullptr;
    TPMT_SIGNATURE* raw_sig = nullptr;
    TSS2_RC rc = Esys_Quote(esys_.get(), ak_handle.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                            ESYS_TR_NONE, &qualifying, &scheme, &tpml, &raw_attest, &raw_sig);
    EsysOut<TPM2B_ATTEST> attest(raw_attest);
    EsysOut<TPMT_SIGNATURE> sig(raw_sig);
    if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "quote PCRs " + selection.ToString());
    Quote quote;
    CUSTODY_ASSIGN_OR_RETURN(quote.attestation, ToAttestation(*attest, *sig));
    CUSTODY_ASSIGN_OR_RETURN(quote.pcrs, ReadPcrs(selection));
    // The values must be the quoted ones: a PCR extended between the two commands would make
    // the custodian reject the quote, so compare with the signed digest here and try again.
    CUSTODY_ASSIGN_OR_RETURN(TPMS_ATTEST parsed,
                             UnmarshalTss<TPMS_ATTEST>(quote.attestation.attest,
                                                       Tss2_MU_TPMS_ATTEST_Unmarshal, "quote"));
    CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest digest, PcrDigest(selection, quote.pcrs));
    const TPM2B_DIGEST& signed_digest = parsed.attested.quote.pcrDigest;
    if (signed_digest.size == digest.size() &&
        std::memcmp(signed_digest.buffer, digest.data(), digest.size()) == 0) {
      return quote;
    }
  }
  return Unavailable("PCRs " + selection.ToString() + " changed during each of " +
                     std::to_string(kQuoteAttempts) + " quote attempts");
}

Result<Attestation> Tpm::Certify(const KeyBlob& ak, const KeyBlob& object, ByteSpan nonce) {
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_DATA qualifying, Nonce(nonce));
  CUSTODY_ASSIGN_OR_RETURN(Handle ak_handle, Load(ak, "attestation key"));
  CUSTODY_ASSIGN_OR_RETURN(Handle object_handle, Load(object, "key to certify"));
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;
  TPM2B_ATTEST* raw_attest = nullptr;
  TPMT_SIGNATURE* raw_sig = nullptr;
  TSS2_RC rc =
      Esys_Certify(esys_.get(), object_handle.get(), ak_handle.get(), ESYS_TR_PASSWORD,
                   ESYS_TR_PASSWORD, ESYS_TR_NONE, &qualifying, &scheme, &raw_attest, &raw_sig);
  EsysOut<TPM2B_ATTEST> attest(raw_attest);
  EsysOut<TPMT_SIGNATURE> sig(raw_sig);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "certify the key with the attestation key");
  return ToAttestation(*attest, *sig);
}

// ----- key binding
// --------------------------------------------------------------------------------

Result<SecretBuffer> Tpm::EcdhZGen(const KeyBlob& binding, const ApprovedPolicy& approval,
                                   const crypto::P256PublicKey& policy_key,
                                   const crypto::P256PublicKey& peer) {
  if (approval.policy_ref.size() > sizeof(TPM2B_NONCE::buffer)) {
    return InvalidArgument("the approval's policyRef is too long");
  }
  CUSTODY_ASSIGN_OR_RETURN(
      TPMT_SIGNATURE signature,
      UnmarshalTss<TPMT_SIGNATURE>(approval.signature, Tss2_MU_TPMT_SIGNATURE_Unmarshal,
                                   "approval signature"));
  CUSTODY_ASSIGN_OR_RETURN(TPML_PCR_SELECTION pcrs, ToTpml(approval.selection));

  // 1. The TPM checks the custodian's signature over the approval and issues a ticket for it.
  TPM2B_PUBLIC external{};
  external.publicArea = PolicyKeyPublic(policy_key);
  ESYS_TR raw_key = ESYS_TR_NONE;
  TSS2_RC rc = Esys_LoadExternal(esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr,
                                 &external, ESYS_TR_RH_OWNER, &raw_key);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "load the custodian policy key");
  Handle key(esys_.get(), raw_key);
  TPM2B_NAME* raw_name = nullptr;
  rc = Esys_TR_GetName(esys_.get(), key.get(), &raw_name);
  EsysOut<TPM2B_NAME> key_name(raw_name);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "name the custodian policy key");
  TPM2B_NONCE policy_ref{};
  policy_ref.size = static_cast<UINT16>(approval.policy_ref.size());
  if (!approval.policy_ref.empty()) {
    std::memcpy(policy_ref.buffer, approval.policy_ref.data(), approval.policy_ref.size());
  }
  Bytes to_sign(approval.approved_digest.begin(), approval.approved_digest.end());
  to_sign.insert(to_sign.end(), approval.policy_ref.begin(), approval.policy_ref.end());
  const crypto::Sha256Digest a_hash = crypto::Sha256(to_sign);
  TPM2B_DIGEST a_hash_2b{};
  a_hash_2b.size = a_hash.size();
  std::memcpy(a_hash_2b.buffer, a_hash.data(), a_hash.size());
  TPMT_TK_VERIFIED* raw_ticket = nullptr;
  rc = Esys_VerifySignature(esys_.get(), key.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            &a_hash_2b, &signature, &raw_ticket);
  EsysOut<TPMT_TK_VERIFIED> ticket(raw_ticket);
  if (rc != TSS2_RC_SUCCESS) {
    if (TpmBaseCode(rc) == TPM2_RC_SIGNATURE) {
      return Unauthenticated(
          "the PCR policy approval is not signed by the custodian policy key pinned at "
          "enrollment");
    }
    return TssStatus(rc, "verify the PCR policy approval");
  }
  key = Handle();  // flush now: swtpm has few object slots

  // 2. A policy session that satisfies the binding key's authPolicy: PolicyPCR proves the
  // platform state, PolicyAuthorize swaps it for "whatever the custodian approved".
  CUSTODY_ASSIGN_OR_RETURN(Handle session,
                           StartSession(TPM2_SE_POLICY, BusSecret::kInResponse, "the binding key"));
  TPM2B_DIGEST pcr_digest{};
  pcr_digest.size = approval.pcr_digest.size();
  std::memcpy(pcr_digest.buffer, approval.pcr_digest.data(), approval.pcr_digest.size());
  rc = Esys_PolicyPCR(esys_.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                      &pcr_digest, &pcrs);
  if (rc != TSS2_RC_SUCCESS) {
    if (TpmBaseCode(rc) == TPM2_RC_VALUE) {
      return PermissionDenied("the platform state (PCRs " + approval.selection.ToString() +
                              ") is not the one the custodian approved: the binding key stays "
                              "locked");
    }
    return TssStatus(rc, "PolicyPCR");
  }
  TPM2B_DIGEST approved{};
  approved.size = approval.approved_digest.size();
  std::memcpy(approved.buffer, approval.approved_digest.data(), approval.approved_digest.size());
  rc = Esys_PolicyAuthorize(esys_.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                            &approved, &policy_ref, key_name.get(), ticket.get());
  if (rc != TSS2_RC_SUCCESS) {
    if (TpmBaseCode(rc) == TPM2_RC_VALUE) {
      return PermissionDenied(
          "the approved policy does not describe this platform state (its digest differs from "
          "the session's): the binding key stays locked");
    }
    return TssStatus(rc, "PolicyAuthorize");
  }

  // 3. The key agreement, inside the TPM; Z comes back encrypted by the salted session.
  CUSTODY_ASSIGN_OR_RETURN(Handle bound, Load(binding, "binding key"));
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_ECC_POINT in_point, EccPoint(peer));
  TPM2B_ECC_POINT* raw_out = nullptr;
  rc = Esys_ECDH_ZGen(esys_.get(), bound.get(), session.get(), ESYS_TR_NONE, ESYS_TR_NONE,
                      &in_point, &raw_out);
  EsysOut<TPM2B_ECC_POINT> out_point(raw_out);
  if (rc != TSS2_RC_SUCCESS) {
    if (TpmBaseCode(rc) == TPM2_RC_POLICY_FAIL || TpmBaseCode(rc) == TPM2_RC_PCR_CHANGED) {
      return PermissionDenied(TssStatus(rc, "ECDH_ZGen").message() +
                              ": the binding key's policy is not satisfied (another custodian "
                              "policy key, or the PCRs changed)");
    }
    return TssStatus(rc, "ECDH_ZGen with the binding key");
  }
  const TPM2B_ECC_PARAMETER& x = out_point->point.x;
  if (x.size == 0 || x.size > 32) return DataLoss("the TPM returned a malformed ECDH point");
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer z, SecretBuffer::Allocate(32));
  std::memcpy(z.data() + (32 - x.size), x.buffer, x.size);
  SecureWipe(out_point.get(), sizeof(TPM2B_ECC_POINT));
  return z;
}

Result<SecretBuffer> Tpm::UnwrapWithBindingKey(const KeyBlob& binding,
                                               const ApprovedPolicy& approval,
                                               const crypto::P256PublicKey& policy_key,
                                               ByteSpan envelope, ByteSpan context) {
  CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, UnmarshalPublic2B(binding.public_area));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey recipient, EccPublicKey(pub));
  auto zgen = [&](const crypto::P256PublicKey& ephemeral) {
    return EcdhZGen(binding, approval, policy_key, ephemeral);
  };
  return crypto::EciesUnwrapWith(zgen, recipient, envelope, context);
}

// ----- NV counter
// ----------------------------------------------------------------------------------

Result<ESYS_TR> Tpm::NvHandle(uint32_t index, ByteSpan auth) {
  ESYS_TR nv = ESYS_TR_NONE;
  TSS2_RC rc =
      Esys_TR_FromTPMPublic(esys_.get(), index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv);
  if (rc != TSS2_RC_SUCCESS) {
    return NotFound(TssStatus(rc, "NV index " + RcHex(index)).message() +
                    ": the counter is not defined (was the device enrolled?)");
  }
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_AUTH value, AuthValue(auth));
  rc = Esys_TR_SetAuth(esys_.get(), nv, &value);
  SecureWipe(&value, sizeof(value));
  if (rc != TSS2_RC_SUCCESS) {
    Esys_TR_Close(esys_.get(), &nv);
    return TssStatus(rc, "set the counter's authValue");
  }
  return nv;
}

Status Tpm::DefineCounter(uint32_t index, ByteSpan auth) {
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_AUTH value, AuthValue(auth));
  TPM2B_NV_PUBLIC info{};
  info.nvPublic = NvCounterPublic(index, /*written=*/false);
  ESYS_TR nv = ESYS_TR_NONE;
  TSS2_RC rc = Esys_NV_DefineSpace(esys_.get(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                   ESYS_TR_NONE, &value, &info, &nv);
  SecureWipe(&value, sizeof(value));
  if (rc != TSS2_RC_SUCCESS) {
    return TssStatus(rc, "define the usage counter at NV index " + RcHex(index));
  }
  ResourceRef ref(esys_.get(), nv);
  return OkStatus();
}

Status Tpm::UndefineCounter(uint32_t index) {
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR raw, NvHandle(index, {}));
  ResourceRef nv(esys_.get(), raw);
  TSS2_RC rc = Esys_NV_UndefineSpace(esys_.get(), ESYS_TR_RH_OWNER, nv.get(), ESYS_TR_PASSWORD,
                                     ESYS_TR_NONE, ESYS_TR_NONE);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "remove NV index " + RcHex(index));
  nv.Forget();
  return OkStatus();
}

Result<uint64_t> Tpm::IncrementCounter(uint32_t index, ByteSpan auth) {
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR raw, NvHandle(index, auth));
  ResourceRef nv(esys_.get(), raw);
  TSS2_RC rc = Esys_NV_Increment(esys_.get(), nv.get(), nv.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "increment the usage counter");
  return ReadCounterValue(nv.get(), index);
}

Result<uint64_t> Tpm::ReadCounter(uint32_t index, ByteSpan auth) {
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR raw, NvHandle(index, auth));
  ResourceRef nv(esys_.get(), raw);
  return ReadCounterValue(nv.get(), index);
}

// ESAPI hands out one ESYS_TR per NV index and context, so a method holds it once and passes it
// on rather than asking for it again.
Result<uint64_t> Tpm::ReadCounterValue(ESYS_TR nv, uint32_t index) {
  TPM2B_MAX_NV_BUFFER* raw_data = nullptr;
  TSS2_RC rc = Esys_NV_Read(esys_.get(), nv, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, 8, 0,
                            &raw_data);
  EsysOut<TPM2B_MAX_NV_BUFFER> data(raw_data);
  if (rc != TSS2_RC_SUCCESS) {
    if (TpmBaseCode(rc) == TPM2_RC_NV_UNINITIALIZED) {
      return FailedPrecondition("the usage counter at NV index " + RcHex(index) +
                                " has never been incremented");
    }
    return TssStatus(rc, "read the usage counter");
  }
  if (data->size != 8)
    return DataLoss("the usage counter read back " + std::to_string(data->size) +
                    " bytes, expected 8");
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | data->buffer[i];
  return value;
}

Result<Attestation> Tpm::CertifyCounter(const KeyBlob& ak, uint32_t index, ByteSpan auth,
                                        ByteSpan nonce) {
  CUSTODY_ASSIGN_OR_RETURN(TPM2B_DATA qualifying, Nonce(nonce));
  CUSTODY_ASSIGN_OR_RETURN(Handle ak_handle, Load(ak, "attestation key"));
  CUSTODY_ASSIGN_OR_RETURN(ESYS_TR raw, NvHandle(index, auth));
  ResourceRef nv(esys_.get(), raw);
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;
  TPM2B_ATTEST* raw_attest = nullptr;
  TPMT_SIGNATURE* raw_sig = nullptr;
  TSS2_RC rc = Esys_NV_Certify(esys_.get(), ak_handle.get(), nv.get(), nv.get(), ESYS_TR_PASSWORD,
                               ESYS_TR_PASSWORD, ESYS_TR_NONE, &qualifying, &scheme, 8, 0,
                               &raw_attest, &raw_sig);
  EsysOut<TPM2B_ATTEST> attest(raw_attest);
  EsysOut<TPMT_SIGNATURE> sig(raw_sig);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "certify the usage counter");
  return ToAttestation(*attest, *sig);
}

// ----- platform state
// ------------------------------------------------------------------------------

Result<TpmProperties> Tpm::Describe() {
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  TSS2_RC rc = Esys_GetCapability(esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                  TPM2_CAP_TPM_PROPERTIES, TPM2_PT_FIXED, TPM2_MAX_TPM_PROPERTIES,
                                  &more, &raw);
  EsysOut<TPMS_CAPABILITY_DATA> data(raw);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "read the TPM's properties");
  std::map<TPM2_PT, uint32_t> values;
  const TPML_TAGGED_TPM_PROPERTY& props = data->data.tpmProperties;
  for (UINT32 i = 0; i < props.count && i < TPM2_MAX_TPM_PROPERTIES; ++i) {
    values[props.tpmProperty[i].property] = props.tpmProperty[i].value;
  }
  auto chars = [&](TPM2_PT pt) {
    std::string out;
    const uint32_t v = values.count(pt) != 0 ? values[pt] : 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      const char c = static_cast<char>((v >> shift) & 0xff);
      if (c >= 0x20 && c < 0x7f) out.push_back(c);
    }
    return out;
  };
  TpmProperties out;
  out.manufacturer = chars(TPM2_PT_MANUFACTURER);
  for (TPM2_PT pt = TPM2_PT_VENDOR_STRING_1; pt <= TPM2_PT_VENDOR_STRING_4; ++pt) {
    out.vendor += chars(pt);
  }
  out.firmware_version =
      (uint64_t{values[TPM2_PT_FIRMWARE_VERSION_1]} << 32) | values[TPM2_PT_FIRMWARE_VERSION_2];
  out.spec_revision = values[TPM2_PT_REVISION];
  return out;
}

Result<TimeInfo> Tpm::ReadClock() {
  TPMS_TIME_INFO* raw = nullptr;
  TSS2_RC rc = Esys_ReadClock(esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &raw);
  EsysOut<TPMS_TIME_INFO> info(raw);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "read the TPM clock");
  TimeInfo out;
  out.time_ms = info->time;
  out.clock_ms = info->clockInfo.clock;
  out.reset_count = info->clockInfo.resetCount;
  out.restart_count = info->clockInfo.restartCount;
  out.safe = info->clockInfo.safe == TPM2_YES;
  return out;
}

Result<PcrValues> Tpm::ReadPcrs(const PcrSelection& selection) {
  PcrValues values;
  PcrSelection pending = selection;
  // TPM2_PCR_Read returns at most 8 digests per call; ask again for what it left out.
  for (int round = 0; !pending.empty() && round <= static_cast<int>(kPcrCount); ++round) {
    CUSTODY_ASSIGN_OR_RETURN(TPML_PCR_SELECTION in, ToTpml(pending));
    TPML_PCR_SELECTION* raw_out_sel = nullptr;
    TPML_DIGEST* raw_digests = nullptr;
    TSS2_RC rc = Esys_PCR_Read(esys_.get(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &in, nullptr,
                               &raw_out_sel, &raw_digests);
    EsysOut<TPML_PCR_SELECTION> out_sel(raw_out_sel);
    EsysOut<TPML_DIGEST> digests(raw_digests);
    if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "read PCRs " + pending.ToString());
    UINT32 next = 0;
    std::vector<uint32_t> left;
    for (UINT32 s = 0; s < out_sel->count; ++s) {
      const TPMS_PCR_SELECTION& sel = out_sel->pcrSelections[s];
      if (sel.hash != TPM2_ALG_SHA256) continue;
      for (uint32_t pcr = 0; pcr < kPcrCount; ++pcr) {
        if (pcr / 8 >= sel.sizeofSelect || (sel.pcrSelect[pcr / 8] & (1u << (pcr % 8))) == 0) {
          continue;
        }
        if (next >= digests->count || digests->digests[next].size != 32) {
          return DataLoss("the TPM returned a malformed PCR read");
        }
        crypto::Sha256Digest d{};
        std::memcpy(d.data(), digests->digests[next].buffer, 32);
        values[pcr] = d;
        ++next;
      }
    }
    for (uint32_t pcr : pending.pcrs) {
      if (!values.contains(pcr)) left.push_back(pcr);
    }
    if (left.size() == pending.pcrs.size()) {
      return Unimplemented("the TPM has no SHA-256 bank for PCRs " + pending.ToString() +
                           " (enable it in the firmware's TPM settings)");
    }
    pending.pcrs = std::move(left);
  }
  return values;
}

Status Tpm::ExtendPcr(uint32_t pcr, ByteSpan event) {
  if (pcr >= kPcrCount) return InvalidArgument("PCR " + std::to_string(pcr) + " does not exist");
  TPML_DIGEST_VALUES digests{};
  digests.count = 1;
  digests.digests[0].hashAlg = TPM2_ALG_SHA256;
  crypto::Sha256Digest d = crypto::Sha256(event);
  std::memcpy(digests.digests[0].digest.sha256, d.data(), d.size());
  TSS2_RC rc = Esys_PCR_Extend(esys_.get(), ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                               ESYS_TR_NONE, &digests);
  if (rc != TSS2_RC_SUCCESS) return TssStatus(rc, "extend PCR " + std::to_string(pcr));
  return OkStatus();
}

}  // namespace custody::tpm
