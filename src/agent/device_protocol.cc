#include "agent/device_protocol.h"

#include "core/protocol/envelope.h"
#include "core/tpm/objects.h"
#include "core/tpm/policy.h"
#include "core/tpm/verifier.h"

namespace custody::agent {
namespace {

Result<crypto::Ed25519PublicKey> LeaseKey(const DeviceIdentity& id) {
  Result<crypto::Ed25519PublicKey> key = crypto::Ed25519PublicKey::FromRaw(id.lease_public);
  if (!key) return FailedPrecondition("no custodian lease key is pinned (enroll first)");
  return key;
}

}  // namespace

Result<EnrollmentInProgress> BeginEnrollment(tpm::Tpm& tpm, const std::string& token,
                                             tpm::EkType ek_type, uint32_t counter_index,
                                             uint64_t counter_unit) {
  if (counter_unit < protocol::kMinCounterUnit || counter_unit > protocol::kMaxCounterUnit) {
    return InvalidArgument("counter unit " + std::to_string(counter_unit) + " is outside " +
                           std::to_string(protocol::kMinCounterUnit) + ".." +
                           std::to_string(protocol::kMaxCounterUnit) +
                           " (requests per TPM counter increment)");
  }
  EnrollmentInProgress e;
  e.identity.ek_type = ek_type;
  e.identity.counter_index = counter_index;
  e.identity.counter_unit = counter_unit;
  Result<tpm::Endorsement> ek = tpm.ReadEndorsement(ek_type);
  if (!ek) return ek.error();
  CUSTODY_ASSIGN_OR_RETURN(e.identity.ak, tpm.CreateAttestationKey());
  CUSTODY_ASSIGN_OR_RETURN(e.identity.counter_auth, crypto::RandomBytes(32));
  // A counter left by an earlier enrollment of this TPM is replaced: its authValue is lost with
  // the old state. Its value is not: a TPM starts a new counter above every value it has had.
  Status defined = tpm.DefineCounter(counter_index, e.identity.counter_auth);
  if (defined.code() == StatusCode::kAlreadyExists) {
    CUSTODY_RETURN_IF_ERROR(tpm.UndefineCounter(counter_index));
    defined = tpm.DefineCounter(counter_index, e.identity.counter_auth);
  }
  CUSTODY_RETURN_IF_ERROR(defined);
  CUSTODY_RETURN_IF_ERROR(tpm.IncrementCounter(counter_index, e.identity.counter_auth).status());
  e.request.token = token;
  e.request.ek_type = ek_type == tpm::EkType::kEcc ? 0 : 1;
  e.request.ek_public = ek->public_area;
  e.request.ek_certificate = ek->certificate;
  e.request.ak_public = e.identity.ak.public_area;
  return e;
}

Result<protocol::EnrollCompleteRequest> ContinueEnrollment(
    tpm::Tpm& tpm, EnrollmentInProgress& e, const protocol::EnrollBeginResponse& challenge,
    ByteSpan tls_spki) {
  CUSTODY_ASSIGN_OR_RETURN(
      SecretBuffer secret,
      tpm.ActivateCredential(e.identity.ak, e.identity.ek_type, challenge.credential));
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey policy,
                           crypto::P256PublicKey::FromUncompressed(challenge.policy_public));
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest auth_policy, tpm::BindingKeyAuthPolicy(policy));
  CUSTODY_ASSIGN_OR_RETURN(e.identity.binding, tpm.CreateBindingKey(auth_policy));
  e.identity.policy_public = challenge.policy_public;
  protocol::EnrollCompleteRequest r;
  r.enrollment_id = challenge.enrollment_id;
  r.activated_secret.assign(secret.data(), secret.data() + secret.size());
  r.binding_public = e.identity.binding.public_area;
  CUSTODY_ASSIGN_OR_RETURN(r.binding_certify,
                           tpm.Certify(e.identity.ak, e.identity.binding, challenge.certify_nonce));
  r.counter_index = e.identity.counter_index;
  CUSTODY_ASSIGN_OR_RETURN(r.counter_certify,
                           tpm.CertifyCounter(e.identity.ak, e.identity.counter_index,
                                              e.identity.counter_auth, challenge.certify_nonce));
  r.tls_public_key.assign(tls_spki.begin(), tls_spki.end());
  r.counter_unit = e.identity.counter_unit;
  return r;
}

