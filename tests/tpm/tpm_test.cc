// The TPM layer end to end against real software TPMs: each test starts its own swtpm(s)
// (tests/support/swtpm_fixture.h), runs the device side (custody::tpm::Tpm, ESAPI) and checks
// the result with the verifier side (pure code, as the custodian runs it). Round trips first,
// then the attacks of docs/THREATS.md ("TPM"), each expecting its specific refusal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/base/bytes.h"
#include "core/crypto/crypto.h"
#include "core/tpm/credential.h"
#include "core/tpm/device.h"
#include "core/tpm/ek_cert.h"
#include "core/tpm/objects.h"
#include "core/tpm/policy.h"
#include "core/tpm/verifier.h"
#include "tests/support/must.h"
#include "tests/support/swtpm_fixture.h"

namespace custody::tpm {
namespace {

using testing::Swtpm;

void ExpectError(const Status& s, StatusCode code, const std::string& text) {
  EXPECT_EQ(s.code(), code) << s.ToString();
  EXPECT_NE(s.message().find(text), std::string::npos)
      << "message lacks '" << text << "': " << s.ToString();
}

const PcrSelection& PolicyPcrs() {
  static const PcrSelection s = PcrSelection::Of({0, 2, 4, 7}).value();
  return s;
}

Bytes FreshNonce() { return crypto::RandomBytes(32).value(); }

// A device as the agent will hold it: a TPM connection, its AK and binding key, and the
// custodian's policy key the binding key answers to.
struct Device {
  std::unique_ptr<Swtpm> swtpm;
  std::unique_ptr<Tpm> tpm;
  KeyBlob ak;
  KeyBlob binding;
};

Device MakeDevice(const crypto::P256PublicKey& policy_key, Swtpm::Options options = {}) {
  Device d;
  d.swtpm = MUST(Swtpm::Start(std::move(options)));
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  d.ak = MUST(d.tpm->CreateAttestationKey());
  d.binding = MUST(d.tpm->CreateBindingKey(MUST(BindingKeyAuthPolicy(policy_key))));
  return d;
}

class TpmTest : public ::testing::Test {
 protected:
  crypto::P256PrivateKey policy_key_ = crypto::P256PrivateKey::Generate().value();
};

// ----- identity and enrollment ----------------------------------------------------------------

TEST_F(TpmTest, EnrollmentFlowActivatesTheCredentialForThisAkOnly) {
  Device d = MakeDevice(policy_key_.public_key());
  Endorsement ek = MUST(d.tpm->ReadEndorsement(EkType::kEcc));
  ASSERT_OK(CheckAkPublic(d.ak.public_area));
  Bytes ak_name = MUST(ObjectName(MUST(UnmarshalPublic2B(d.ak.public_area))));
  Bytes secret = MUST(crypto::RandomBytes(32));
  Credential cred = MUST(MakeCredential(ek.public_area, ak_name, secret));
  SecretBuffer released = MUST(d.tpm->ActivateCredential(d.ak, EkType::kEcc, cred));
  EXPECT_TRUE(ConstantTimeEquals(released.span(), secret));

  // The same credential is useless for another AK of the same TPM.
  KeyBlob other_ak = MUST(d.tpm->CreateAttestationKey());
  Result<SecretBuffer> wrong = d.tpm->ActivateCredential(other_ak, EkType::kEcc, cred);
  ASSERT_FALSE(wrong.has_value());
  ExpectError(wrong.error(), StatusCode::kUnauthenticated, "not made for this TPM");
}

TEST_F(TpmTest, RsaEndorsementKeyWorksToo) {
  Device d = MakeDevice(policy_key_.public_key());
  Endorsement ek = MUST(d.tpm->ReadEndorsement(EkType::kRsa));
  Bytes ak_name = MUST(ObjectName(MUST(UnmarshalPublic2B(d.ak.public_area))));
  Bytes secret = MUST(crypto::RandomBytes(20));
  Credential cred = MUST(MakeCredential(ek.public_area, ak_name, secret));
  SecretBuffer released = MUST(d.tpm->ActivateCredential(d.ak, EkType::kRsa, cred));
  EXPECT_TRUE(ConstantTimeEquals(released.span(), secret));
}

TEST_F(TpmTest, AkNotActivatedAgainstThisEkIsRefused) {
  Device a = MakeDevice(policy_key_.public_key());
  Device b = MakeDevice(policy_key_.public_key());
  // The custodian made the credential for B's EK; A presents it with its own AK name.
  Endorsement ek_b = MUST(b.tpm->ReadEndorsement(EkType::kEcc));
  Bytes ak_a_name = MUST(ObjectName(MUST(UnmarshalPublic2B(a.ak.public_area))));
  Credential cred =
      MUST(MakeCredential(ek_b.public_area, ak_a_name, MUST(crypto::RandomBytes(32))));
  Result<SecretBuffer> r = a.tpm->ActivateCredential(a.ak, EkType::kEcc, cred);
  ASSERT_FALSE(r.has_value());
  ExpectError(r.error(), StatusCode::kUnauthenticated, "not made for this TPM");
}

TEST_F(TpmTest, EkCertificatesChainToTheMakersCaAndMatchTheEk) {
  auto swtpm = MUST(Swtpm::Start({.ek_certificates = true}));
  auto other = MUST(Swtpm::Start({.ek_certificates = true}));  // another maker's CA
  Endorsement ecc, rsa;
  {
    auto tpm = MUST(Tpm::Open(swtpm->tcti()));
    ecc = MUST(tpm->ReadEndorsement(EkType::kEcc));
    rsa = MUST(tpm->ReadEndorsement(EkType::kRsa));
  }
  ASSERT_TRUE(ecc.certificate.has_value());
  ASSERT_TRUE(rsa.certificate.has_value());
  ASSERT_OK(VerifyEkCertificate(*ecc.certificate, ecc.public_area, swtpm->trusted_ca_dir()));
  ASSERT_OK(VerifyEkCertificate(*rsa.certificate, rsa.public_area, swtpm->trusted_ca_dir()));

  Status wrong_ca = VerifyEkCertificate(*ecc.certificate, ecc.public_area, other->trusted_ca_dir());
  EXPECT_EQ(wrong_ca.code(), StatusCode::kUnauthenticated) << wrong_ca.ToString();
  Status wrong_key =
      VerifyEkCertificate(*rsa.certificate, ecc.public_area, swtpm->trusted_ca_dir());
  EXPECT_EQ(wrong_key.code(), StatusCode::kUnauthenticated) << wrong_key.ToString();
  // A TPM without a stored certificate reports none rather than failing.
  auto bare = MUST(Swtpm::Start());
  auto bare_tpm = MUST(Tpm::Open(bare->tcti()));
  EXPECT_FALSE(MUST(bare_tpm->ReadEndorsement(EkType::kEcc)).certificate.has_value());
}

TEST_F(TpmTest, EndorsementKeyIsStableAndKeysSurviveAReboot) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes ek1 = MUST(d.tpm->ReadEndorsement(EkType::kEcc)).public_area;
  d.tpm.reset();
  ASSERT_OK(d.swtpm->Restart());
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  EXPECT_EQ(MUST(d.tpm->ReadEndorsement(EkType::kEcc)).public_area, ek1);
  // The stored AK still loads and signs after the reboot.
  Bytes nonce = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), nonce));
  QuoteResult r = MUST(VerifyQuote(q, {d.ak.public_area, nonce, PolicyPcrs(), {}}));
  EXPECT_EQ(r.pcrs.size(), PolicyPcrs().pcrs.size());
}

