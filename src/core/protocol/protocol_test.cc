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
