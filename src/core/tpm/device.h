// The device side of Custody's TPM use (DESIGN.md §4, §7), on tpm2-tss ESAPI: identity (EK, AK),
// attestation (quote, certify), key binding (a TPM-held ECDH key usable only under a
// custodian-approved PCR policy), the NV counter that anchors metering, and the TPM clock.
//
// A Tpm owns one TCTI connection and one ESYS context. It works against /dev/tpmrm0 (the kernel
// resource manager) and against swtpm directly, which has no resource manager and serves one
// connection at a time: so every transient object and session a method creates is flushed
// before the method returns (the SRK, recreated on first use, is flushed on destruction), and
// Open() flushes transient objects and sessions left behind by a process that died mid-command.
//
// Keys live outside the TPM as KeyBlobs (public + TPM-wrapped private) under the SRK, which the
// TPM derives again from its storage seed whenever it is needed: they survive reboots and agent
// restarts, and only this TPM can load them.
//
// Errors (tss_status.h): TPM and transport failures carry the decoded TPM text. Specific ones:
//   kUnavailable       the TPM cannot be reached (wrong TCTI, swtpm not running, busy)
//   kPermissionDenied  a policy or authorisation check in the TPM failed: the PCRs are not in
//                      the approved state, the approval is not for this key, a wrong NV auth
//   kUnauthenticated   the approval's signature does not verify under the pinned policy key;
//                      a credential that is not for this TPM/AK (ActivateCredential)
//   kAlreadyExists     DefineCounter on an index that exists
//   kNotFound          no such NV index
//
// Threading: a Tpm is not thread-safe; the TPM serialises commands anyway. Use one per thread,
// or one behind a mutex. tpm2-tss's own stderr logging is off unless TSS2_LOG asks for it
// (tss_status.cc).
#pragma once

#include <tss2/tss2_esys.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/tpm/tpm_types.h"
#include "core/tpm/tss_ptr.h"

namespace custody::tpm {

// The kernel resource manager; tests use "swtpm:path=/abs/dir/sock".
inline constexpr std::string_view kDefaultTcti = "device:/dev/tpmrm0";

// Where Custody defines its usage counter unless configured otherwise (owner range).
inline constexpr uint32_t kDefaultCounterIndex = 0x01000C57;

struct Endorsement {
  Bytes public_area;                 // TPM2B_PUBLIC of the EK (from EkTemplate)
  std::optional<Bytes> certificate;  // DER, from the TCG NV index, when the maker stored one
};

// Fixed properties of the TPM (TPM2_GetCapability, TPM_PT_*), for operators.
struct TpmProperties {
  std::string manufacturer;  // TPM_PT_MANUFACTURER as its 4 ASCII characters, e.g. "IFX", "IBM"
  std::string vendor;        // TPM_PT_VENDOR_STRING_1..4, trailing NULs removed
  uint64_t firmware_version = 0;  // TPM_PT_FIRMWARE_VERSION_1 << 32 | _2
  uint32_t spec_revision = 0;     // TPM_PT_REVISION: the library spec revision times 100
};

class Tpm {
 public:
  // Connects through `tcti` ("device:/dev/tpmrm0", "swtpm:path=...", any tctildr string).
  static Result<std::unique_ptr<Tpm>> Open(const std::string& tcti);
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  const std::string& tcti() const { return tcti_; }

  // ----- identity ------------------------------------------------------------------------------
  // Derives the EK (EkTemplate(type)) and reads its certificate from the TCG NV index if present.
  Result<Endorsement> ReadEndorsement(EkType type);

  // New restricted ECDSA P-256 signing key under the SRK (AkTemplate).
  Result<KeyBlob> CreateAttestationKey();

  // New ECC P-256 binding key under the SRK whose use needs `auth_policy`
  // (BindingKeyAuthPolicy of the custodian's policy key).
  Result<KeyBlob> CreateBindingKey(const crypto::Sha256Digest& auth_policy);

  // TPM2_ActivateCredential: releases the secret only if `credential` was made for this TPM's
  // EK and for the Name of `ak`. The EK is authorised with PolicySecret(endorsement), and the
  // released secret travels encrypted (a salted session) on the TPM bus.
  Result<SecretBuffer> ActivateCredential(const KeyBlob& ak, EkType ek_type,
                                          const Credential& credential);

  // ----- attestation ---------------------------------------------------------------------------
  // TPM2_Quote of `selection` (SHA-256 bank) over `nonce` (1..64 bytes) with the AK, and the
  // quoted PCR values; retried if a PCR changes between the quote and the read.
  Result<Quote> QuotePcrs(const KeyBlob& ak, const PcrSelection& selection, ByteSpan nonce);