// ----- quotes
// ---------------------------------------------------------------------------------------

TEST_F(TpmTest, QuoteVerifiesAgainstTheGoldenSet) {
  Device d = MakeDevice(policy_key_.public_key());
  GoldenPcrSet golden{"factory", MUST(d.tpm->ReadPcrs(PolicyPcrs()))};
  Bytes nonce = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), nonce));
  QuoteResult r = MUST(VerifyQuote(q, {d.ak.public_area, nonce, PolicyPcrs(), {golden}}));
  EXPECT_EQ(r.matched_set, "factory");
  EXPECT_GT(r.clock.clock_ms, 0u);
}

TEST_F(TpmTest, QuoteWithWrongOrReplayedNonceIsRefused) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes first = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), first));
  // The custodian issued a new nonce; the old quote is replayed.
  Result<QuoteResult> r = VerifyQuote(q, {d.ak.public_area, FreshNonce(), PolicyPcrs(), {}});
  ASSERT_FALSE(r.has_value());
  ExpectError(r.error(), StatusCode::kUnauthenticated, "nonce");
}

TEST_F(TpmTest, QuoteFromAnotherTpmsAkIsRefused) {
  Device a = MakeDevice(policy_key_.public_key());
  Device b = MakeDevice(policy_key_.public_key());
  Bytes nonce = FreshNonce();
  Quote from_b = MUST(b.tpm->QuotePcrs(b.ak, PolicyPcrs(), nonce));
  Result<QuoteResult> r = VerifyQuote(from_b, {a.ak.public_area, nonce, PolicyPcrs(), {}});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated) << r.error().ToString();
}

