// LeaseBook: the rules that decide whether a lease serves, tested as pure logic with a fake
// clock. The same rules run against real TPMs and a real custodian in tests/agent.
#include "agent/lease_book.h"

#include <gtest/gtest.h>

#include "core/format/sealed.h"
#include "tests/support/must.h"

namespace custody::agent {
namespace {

using std::chrono::hours;
using std::chrono::seconds;
using std::chrono::sys_seconds;

constexpr uint64_t kContact = 1'000'000;  // TPM clock (ms) of the attestation
constexpr uint64_t kGraceMs = 60'000;

const std::chrono::system_clock::time_point kNow =
    sys_seconds(std::chrono::sys_days(std::chrono::year(2027) / 3 / 1));

HeldLease Lease(std::string licence, uint64_t sequence, uint64_t epoch = 0,
                std::string model = "m1") {
  protocol::LeasePayload p;
  p.lease_id = "lease_" + licence + "_" + std::to_string(sequence);
  p.device_id = "dev_1";
  p.licence_id = std::move(licence);
  p.model_id = model;
  p.model_name = "model-" + model;
  p.model_version = "1";
  p.counter_limit = 1000;
  p.counter_unit = 16;
  p.not_after = "2027-12-31T23:59:59Z";
  p.issued_at = "2027-03-01T00:00:00Z";
  p.offline_grace_ms = kGraceMs;
  p.tpm_clock_ms = kContact;
  p.sequence = sequence;
  p.revocation_epoch = epoch;
  return MUST(MakeHeldLease(std::move(p), nlohmann::json::object()));
}

protocol::RevocationPayload Revocation(std::string scope, std::string subject, uint64_t epoch) {
  return {"dev_1", std::move(scope),      std::move(subject), "contract ended",
          epoch,   "2027-03-01T12:00:00Z"};
}

void ExpectRefusal(const LeaseVerdict& v, Refusal r, std::string_view part) {
  EXPECT_EQ(RefusalName(v.refusal), RefusalName(r)) << v.message;
  EXPECT_NE(v.message.find(part), std::string::npos) << "'" << part << "' not in: " << v.message;
}

TEST(LeaseBookTest, ServesWithinTimeGraceAndBudget) {
  LeaseBook book("dev_1", {});
  ASSERT_EQ(MUST(book.Accept(Lease("lic_a", 5))), LeaseBook::Outcome::kAccepted);
  const HeldLease& held = book.leases().at("lic_a");
  EXPECT_TRUE(book.Check(held, kNow, {kContact + kGraceMs - 1, true}, 999).ok());
  EXPECT_EQ(book.state().max_sequence, 5u);
  EXPECT_EQ(book.state().held.at("lic_a"), 5u);
  EXPECT_EQ(book.Offline({kContact + 5, true}).contact_ms, kContact);
}

TEST(LeaseBookTest, LeaseSequenceMustGoUpAndAReplayedLeaseIsRefused) {
  LeaseBook book("dev_1", {});
  ASSERT_TRUE(book.Accept(Lease("lic_a", 5)).ok());
  ASSERT_TRUE(book.Accept(Lease("lic_b", 6)).ok());
  // The very lease again (an event delivered twice) is a duplicate, not an error.
  EXPECT_EQ(MUST(book.Accept(Lease("lic_b", 6))), LeaseBook::Outcome::kDuplicate);
  // An older lease for a licence whose newer lease is held: a replay.
  ASSERT_TRUE(book.Accept(Lease("lic_a", 7)).ok());
  Result<LeaseBook::Outcome> replay = book.Accept(Lease("lic_a", 5));
  ASSERT_FALSE(replay.ok());
  EXPECT_EQ(replay.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(replay.error().message().find("replayed or stale"), std::string::npos);
  EXPECT_EQ(book.leases().at("lic_a").lease.sequence, 7u) << "the newer lease stays";
  // Equal sequence, another lease: refused too.
  HeldLease forged = Lease("lic_a", 7);
  forged.lease.lease_id = "lease_other";
  EXPECT_FALSE(book.Accept(std::move(forged)).ok());
}

TEST(LeaseBookTest, RestoreAcceptsOnlyTheLeaseTheStateRecords) {
  LeaseBookState state;
  state.max_sequence = 9;
  state.held["lic_a"] = 9;
  LeaseBook book("dev_1", state);
  Status old = book.Restore(Lease("lic_a", 4));
  EXPECT_EQ(old.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(old.message().find("an old lease file (replay)"), std::string::npos) << old.message();
  EXPECT_FALSE(book.Restore(Lease("lic_unknown", 9)).ok());
  ASSERT_OK(book.Restore(Lease("lic_a", 9)));
  EXPECT_EQ(book.leases().size(), 1u);
}

TEST(LeaseBookTest, RevocationDropsItsScopeAndNoLeaseForItIsAcceptedAgain) {
  LeaseBook book("dev_1", {});
  ASSERT_TRUE(book.Accept(Lease("lic_a", 1, 0, "m1")).ok());
  ASSERT_TRUE(book.Accept(Lease("lic_b", 2, 0, "m2")).ok());
  EXPECT_EQ(book.Revoke(Revocation("licence", "lic_a", 1)), std::vector<std::string>{"lic_a"});
  EXPECT_EQ(book.leases().size(), 1u);
  ExpectRefusal(book.Missing("m1", ""), Refusal::kRevoked, "the licence lic_a");
  ExpectRefusal(book.Missing("", "model-m1"), Refusal::kRevoked, "the licence lic_a");
  EXPECT_EQ(book.Missing("", "model-m9").refusal, Refusal::kNoLease);
  // A later lease for the revoked licence (or one issued before the revocation) is refused.
  Result<LeaseBook::Outcome> again = book.Accept(Lease("lic_a", 3, 1, "m1"));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), StatusCode::kPermissionDenied);
  Result<LeaseBook::Outcome> before = book.Accept(Lease("lic_c", 4, 0, "m3"));
  ASSERT_FALSE(before.ok());
  EXPECT_NE(before.error().message().find("issued before the latest revocation"),
            std::string::npos);
  // A revocation applied twice changes nothing; an older one neither.
  EXPECT_TRUE(book.Revoke(Revocation("licence", "lic_a", 1)).empty());
  EXPECT_TRUE(book.Revoke(Revocation("model", "m2", 0)).empty());
  EXPECT_EQ(book.leases().size(), 1u);
  // A model revocation, then the device.
  EXPECT_EQ(book.Revoke(Revocation("model", "m2", 2)), std::vector<std::string>{"lic_b"});
  ASSERT_TRUE(book.Accept(Lease("lic_d", 5, 2, "m4")).ok());
  EXPECT_EQ(book.Revoke(Revocation("device", "dev_1", 3)), std::vector<std::string>{"lic_d"});
  ASSERT_NE(book.device_revocation(), nullptr);
  ExpectRefusal(book.Missing("anything", "any"), Refusal::kRevoked, "this device");
  EXPECT_FALSE(book.Accept(Lease("lic_e", 6, 3, "m5")).ok());
}

TEST(LeaseBookTest, OfflineGraceRunsOnTheTpmClockAndTheSystemClockCannotExtendIt) {
  LeaseBook book("dev_1", {});
  ASSERT_TRUE(book.Accept(Lease("lic_a", 1)).ok());
  const HeldLease& held = book.leases().at("lic_a");
  const TpmTime expired{kContact + kGraceMs + 5000, true};
  ExpectRefusal(book.Check(held, kNow, expired, 0), Refusal::kGraceExpired,
                "offline grace of 60.0 s ran out 5.0 s ago");
  // Whatever the system clock says: a day back, a year back.
  for (auto wall : {kNow - hours(24), kNow - hours(24 * 365)}) {
    ExpectRefusal(book.Check(held, wall, expired, 0), Refusal::kGraceExpired, "ran out");
  }
  // A newer attestation (a renewed lease) moves the contact and the grace with it.
  HeldLease renewed = Lease("lic_a", 2);
  renewed.lease.tpm_clock_ms = kContact + kGraceMs;
  ASSERT_TRUE(book.Accept(std::move(renewed)).ok());
  EXPECT_TRUE(book.Check(book.leases().at("lic_a"), kNow, expired, 0).ok());
}

TEST(LeaseBookTest, TpmClockBehindTheAttestationIsRefusedUntilTheNextOne) {
  LeaseBook book("dev_1", {});
  ASSERT_TRUE(book.Accept(Lease("lic_a", 1)).ok());
  ExpectRefusal(book.Check(book.leases().at("lic_a"), kNow, {kContact - 1, false}, 0),
                Refusal::kClockBehind, "power cut");
}

TEST(LeaseBookTest, PowerCutsThatSetTheClockBackAboveTheAttestationCountAsTheMostTheyCanTake) {
  // The attacker cuts power before the TPM saves its clock: the clock falls back, but stays above
  // the contact. The TPM says `safe = NO` only until its next save; its reset count has grown.
  // The contact lease carries the quote's reset count as the AK quotes it: here the TPM's real
  // count 7 plus an obfuscation constant that wraps around 2^32.
  constexpr uint32_t kObfuscation = 0xfffffffcu;
  const auto at = [&](uint64_t clock, bool safe, uint32_t resets) {
    return TpmTime{clock, safe, resets, resets + kObfuscation};
  };
  LeaseBook book("dev_1", {});
  EXPECT_EQ(book.Offline(at(kContact + 1000, false, 8)).elapsed_ms, 0u) << "no lease, no contact";
  HeldLease long_grace = Lease("lic_a", 1);
  long_grace.lease.offline_grace_ms = 3 * 3600 * 1000;  // 3 h
  long_grace.lease.tpm_reset_count = 7 + kObfuscation;
  ASSERT_TRUE(book.Accept(std::move(long_grace)).ok());
  const HeldLease& held = book.leases().at("lic_a");
  const TpmTime one_cut = at(kContact + 1000, false, 8);
  EXPECT_EQ(book.Offline(one_cut).resets, 1u);
  EXPECT_EQ(book.Offline(one_cut).lost_ms, kClockLossPerResetMs);
  EXPECT_EQ(book.Offline(one_cut).elapsed_ms, 1000 + kClockLossPerResetMs)
      << "what status shows as well";
  EXPECT_EQ(book.Offline(at(kContact - 5, false, 7)).elapsed_ms, 0u)
      << "a clock behind is refused, not negative";
  EXPECT_TRUE(book.Check(held, kNow, one_cut, 0).ok()) << "70 min of a 3 h grace";
  // Three cuts: 3 x 70 min is more than the grace.
  ExpectRefusal(book.Check(held, kNow, at(kContact + 1000, false, 10), 0), Refusal::kGraceExpired,
                "for 3 TPM reset(s) since then");
  // Once the TPM saved its clock again it says `safe`: the count stays.
  ExpectRefusal(book.Check(held, kNow, at(kContact + 1000, true, 10), 0), Refusal::kGraceExpired,
                "cannot be told from a clean reboot");
  // The contact's own boot adds nothing, and neither does a count behind the lease's (no TPM's
  // count goes down: it would take another AK, whose leases this device cannot have).
  EXPECT_TRUE(book.Check(held, kNow, at(kContact + 1000, false, 7), 0).ok());
  EXPECT_EQ(book.Offline(at(kContact + 1000, false, 6)).resets, 0u);

  // A later attestation (a lease with a higher TPM clock) moves the contact and its reset count;
  // an older lease that is still held (another licence) does not pull it back.
  HeldLease renewed = Lease("lic_b", 2);
  renewed.lease.tpm_clock_ms = kContact + 500;
  renewed.lease.tpm_reset_count = 10 + kObfuscation;
  ASSERT_TRUE(book.Accept(std::move(renewed)).ok());
  EXPECT_EQ(book.Offline(at(kContact + 1000, false, 10)).resets, 0u);
  EXPECT_TRUE(book.Check(held, kNow, at(kContact + 1000, false, 10), 0).ok());
}

TEST(LeaseBookTest, LicenceEndIsCheckedOnTheWallClockAndOnTheTpmClock) {
  LeaseBook book("dev_1", {});
  HeldLease short_lease = Lease("lic_a", 1);
  short_lease.lease.not_after = "2027-03-01T01:00:00Z";  // an hour after issue
  short_lease = MUST(MakeHeldLease(short_lease.lease, nlohmann::json::object()));
  short_lease.lease.offline_grace_ms = 10 * 3600 * 1000;
  ASSERT_TRUE(book.Accept(std::move(short_lease)).ok());
  const HeldLease& held = book.leases().at("lic_a");
  ExpectRefusal(book.Check(held, kNow + hours(2), {kContact, true}, 0), Refusal::kLicenceEnded,
                "ended at 2027-03-01T01:00:00Z");
  // The system clock set back two hours, the TPM clock two hours on: still ended.
  ExpectRefusal(book.Check(held, kNow, {kContact + 2 * 3600 * 1000, true}, 0),
                Refusal::kLicenceEnded, "by the TPM clock");
  EXPECT_TRUE(book.Check(held, kNow, {kContact + 1000, true}, 0).ok());
}

TEST(LeaseBookTest, BudgetEndsAtTheLimitInRequests) {
  LeaseBook book("dev_1", {});
  ASSERT_TRUE(book.Accept(Lease("lic_a", 1)).ok());
  const HeldLease& held = book.leases().at("lic_a");
  EXPECT_TRUE(book.Check(held, kNow, {kContact, true}, 999).ok());
  ExpectRefusal(book.Check(held, kNow, {kContact, true}, 1000), Refusal::kBudgetExhausted,
                "meter at 1000 of 1000");
}

TEST(LeaseBookTest, RefusalsMapToStatusCodes) {
  EXPECT_EQ(LeaseVerdict{}.ToStatus().code(), StatusCode::kOk);
  EXPECT_EQ(LeaseVerdict({Refusal::kBudgetExhausted, "x"}).ToStatus().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(LeaseVerdict({Refusal::kNoLease, "x"}).ToStatus().code(), StatusCode::kUnavailable);
  EXPECT_EQ(LeaseVerdict({Refusal::kGraceExpired, "x"}).ToStatus().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(RefusalName(Refusal::kGraceExpired), "offline_grace_expired");
}

TEST(LeaseBookTest, MalformedTimestampsInALeaseAreRefused) {
  HeldLease h = Lease("lic_a", 1);
  h.lease.not_after = "tomorrow";
  EXPECT_EQ(MakeHeldLease(h.lease, nlohmann::json::object()).error().code(),
            StatusCode::kInvalidArgument);
}

TEST(LeaseBookTest, DurationsReadNaturally) {
  EXPECT_EQ(DescribeMs(850), "850 ms");
  EXPECT_EQ(DescribeMs(41'200), "41.2 s");
  EXPECT_EQ(DescribeMs(3 * 60'000 + 5000), "3m 5s");
  EXPECT_EQ(DescribeMs(72ull * 3600 * 1000), "3d 0h");
  EXPECT_EQ(DescribeMs(5ull * 3600 * 1000 + 60'000), "5h 1m");
}

}  // namespace
}  // namespace custody::agent
