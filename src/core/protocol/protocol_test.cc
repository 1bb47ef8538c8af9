// Regression tests for the protocol readers (json.h, messages.h, audit.h), for what their fuzzers
// (fuzz/json_fuzzer.cc, fuzz/protocol_message_fuzzer.cc, fuzz/audit_fuzzer.cc) found.
#include <gtest/gtest.h>

#include <string>

#include "core/protocol/audit.h"
#include "core/protocol/json.h"
#include "core/protocol/messages.h"

namespace custody::protocol {
namespace {

Result<Bytes> Base64Field(const std::string& value, size_t max_len) {
  Result<nlohmann::json> j = ParseJsonObject(R"({"v":")" + value + "\"}", 1024, "test");
  if (!j) return j.error();
  return JsonObject(*j, "").Base64("v", max_len);
}

TEST(JsonObject, Base64RefusesMoreDecodedBytesThanMaxLen) {
  // Four base64 characters are three bytes whatever the limit they were measured against.
  EXPECT_EQ(Base64Field("AAEC", 3)->size(), 3u);
  EXPECT_FALSE(Base64Field("AAEC", 2).ok());
  EXPECT_FALSE(Base64Field("AAEC", 1).ok());
  EXPECT_EQ(Base64Field("AAE=", 2)->size(), 2u);
  // 32-byte limit: 44 characters allowed by length, but 33 bytes is one too many.
  const std::string b33(44, 'A');
  Result<Bytes> r = Base64Field(b33, 32);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.error().message().find("field 'v'"), std::string::npos) << r.error().message();
  EXPECT_EQ(Base64Field(std::string(40, 'A') + "AAA=", 32)->size(), 32u);
}

TEST(Messages, EnrollCompleteResponseRefusesAnOversizedLeaseKey) {
  EnrollCompleteResponse m;
  m.device_id = "dev_1";
  m.certificate_pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
  m.ca_certificate_pem = m.certificate_pem;
  m.lease_public = Bytes(32, 1);
  m.policy_public = Bytes(65, 4);
  m.pcr_selection = {0, 7};
  ASSERT_TRUE(ParseEnrollCompleteResponse(ToJson(m).dump()).ok());
  m.lease_public = Bytes(33, 1);
  Result<EnrollCompleteResponse> r = ParseEnrollCompleteResponse(ToJson(m).dump());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("lease_public"), std::string::npos) << r.error().message();
  m.lease_public = Bytes(32, 1);
  m.policy_public = Bytes(66, 4);
  EXPECT_FALSE(ParseEnrollCompleteResponse(ToJson(m).dump()).ok());
}

// A message that parses, for the tests that break one field of it.
EnrollCompleteRequest ValidEnrollComplete() {
  EnrollCompleteRequest m;
  m.enrollment_id = "enr_1";
  m.activated_secret = Bytes(32, 1);
  m.binding_public = Bytes(90, 2);
  m.binding_certify = {Bytes(40, 3), Bytes(24, 4)};
  m.counter_index = 0x01000C57;
  m.counter_certify = {Bytes(40, 5), Bytes(24, 6)};
  m.tls_public_key = Bytes(91, 7);
  m.counter_unit = 16;
  return m;
}

UsageRequest ValidUsage() {
  UsageRequest m;
  m.report_id = "rep_1";
  m.nonce = Bytes(40, 1);
  m.counter_certify = {Bytes(40, 5), Bytes(24, 6)};
  m.counts = {{"model", "kiosk", 3}};
  m.prepaid = 13;
  return m;
}

// The error of `r`, which must be kInvalidArgument naming `field`.
template <typename T>
void ExpectFieldRefused(const Result<T>& r, const std::string& field) {
  ASSERT_FALSE(r.ok()) << "accepted with a bad " << field;
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << r.error().ToString();
  EXPECT_NE(r.error().message().find("'" + field + "'"), std::string::npos) << r.error().message();
}

TEST(Messages, EnrollCompleteRequestCarriesACounterUnitOf1To65536) {
  EnrollCompleteRequest m = ValidEnrollComplete();
  EXPECT_EQ(ParseEnrollCompleteRequest(ToJson(m).dump())->counter_unit, 16u);
  for (uint64_t unit : {uint64_t{1}, uint64_t{65536}}) {
    m.counter_unit = unit;
    EXPECT_EQ(ParseEnrollCompleteRequest(ToJson(m).dump())->counter_unit, unit);
  }
  for (uint64_t unit : {uint64_t{0}, uint64_t{65537}, UINT64_MAX}) {
    m.counter_unit = unit;
    ExpectFieldRefused(ParseEnrollCompleteRequest(ToJson(m).dump()), "counter_unit");
  }
  nlohmann::json j = ToJson(ValidEnrollComplete());
  j.erase("counter_unit");
  ExpectFieldRefused(ParseEnrollCompleteRequest(j.dump()), "counter_unit");
  j["counter_unit"] = -1;
  ExpectFieldRefused(ParseEnrollCompleteRequest(j.dump()), "counter_unit");
}