TEST_F(TpmTest, AlteredPcrValueIsRefused) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes nonce = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), nonce));
  q.pcrs[7][0] ^= 1;  // claim another value than the TPM signed
  Result<QuoteResult> r = VerifyQuote(q, {d.ak.public_area, nonce, PolicyPcrs(), {}});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated) << r.error().ToString();
}

TEST_F(TpmTest, PcrExtendedAfterTheGoldenSetIsRefusedByPolicyAndByTheBindingKey) {
  Device d = MakeDevice(policy_key_.public_key());
  PcrValues factory = MUST(d.tpm->ReadPcrs(PolicyPcrs()));
  ApprovedPolicy approval = MUST(ApprovePcrPolicy(policy_key_, PolicyPcrs(), factory, {}));
  Bytes dek = MUST(crypto::RandomBytes(32));
  const crypto::Sha256Digest auth_policy = MUST(BindingKeyAuthPolicy(policy_key_.public_key()));
  Bytes envelope =
      MUST(WrapToBindingKey(d.binding.public_area, auth_policy, dek, AsBytes("lease")));

  ASSERT_OK(d.tpm->ExtendPcr(7, AsBytes("an unapproved bootloader")));
  Bytes nonce = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), nonce));
  Result<QuoteResult> verdict =
      VerifyQuote(q, {d.ak.public_area, nonce, PolicyPcrs(), {{"factory", factory}}});
  ASSERT_FALSE(verdict.has_value());
  ExpectError(verdict.error(), StatusCode::kPermissionDenied, "PCR 7");

  Result<SecretBuffer> unwrapped = d.tpm->UnwrapWithBindingKey(
      d.binding, approval, policy_key_.public_key(), envelope, AsBytes("lease"));
  ASSERT_FALSE(unwrapped.has_value());
  ExpectError(unwrapped.error(), StatusCode::kPermissionDenied,
              "not the one the custodian approved");
}

// ----- key binding
// ----------------------------------------------------------------------------------

TEST_F(TpmTest, BindingKeyIsCertifiedByTheAkAndHasTheRequiredAttributes) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes nonce = FreshNonce();
  Attestation cert = MUST(d.tpm->Certify(d.ak, d.binding, nonce));
  ASSERT_OK(VerifyCertify(cert, d.ak.public_area, nonce, d.binding.public_area));
  ASSERT_OK(CheckBindingKeyPublic(d.binding.public_area,
                                  MUST(BindingKeyAuthPolicy(policy_key_.public_key()))));
  // The certification names this key: it does not pass for another key, nor with another nonce.
  KeyBlob other =
      MUST(d.tpm->CreateBindingKey(MUST(BindingKeyAuthPolicy(policy_key_.public_key()))));
  EXPECT_EQ(VerifyCertify(cert, d.ak.public_area, nonce, other.public_area).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyCertify(cert, d.ak.public_area, FreshNonce(), d.binding.public_area).code(),
            StatusCode::kUnauthenticated);
}