  // TPM2_Certify of `object` (a key under the SRK) by the AK, over `nonce`.
  Result<Attestation> Certify(const KeyBlob& ak, const KeyBlob& object, ByteSpan nonce);

  // ----- key binding ---------------------------------------------------------------------------
  // TPM2_ECDH_ZGen with the binding key: x(d·peer). Runs in a salted, response-encrypting policy
  // session: TPM2_PolicyPCR(approval.selection, approval.pcr_digest), then
  // TPM2_PolicyAuthorize(approval) with a ticket from TPM2_VerifySignature by `policy_key` (the
  // custodian policy key pinned at enrollment). Refused (kPermissionDenied) when the PCRs differ
  // from the approved state or the approval is not for this key's policy.
  Result<SecretBuffer> EcdhZGen(const KeyBlob& binding, const ApprovedPolicy& approval,
                                const crypto::P256PublicKey& policy_key,
                                const crypto::P256PublicKey& peer);

  // Unwraps an ECIES envelope (crypto::EciesWrap / WrapToBindingKey) with the binding key.
  Result<SecretBuffer> UnwrapWithBindingKey(const KeyBlob& binding, const ApprovedPolicy& approval,
                                            const crypto::P256PublicKey& policy_key,
                                            ByteSpan envelope, ByteSpan context);

  // ----- sealed data ---------------------------------------------------------------------------
  // Seals 1..kMaxSealedBytes bytes into a keyed-hash object under the SRK (SealedDataTemplate):
  // the blob opens only in this TPM. The data crosses the bus encrypted (a salted session
  // encrypts the command's sensitive area).
  Result<KeyBlob> Seal(ByteSpan data);
  // TPM2_Unseal of a Seal blob, its answer encrypted on the bus. kUnauthenticated for a blob of
  // another TPM.
  Result<SecretBuffer> Unseal(const KeyBlob& sealed);

  // ----- NV counter ----------------------------------------------------------------------------
  // Defines the counter (NvCounterPublic) with `auth` (its authValue, up to 32 bytes), using the
  // owner hierarchy's (empty) authorisation. It reads as unwritten until the first increment.
  Status DefineCounter(uint32_t index, ByteSpan auth);
  // Removes the counter (owner authorisation). For tests and decommissioning.
  Status UndefineCounter(uint32_t index);
  // TPM2_NV_Increment; returns the new value.
  Result<uint64_t> IncrementCounter(uint32_t index, ByteSpan auth);
  // The current value; kFailedPrecondition if it was never incremented.
  Result<uint64_t> ReadCounter(uint32_t index, ByteSpan auth);
  // TPM2_NV_Certify of the counter's 8 bytes by the AK over `nonce`.
  Result<Attestation> CertifyCounter(const KeyBlob& ak, uint32_t index, ByteSpan auth,
                                     ByteSpan nonce);

  // ----- platform state ------------------------------------------------------------------------
  Result<TpmProperties> Describe();
  Result<TimeInfo> ReadClock();
  Result<PcrValues> ReadPcrs(const PcrSelection& selection);
  // Extends PCR `pcr` (SHA-256 bank) with SHA-256(`event`), as measured boot would. For tests
  // and tools; the agent never extends PCRs.
  Status ExtendPcr(uint32_t pcr, ByteSpan event);

 private:
  class Handle;  // a transient object or session, flushed on destruction
  Tpm(std::string tcti, TctiPtr tcti_ctx, EsysPtr esys);
  Status FlushLeftovers();
  Result<ESYS_TR> Srk();
  Result<Handle> Load(const KeyBlob& key, std::string_view what);
  Result<Handle> CreateEk(EkType type, Bytes* public_area);
  // Which secret a session keeps encrypted on the bus: the first parameter of the answer (a
  // secret the TPM releases) or of the command (a secret sent to it).
  enum class BusSecret { kInResponse, kInCommand };
  // A session salted with the SRK that encrypts `secret` (AES-128-CFB).
  Result<Handle> StartSession(TPM2_SE type, BusSecret secret, std::string_view what);
  // `data`: the sensitive data of a sealed object (empty for keys the TPM generates).
  Result<KeyBlob> CreateUnderSrk(const TPMT_PUBLIC& templ, std::string_view what,
                                 ByteSpan data = {});
  Result<ESYS_TR> NvHandle(uint32_t index, ByteSpan auth);
  Result<uint64_t> ReadCounterValue(ESYS_TR nv, uint32_t index);

  std::string tcti_;
  TctiPtr tcti_ctx_;
  EsysPtr esys_;
  ESYS_TR srk_ = ESYS_TR_NONE;
};

}  // namespace custody::tpm