TEST(Messages, UsageRequestRequiresPrepaidAndBoundsItAndTheAnomaly) {
  UsageRequest m = ValidUsage();
  Result<UsageRequest> parsed = ParseUsageRequest(ToJson(m).dump());
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->prepaid, 13u);
  EXPECT_FALSE(parsed->anomaly.has_value());
  EXPECT_FALSE(ToJson(m).contains("anomaly")) << "absent, not null";

  m.anomaly = "journal behind the counter at start (3 blocks)";
  m.prepaid = uint64_t{1} << 40;  // a report sent again long after it was made
  parsed = ParseUsageRequest(ToJson(m).dump());
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->anomaly, m.anomaly);
  EXPECT_EQ(parsed->prepaid, uint64_t{1} << 40);
  nlohmann::json j = ToJson(ValidUsage());
  j.erase("prepaid");
  ExpectFieldRefused(ParseUsageRequest(j.dump()), "prepaid");
  j["prepaid"] = "13";
  ExpectFieldRefused(ParseUsageRequest(j.dump()), "prepaid");

  m = ValidUsage();
  m.anomaly = std::string(kMaxAnomalyBytes, 'a');
  EXPECT_TRUE(ParseUsageRequest(ToJson(m).dump()).ok());
  m.anomaly = std::string(kMaxAnomalyBytes + 1, 'a');
  ExpectFieldRefused(ParseUsageRequest(ToJson(m).dump()), "anomaly");
  m.anomaly = "two\nlines";  // a control character
  ExpectFieldRefused(ParseUsageRequest(ToJson(m).dump()), "anomaly");
  j = ToJson(ValidUsage());
  j["anomaly"] = 7;
  ExpectFieldRefused(ParseUsageRequest(j.dump()), "anomaly");
}

TEST(Messages, LeasePayloadCarriesTheCounterUnitAndTheTpmClockAndResets) {
  LeasePayload l;
  l.lease_id = "lease_1";
  l.device_id = "dev_1";
  l.licence_id = "lic_1";
  l.model_id = "model";
  l.model_name = "resnet";
  l.model_version = "1.0";
  l.wrapped_dek = Bytes(97, 1);
  l.counter_limit = 16 * 100 + 50;
  l.counter_unit = 16;
  l.not_after = "2030-01-01T00:00:00Z";
  l.offline_grace_ms = 3600000;
  l.tpm_clock_ms = (uint64_t{1} << 40) + 3;
  l.tpm_reset_count = 0xfffffff0u;  // obfuscated: any 32-bit value
  l.sequence = 2;
  l.issued_at = "2026-06-01T00:00:00Z";
  const std::string text = ToJson(l).dump();
  Result<LeasePayload> parsed = ParseLeasePayload(AsBytes(text));
  ASSERT_TRUE(parsed.ok()) << parsed.error().ToString();
  EXPECT_EQ(parsed->counter_unit, 16u);
  EXPECT_EQ(parsed->tpm_clock_ms, l.tpm_clock_ms);
  EXPECT_EQ(parsed->counter_limit, 1650u);
  EXPECT_EQ(parsed->tpm_reset_count, 0xfffffff0u);
  for (const char* field : {"counter_unit", "tpm_clock_ms", "tpm_reset_count"}) {
    nlohmann::json j = ToJson(l);
    j.erase(field);
    ExpectFieldRefused(ParseLeasePayload(AsBytes(j.dump())), field);
  }
  nlohmann::json wide = ToJson(l);
  wide["tpm_reset_count"] = uint64_t{1} << 32;
  ExpectFieldRefused(ParseLeasePayload(AsBytes(wide.dump())), "tpm_reset_count");
  l.counter_unit = 0;
  ExpectFieldRefused(ParseLeasePayload(AsBytes(ToJson(l).dump())), "counter_unit");
  l.counter_unit = kMaxCounterUnit + 1;
  ExpectFieldRefused(ParseLeasePayload(AsBytes(ToJson(l).dump())), "counter_unit");
}

std::vector<AuditEntry> ChainFrom(uint64_t first_seq, const crypto::Sha256Digest& anchor,
                                  size_t n) {
  AuditEntry before;
  before.seq = first_seq - 1;
  before.hash = anchor;
  std::vector<AuditEntry> out;
  for (size_t i = 0; i < n; ++i) {
    AuditEntry e;
    e.time = "2026-06-01T00:00:00Z";
    e.actor = "system";
    e.action = "test";
    e.subject = std::to_string(i);
    e.details = "{}";
    ChainAuditEntry(e, out.empty() ? &before : &out.back());
    out.push_back(e);
  }
  return out;
}

TEST(AuditChain, AcceptsAnAnchoredRun) {
  crypto::Sha256Digest anchor{};
  anchor.fill(7);
  EXPECT_TRUE(VerifyAuditChain(ChainFrom(5, anchor, 3), anchor).ok());
}

TEST(AuditChain, RefusesEntryZero) {
  crypto::Sha256Digest anchor{};
  anchor.fill(7);
  std::vector<AuditEntry> chain = ChainFrom(0, anchor, 2);  // seq 0, 1
  ASSERT_EQ(chain.front().seq, 0u);
  Status s = VerifyAuditChain(chain, anchor);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_FALSE(VerifyAuditChain(chain).ok());
}

TEST(AuditChain, RefusesASequenceThatWrapsAround) {
  crypto::Sha256Digest anchor{};
  anchor.fill(7);
  std::vector<AuditEntry> chain = ChainFrom(UINT64_MAX, anchor, 2);  // seq 2^64-1, then 0
  ASSERT_EQ(chain.back().seq, 0u);
  Status s = VerifyAuditChain(chain, anchor);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(VerifyAuditChain(std::span(chain).first(1), anchor).ok());
}

}  // namespace
}  // namespace custody::protocol