TEST_F(TpmTest, DekWrappedToTheBindingKeyUnwrapsOnlyThroughTheTpmUnderAnApprovedPolicy) {
  Device d = MakeDevice(policy_key_.public_key());
  ApprovedPolicy approval =
      MUST(ApprovePcrPolicy(policy_key_, PolicyPcrs(), MUST(d.tpm->ReadPcrs(PolicyPcrs())), {}));
  ASSERT_OK(VerifyApprovedPolicy(approval, policy_key_.public_key()));
  Bytes dek = MUST(crypto::RandomBytes(32));
  const crypto::Sha256Digest auth_policy = MUST(BindingKeyAuthPolicy(policy_key_.public_key()));
  Bytes envelope =
      MUST(WrapToBindingKey(d.binding.public_area, auth_policy, dek, AsBytes("lease-dek")));
  SecretBuffer out = MUST(d.tpm->UnwrapWithBindingKey(d.binding, approval, policy_key_.public_key(),
                                                      envelope, AsBytes("lease-dek")));
  EXPECT_TRUE(ConstantTimeEquals(out.span(), dek));
  // The TPM's ECDH equals OpenSSL's for the same keys.
  crypto::P256PrivateKey peer = MUST(crypto::P256PrivateKey::Generate());
  SecretBuffer z_tpm =
      MUST(d.tpm->EcdhZGen(d.binding, approval, policy_key_.public_key(), peer.public_key()));
  crypto::P256PublicKey binding_pub =
      MUST(EccPublicKey(MUST(UnmarshalPublic2B(d.binding.public_area))));
  SecretBuffer z_ssl = MUST(peer.Ecdh(binding_pub));
  EXPECT_TRUE(ConstantTimeEquals(z_tpm.span(), z_ssl.span()));
}

TEST_F(TpmTest, OsUpdateIsAPolicyChangeNotAReEnrollment) {
  Device d = MakeDevice(policy_key_.public_key());
  ApprovedPolicy old_state =
      MUST(ApprovePcrPolicy(policy_key_, PolicyPcrs(), MUST(d.tpm->ReadPcrs(PolicyPcrs())), {}));
  ASSERT_OK(d.tpm->ExtendPcr(4, AsBytes("kernel 6.1.99")));  // the update changes PCR 4
  crypto::P256PublicKey peer = MUST(crypto::P256PrivateKey::Generate()).public_key();
  Result<SecretBuffer> before =
      d.tpm->EcdhZGen(d.binding, old_state, policy_key_.public_key(), peer);
  ASSERT_FALSE(before.has_value());
  EXPECT_EQ(before.error().code(), StatusCode::kPermissionDenied) << before.error().ToString();
  // The custodian signs the new state (computed offline from the vendor's image); same key.
  ApprovedPolicy new_state =
      MUST(ApprovePcrPolicy(policy_key_, PolicyPcrs(), MUST(d.tpm->ReadPcrs(PolicyPcrs())), {}));
  ASSERT_OK(d.tpm->EcdhZGen(d.binding, new_state, policy_key_.public_key(), peer).status());
}

TEST_F(TpmTest, ApprovalSignedByAnotherKeyIsRefused) {
  Device d = MakeDevice(policy_key_.public_key());
  PcrValues now = MUST(d.tpm->ReadPcrs(PolicyPcrs()));
  crypto::P256PrivateKey rogue = MUST(crypto::P256PrivateKey::Generate());
  crypto::P256PublicKey peer = MUST(crypto::P256PrivateKey::Generate()).public_key();
  ApprovedPolicy forged = MUST(ApprovePcrPolicy(rogue, PolicyPcrs(), now, {}));
  // Presented as if from the pinned key: the TPM's VerifySignature refuses it.
  Result<SecretBuffer> r1 = d.tpm->EcdhZGen(d.binding, forged, policy_key_.public_key(), peer);
  ASSERT_FALSE(r1.has_value());
  ExpectError(r1.error(), StatusCode::kUnauthenticated, "not signed by the custodian policy key");
  // Presented with the rogue key itself: the TPM authorises the session for the rogue key, whose
  // Name is not in the binding key's policy.
  Result<SecretBuffer> r2 = d.tpm->EcdhZGen(d.binding, forged, rogue.public_key(), peer);
  ASSERT_FALSE(r2.has_value());
  EXPECT_EQ(r2.error().code(), StatusCode::kPermissionDenied) << r2.error().ToString();
}