Status FinishEnrollment(EnrollmentInProgress& e, const protocol::EnrollCompleteResponse& result) {
  if (result.policy_public != e.identity.policy_public) {
    return Unauthenticated(
        "the custodian answered with another policy key than it gave at the "
        "start of enrollment");
  }
  CUSTODY_RETURN_IF_ERROR(crypto::Ed25519PublicKey::FromRaw(result.lease_public).status());
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection,
                           tpm::PcrSelection::Of(result.pcr_selection));
  if (selection.empty()) return InvalidArgument("the custodian gave an empty PCR selection");
  e.identity.device_id = result.device_id;
  e.identity.pcr_selection = selection.pcrs;
  e.identity.lease_public = result.lease_public;
  e.identity.ca_certificate_pem = result.ca_certificate_pem;
  e.identity.certificate_pem = result.certificate_pem;
  return OkStatus();
}

Result<protocol::AttestRequest> MakeAttestation(tpm::Tpm& tpm, const DeviceIdentity& id,
                                                ByteSpan nonce) {
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection, tpm::PcrSelection::Of(id.pcr_selection));
  protocol::AttestRequest r;
  r.nonce.assign(nonce.begin(), nonce.end());
  CUSTODY_ASSIGN_OR_RETURN(r.quote, tpm.QuotePcrs(id.ak, selection, nonce));
  return r;
}

namespace {

Bytes TlsKeyAad(std::string_view device_id) {
  constexpr std::string_view kContext = "custody/tls-key/v1";
  Bytes aad(kContext.begin(), kContext.end());
  aad.push_back(0);
  aad.insert(aad.end(), device_id.begin(), device_id.end());
  return aad;
}

}  // namespace

Result<SealedTlsKey> SealTlsKey(tpm::Tpm& tpm, std::string_view device_id, ByteSpan pem) {
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer key, SecretBuffer::Allocate(crypto::kAes256KeyBytes));
  CUSTODY_RETURN_IF_ERROR(crypto::RandomBytes(key.span()));
  SealedTlsKey out;
  CUSTODY_ASSIGN_OR_RETURN(out.sealed_key, tpm.Seal(key.span()));
  CUSTODY_ASSIGN_OR_RETURN(out.nonce, crypto::RandomBytes(crypto::kGcmNonceBytes));
  CUSTODY_ASSIGN_OR_RETURN(out.ciphertext,
                           crypto::AesGcmSeal(key.span(), out.nonce, TlsKeyAad(device_id), pem));
  return out;
}

Result<SecretBuffer> OpenTlsKey(tpm::Tpm& tpm, std::string_view device_id,
                                const SealedTlsKey& key) {
  Result<SecretBuffer> aes = tpm.Unseal(key.sealed_key);
  if (!aes) {
    return Status(aes.error().code(),
                  "cannot unseal the device's TLS key (tls-key.sealed): " + aes.error().message());
  }
  Result<SecretBuffer> pem =
      crypto::AesGcmOpen(aes->span(), key.nonce, TlsKeyAad(device_id), key.ciphertext);
  if (!pem) {
    return Unauthenticated(
        "the device's TLS key (tls-key.sealed) does not open: it was altered, or sealed for "
        "another device than " +
        std::string(device_id));
  }
  return pem;
}