TEST_F(TpmTest, CopiedDeviceStateIsUselessOnAnotherTpm) {
  // The agent's state (AK and binding key blobs, the approval, a wrapped DEK) copied to another
  // machine: its TPM cannot load the keys, so it can neither quote as the device nor unwrap.
  Device original = MakeDevice(policy_key_.public_key());
  ApprovedPolicy approval = MUST(
      ApprovePcrPolicy(policy_key_, PolicyPcrs(), MUST(original.tpm->ReadPcrs(PolicyPcrs())), {}));
  Bytes envelope = MUST(WrapToBindingKey(original.binding.public_area,
                                         MUST(BindingKeyAuthPolicy(policy_key_.public_key())),
                                         MUST(crypto::RandomBytes(32)), AsBytes("lease")));
  auto thief = MUST(Swtpm::Start());
  auto thief_tpm = MUST(Tpm::Open(thief->tcti()));
  Result<Quote> quote = thief_tpm->QuotePcrs(original.ak, PolicyPcrs(), FreshNonce());
  ASSERT_FALSE(quote.has_value());
  ExpectError(quote.error(), StatusCode::kUnauthenticated, "not created by this TPM");
  Result<SecretBuffer> dek = thief_tpm->UnwrapWithBindingKey(
      original.binding, approval, policy_key_.public_key(), envelope, AsBytes("lease"));
  ASSERT_FALSE(dek.has_value());
  EXPECT_EQ(dek.error().code(), StatusCode::kUnauthenticated) << dek.error().ToString();
  // Even a bit-for-bit copy of the TPM's own state, started as a second TPM, only clones the
  // TPM, which hardware does not allow: the quote it makes still verifies, which is why the
  // custodian also binds each device to its EK certificate. This documents the boundary.
}

TEST_F(TpmTest, BindingKeyFromAnotherTpmIsRefused) {
  Device a = MakeDevice(policy_key_.public_key());
  Device b = MakeDevice(policy_key_.public_key());
  // B's AK cannot certify A's binding key: B's TPM cannot even load it.
  Result<Attestation> r = b.tpm->Certify(b.ak, a.binding, FreshNonce());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated) << r.error().ToString();
  // And A's certification of its key does not pass as B's.
  Bytes nonce = FreshNonce();
  Attestation cert = MUST(a.tpm->Certify(a.ak, a.binding, nonce));
  EXPECT_EQ(VerifyCertify(cert, b.ak.public_area, nonce, a.binding.public_area).code(),
            StatusCode::kUnauthenticated);
}

// ----- sealed data
// --------------------------------------------------------------------------------

TEST_F(TpmTest, SealedDataOpensOnlyInItsTpmAndSurvivesAReboot) {
  Device d = MakeDevice(policy_key_.public_key());
  const Bytes secret = MUST(crypto::RandomBytes(kMaxSealedBytes));
  const KeyBlob sealed = MUST(d.tpm->Seal(secret));
  // The blob holds the secret only encrypted by the TPM.
  for (const Bytes& part : {sealed.public_area, sealed.private_area}) {
    EXPECT_EQ(std::search(part.begin(), part.end(), secret.begin(), secret.begin() + 16),
              part.end());
  }
  SecretBuffer opened = MUST(d.tpm->Unseal(sealed));
  EXPECT_EQ(Bytes(opened.span().begin(), opened.span().end()), secret);
  d.tpm.reset();
  ASSERT_OK(d.swtpm->Restart(Swtpm::Shutdown::kPowerCut));
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  SecretBuffer again = MUST(d.tpm->Unseal(sealed));
  EXPECT_EQ(Bytes(again.span().begin(), again.span().end()), secret);

  // Copied to another machine: its TPM cannot load the blob.
  auto thief = MUST(Swtpm::Start());
  auto thief_tpm = MUST(Tpm::Open(thief->tcti()));
  Result<SecretBuffer> stolen = thief_tpm->Unseal(sealed);
  ASSERT_FALSE(stolen.has_value());
  ExpectError(stolen.error(), StatusCode::kUnauthenticated, "not created by this TPM");
  // A blob altered on disk does not load either.
  KeyBlob altered = sealed;
  altered.private_area[altered.private_area.size() - 1] ^= 0x01;
  EXPECT_FALSE(d.tpm->Unseal(altered).has_value());
  // And what no TPM seals is refused before it reaches one.
  ExpectError(d.tpm->Seal(Bytes(kMaxSealedBytes + 1, 7)).status(), StatusCode::kInvalidArgument,
              "a TPM seals at most 128");
  ExpectError(d.tpm->Seal({}).status(), StatusCode::kInvalidArgument, "nothing to seal");
}

TEST_F(TpmTest, SealedDataNeverCrossesTheBusInTheClear) {
  // An attacker with a probe on the TPM's bus (LPC/SPI) sees every command and answer: here
  // swtpm's own log of them.
  auto swtpm = MUST(Swtpm::Start({.log_bus = true}));
  auto tpm = MUST(Tpm::Open(swtpm->tcti()));
  const Bytes secret = MUST(crypto::RandomBytes(32));
  SecretBuffer opened = MUST(tpm->Unseal(MUST(tpm->Seal(secret))));
  ASSERT_EQ(Bytes(opened.span().begin(), opened.span().end()), secret);
  // The control: a quote's nonce travels in the clear, so the log does show the bus.
  const KeyBlob ak = MUST(tpm->CreateAttestationKey());
  const Bytes nonce = FreshNonce();
  MUST(tpm->QuotePcrs(ak, PolicyPcrs(), nonce));
  const Bytes bus = MUST(swtpm->BusBytes());
  EXPECT_NE(std::search(bus.begin(), bus.end(), nonce.begin(), nonce.end()), bus.end())
      << "the control: the nonce should be on the bus";
  // Neither the Create that seals it nor the Unseal's answer carries the secret in the clear.
  EXPECT_EQ(std::search(bus.begin(), bus.end(), secret.begin(), secret.end()), bus.end())
      << "the sealed secret crossed the bus in the clear";
}

// ----- NV counter and clock
// --------------------------------------------------------------------------

TEST_F(TpmTest, CounterIncrementsAndIsCertifiedByTheAk) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes auth = MUST(crypto::RandomBytes(32));
  ASSERT_OK(d.tpm->DefineCounter(kDefaultCounterIndex, auth));
  EXPECT_EQ(d.tpm->ReadCounter(kDefaultCounterIndex, auth).error().code(),
            StatusCode::kFailedPrecondition);
  uint64_t first = MUST(d.tpm->IncrementCounter(kDefaultCounterIndex, auth));
  uint64_t second = MUST(d.tpm->IncrementCounter(kDefaultCounterIndex, auth));
  EXPECT_EQ(second, first + 1);
  EXPECT_EQ(MUST(d.tpm->ReadCounter(kDefaultCounterIndex, auth)), second);

  Bytes nonce = FreshNonce();
  Attestation cert = MUST(d.tpm->CertifyCounter(d.ak, kDefaultCounterIndex, auth, nonce));
  Bytes name = MUST(NvName(NvCounterPublic(kDefaultCounterIndex, /*written=*/true)));
  NvCertifyExpectation expect{d.ak.public_area, nonce, name, first};
  EXPECT_EQ(MUST(VerifyNvCertify(cert, expect)), second);

  // A custodian that has seen a higher value flags the report as a rollback.
  expect.last_seen = second + 5;
  Result<uint64_t> rollback = VerifyNvCertify(cert, expect);
  ASSERT_FALSE(rollback.has_value());
  EXPECT_EQ(rollback.error().code(), StatusCode::kFailedPrecondition)
      << rollback.error().ToString();
  // A wrong authValue cannot advance it, and defining it twice is refused.
  Bytes wrong = MUST(crypto::RandomBytes(32));
  EXPECT_EQ(d.tpm->IncrementCounter(kDefaultCounterIndex, wrong).error().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(d.tpm->DefineCounter(kDefaultCounterIndex, auth).code(), StatusCode::kAlreadyExists);
}