Result<uint32_t> QuotedResetOffset(tpm::Tpm& tpm, const DeviceIdentity& id, uint32_t reset_count) {
  tpm::QuoteExpectation expect;
  expect.ak_public = id.ak.public_area;
  CUSTODY_ASSIGN_OR_RETURN(expect.nonce, crypto::RandomBytes(32));
  CUSTODY_ASSIGN_OR_RETURN(expect.selection, tpm::PcrSelection::Of(id.pcr_selection));
  CUSTODY_ASSIGN_OR_RETURN(tpm::Quote quote, tpm.QuotePcrs(id.ak, expect.selection, expect.nonce));
  Result<tpm::QuoteResult> quoted = tpm::VerifyQuote(quote, expect);
  if (!quoted) {
    return Status(quoted.error().code(), "this TPM's quote does not verify with the enrolled AK (" +
                                             quoted.error().message() +
                                             "): the state directory is not this TPM's");
  }
  return static_cast<uint32_t>(quoted->clock.reset_count - reset_count);
}

Result<protocol::UsageRequest> MakeUsageReport(tpm::Tpm& tpm, const DeviceIdentity& id,
                                               ByteSpan nonce, const std::string& report_id,
                                               std::vector<protocol::UsageRequest::Count> counts,
                                               uint64_t prepaid,
                                               std::optional<std::string> anomaly) {
  protocol::UsageRequest r;
  r.report_id = report_id;
  r.nonce.assign(nonce.begin(), nonce.end());
  CUSTODY_ASSIGN_OR_RETURN(r.counter_certify,
                           tpm.CertifyCounter(id.ak, id.counter_index, id.counter_auth, nonce));
  r.counts = std::move(counts);
  r.prepaid = prepaid;
  r.anomaly = std::move(anomaly);
  return r;
}

Result<protocol::LeasePayload> OpenLease(const DeviceIdentity& id, const nlohmann::json& envelope) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::Ed25519PublicKey key, LeaseKey(id));
  CUSTODY_ASSIGN_OR_RETURN(Bytes payload,
                           protocol::OpenEnvelope(envelope, protocol::kLeaseDocument, key));
  CUSTODY_ASSIGN_OR_RETURN(protocol::LeasePayload lease, protocol::ParseLeasePayload(payload));
  if (lease.device_id != id.device_id) {
    return Unauthenticated("lease " + lease.lease_id + " is for device " + lease.device_id +
                           ", not this one (" + id.device_id + ")");
  }
  if (lease.counter_unit != id.counter_unit) {
    return FailedPrecondition("lease " + lease.lease_id + " counts " +
                              std::to_string(lease.counter_unit) +
                              " requests per counter step, but this device enrolled with " +
                              std::to_string(id.counter_unit) + "; refusing it");
  }
  return lease;
}

Result<protocol::RevocationPayload> OpenRevocation(const DeviceIdentity& id,
                                                   const nlohmann::json& envelope) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::Ed25519PublicKey key, LeaseKey(id));
  CUSTODY_ASSIGN_OR_RETURN(Bytes payload,
                           protocol::OpenEnvelope(envelope, protocol::kRevocationDocument, key));
  CUSTODY_ASSIGN_OR_RETURN(protocol::RevocationPayload r,
                           protocol::ParseRevocationPayload(payload));
  if (r.device_id != id.device_id) {
    return Unauthenticated("revocation is for device " + r.device_id + ", not this one");
  }
  return r;
}

Result<SecretBuffer> UnwrapLeaseKey(tpm::Tpm& tpm, const DeviceIdentity& id,
                                    const protocol::LeasePayload& lease) {
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey policy,
                           crypto::P256PublicKey::FromUncompressed(id.policy_public));
  const Bytes context = protocol::LeaseDekContext(id.device_id, lease.model_id);
  Status last = PermissionDenied("the lease carries no approved platform state");
  for (const tpm::ApprovedPolicy& approval : lease.approvals) {
    Result<SecretBuffer> dek =
        tpm.UnwrapWithBindingKey(id.binding, approval, policy, lease.wrapped_dek, context);
    if (dek) return dek;
    last = dek.error();
    // Only "not this state" moves on to the next approval; anything else is final.
    if (last.code() != StatusCode::kPermissionDenied) return last;
  }
  return last;
}

}  // namespace custody::agent