TEST_F(TpmTest, CounterSurvivesRebootsAndCannotBeRolledBackByRedefining) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes auth = MUST(crypto::RandomBytes(32));
  ASSERT_OK(d.tpm->DefineCounter(kDefaultCounterIndex, auth));
  uint64_t value = 0;
  for (int i = 0; i < 5; ++i) value = MUST(d.tpm->IncrementCounter(kDefaultCounterIndex, auth));
  d.tpm.reset();
  ASSERT_OK(d.swtpm->Restart());
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  EXPECT_EQ(MUST(d.tpm->ReadCounter(kDefaultCounterIndex, auth)), value);
  // Deleting and recreating the index (the owner can) does not restart it from zero: a TPM
  // starts a new counter at the highest value any counter has had.
  ASSERT_OK(d.tpm->UndefineCounter(kDefaultCounterIndex));
  ASSERT_OK(d.tpm->DefineCounter(kDefaultCounterIndex, auth));
  EXPECT_GT(MUST(d.tpm->IncrementCounter(kDefaultCounterIndex, auth)), value);
}

TEST_F(TpmTest, ClockIsMonotonicAcrossRebootsAndFlagsAPowerCut) {
  Device d = MakeDevice(policy_key_.public_key());
  TimeInfo before = MUST(d.tpm->ReadClock());
  EXPECT_TRUE(before.safe);
  d.tpm.reset();
  ASSERT_OK(d.swtpm->Restart(Swtpm::Shutdown::kOrderly));
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  TimeInfo after = MUST(d.tpm->ReadClock());
  EXPECT_GE(after.clock_ms, before.clock_ms);
  EXPECT_EQ(after.reset_count, before.reset_count + 1);
  EXPECT_TRUE(after.safe);
  // Without TPM2_Shutdown the TPM may have lost the clock ticks since it last saved the clock to
  // NV, and says so: the agent must then not trust the elapsed time (PROTOCOL.md §8).
  d.tpm.reset();
  ASSERT_OK(d.swtpm->Restart(Swtpm::Shutdown::kPowerCut));
  d.tpm = MUST(Tpm::Open(d.swtpm->tcti()));
  TimeInfo cut = MUST(d.tpm->ReadClock());
  EXPECT_FALSE(cut.safe);
  EXPECT_EQ(cut.reset_count, after.reset_count + 1);
}

TEST_F(TpmTest, UnreachableTpmIsUnavailableWithTheTcti) {
  Result<std::unique_ptr<Tpm>> r = Tpm::Open("swtpm:path=/nonexistent/custody/sock");
  ASSERT_FALSE(r.has_value());
  ExpectError(r.error(), StatusCode::kUnavailable, "/nonexistent/custody/sock");
}

TEST_F(TpmTest, LeftoverObjectsOfADeadConnectionAreFlushed) {
  auto swtpm = MUST(Swtpm::Start());
  // A client that died holding three transient objects (swtpm has three slots).
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(swtpm
                  ->Tool({"tpm2_createprimary", "-C", "o", "-G", "ecc", "-c",
                          swtpm->dir() + "/p" + std::to_string(i) + ".ctx"})
                  .status());
  }
  auto tpm = MUST(Tpm::Open(swtpm->tcti()));
  ASSERT_OK(tpm->CreateAttestationKey().status());
}

// ----- interoperability with tpm2-tools ------------------------------------------------------

std::string WriteFile(const std::string& path, ByteSpan bytes) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

Bytes ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST_F(TpmTest, Tpm2ToolsChecksOurQuote) {
  Device d = MakeDevice(policy_key_.public_key());
  Bytes nonce = FreshNonce();
  Quote q = MUST(d.tpm->QuotePcrs(d.ak, PolicyPcrs(), nonce));
  const std::string dir = d.swtpm->dir();
  crypto::P256PublicKey ak = MUST(EccPublicKey(MUST(UnmarshalPublic2B(d.ak.public_area))));
  std::ofstream(dir + "/ak.pem") << ak.ToPem();
  WriteFile(dir + "/quote.msg", q.attestation.attest);
  WriteFile(dir + "/quote.sig", q.attestation.signature);
  // tpm2_checkquote runs without a TPM: it verifies the signature and the qualifying data.
  ASSERT_OK(testing::RunProgram({"tpm2_checkquote", "-u", dir + "/ak.pem", "-m", dir + "/quote.msg",
                                 "-s", dir + "/quote.sig", "-g", "sha256", "-q", HexEncode(nonce)})
                .status());
  Result<std::string> tampered =
      testing::RunProgram({"tpm2_checkquote", "-u", dir + "/ak.pem", "-m", dir + "/quote.msg", "-s",
                           dir + "/quote.sig", "-g", "sha256", "-q", HexEncode(FreshNonce())});
  EXPECT_FALSE(tampered.has_value()) << "tpm2_checkquote accepted a wrong nonce";
}

TEST_F(TpmTest, OurTpmActivatesACredentialMadeByTpm2Tools) {
  Device d = MakeDevice(policy_key_.public_key());
  Endorsement ek = MUST(d.tpm->ReadEndorsement(EkType::kEcc));
  Bytes ak_name = MUST(ObjectName(MUST(UnmarshalPublic2B(d.ak.public_area))));
  const std::string dir = d.swtpm->dir();
  Bytes secret = MUST(crypto::RandomBytes(32));
  WriteFile(dir + "/ek.pub", ek.public_area);
  WriteFile(dir + "/secret.bin", secret);
  // -T none: tpm2-tools computes MakeCredential in software, as a custodian would.
  ASSERT_OK(
      testing::RunProgram({"tpm2_makecredential", "-T", "none", "-u", dir + "/ek.pub", "-s",
                           dir + "/secret.bin", "-n", HexEncode(ak_name), "-o", dir + "/cred.out"})
          .status());
  // tpm2-tools' file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
  Bytes file = ReadAll(dir + "/cred.out");
  ASSERT_GT(file.size(), 12u);
  ASSERT_EQ(LoadBigEndian32(file.data()), 0xBADCC0DEu);
  size_t id_len = 2 + ((size_t{file[8]} << 8) | file[9]);
  ASSERT_LT(8 + id_len, file.size());
  Credential cred{Bytes(file.begin() + 8, file.begin() + 8 + static_cast<long>(id_len)),
                  Bytes(file.begin() + 8 + static_cast<long>(id_len), file.end())};
  SecretBuffer released = MUST(d.tpm->ActivateCredential(d.ak, EkType::kEcc, cred));
  EXPECT_TRUE(ConstantTimeEquals(released.span(), secret));
}

TEST_F(TpmTest, PolicyDigestsEqualATpmTrialSession) {
  auto swtpm = MUST(Swtpm::Start());
  const std::string dir = swtpm->dir();
  PcrValues values;
  {
    auto tpm = MUST(Tpm::Open(swtpm->tcti()));
    values = MUST(tpm->ReadPcrs(PolicyPcrs()));
  }
  // The Name of the custodian's policy key; that the TPM gives it the same Name when loading it
  // is what DekWrappedToTheBindingKey... proves (the session digest would differ otherwise).
  WriteFile(dir + "/policy.name", MUST(ObjectName(PolicyKeyPublic(policy_key_.public_key()))));
  ASSERT_OK(swtpm->Tool({"tpm2_startauthsession", "-S", dir + "/trial.ctx"}).status());
  ASSERT_OK(swtpm
                ->Tool({"tpm2_policypcr", "-S", dir + "/trial.ctx", "-l",
                        "sha256:" + PolicyPcrs().ToString(), "-L", dir + "/pcr.policy"})
                .status());
  ASSERT_OK(swtpm->Tool({"tpm2_flushcontext", dir + "/trial.ctx"}).status());
  ASSERT_OK(swtpm->Tool({"tpm2_startauthsession", "-S", dir + "/trial.ctx"}).status());
  ASSERT_OK(swtpm
                ->Tool({"tpm2_policyauthorize", "-S", dir + "/trial.ctx", "-L",
                        dir + "/authorize.policy", "-n", dir + "/policy.name"})
                .status());
  ASSERT_OK(swtpm->Tool({"tpm2_flushcontext", dir + "/trial.ctx"}).status());

  crypto::Sha256Digest pcr_digest = MUST(PcrDigest(PolicyPcrs(), values));
  crypto::Sha256Digest ours = MUST(PolicyPcrDigest({}, PolicyPcrs(), pcr_digest));
  EXPECT_EQ(HexEncode(ours), HexEncode(ReadAll(dir + "/pcr.policy")));
  EXPECT_EQ(HexEncode(MUST(BindingKeyAuthPolicy(policy_key_.public_key()))),
            HexEncode(ReadAll(dir + "/authorize.policy")));
}

}  // namespace
}  // namespace custody::tpm
