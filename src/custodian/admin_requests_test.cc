#include "custodian/admin_requests.h"

#include <gtest/gtest.h>

#include <string>

namespace custody::custodian {
namespace {

constexpr char kDekHex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr char kPcrHex[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

// Values that would change a query if anything pasted them into SQL text: the parsers must hand
// them on verbatim (the store binds them as parameters).
const char* const kSqlValues[] = {
    "x' OR '1'='1", "'; DROP TABLE models; --",
    "a\\\"b",  // JSON for a"b
    "%' --",        "1; DELETE FROM licences",
};
const char* const kSqlDecoded[] = {
    "x' OR '1'='1", "'; DROP TABLE models; --", "a\"b", "%' --", "1; DELETE FROM licences",
};

template <typename T>
void ExpectInvalid(const Result<T>& r, std::string_view needle) {
  ASSERT_FALSE(r.ok()) << "accepted; expected an error mentioning " << needle;
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << r.error().ToString();
  EXPECT_NE(r.error().message().find(needle), std::string::npos)
      << "'" << r.error().message() << "' does not mention '" << needle << "'";
}

std::string Licence(std::string_view extra = "", std::string_view not_after = "2030-01-01") {
  return R"({"model_id":"m1","group":"g1","budget":100,"not_after":")" + std::string(not_after) +
         R"(","offline_grace_seconds":3600)" + std::string(extra) + "}";
}

// ----- shared rules: every body ------------------------------------------------------------

TEST(AdminRequests, EveryBodyParserRejectsNonJsonNonObjectsDeepNestingAndHugeBodies) {
  const std::string deep = R"({"name":)" + std::string(40, '[') + std::string(40, ']') + "}";
  const std::string huge = R"({"name":")" + std::string(kMaxAdminBodyBytes, 'a') + "\"}";
  for (const std::string& bad :
       {std::string("not json"), std::string("[]"), std::string("\"reason\""), std::string("null"),
        std::string("{\"reason\":\"x\"} trailing"), deep, huge}) {
    EXPECT_FALSE(ParseModelRegistration(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseModelRetirement(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseGroupRequest(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseGoldenSetRequest(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseEnrollmentTokenRequest(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseLicenceRequest(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseExtensionApproval(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseExtensionDenial(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseRevocationRequest(bad).ok()) << bad.substr(0, 40);
    EXPECT_FALSE(ParseTokenRequest(bad).ok()) << bad.substr(0, 40);
  }
}

TEST(AdminRequests, BodyErrorsNameTheRequest) {
  ExpectInvalid(ParseLicenceRequest("[1]"), "licence");
  ExpectInvalid(ParseModelRegistration("{"), "model registration");
  ExpectInvalid(ParseTokenRequest(std::string(kMaxAdminBodyBytes + 1, ' ')), "token request");
}

TEST(AdminRequests, UnknownFieldsAreRefusedByName) {
  ExpectInvalid(ParseTokenRequest(R"({"name":"a","role":"admin","rol":"x"})"), "'rol'");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":"device","id":"d","reason":"r","why":1})"),
                "'why'");
  ExpectInvalid(ParseLicenceRequest(Licence(R"(,"extension":{"manual":true,"up_to":1})")),
                "'extension.up_to'");
  ExpectInvalid(ParseExtensionApproval(R"({"granted":1,"reason":"x"})"), "'reason'");
  ExpectInvalid(ParseModelRetirement(R"({"why":"x"})"), "'why'");
}

TEST(AdminRequests, StringsWithControlCharactersOrInvalidUtf8AreRefused) {
  ExpectInvalid(ParseExtensionDenial(R"({"reason":"a\u0000b"})"), "'reason'");
  ExpectInvalid(ParseExtensionDenial(R"({"reason":"line\nbreak"})"), "'reason'");
  ExpectInvalid(ParseExtensionDenial(R"({"reason":"bad )"
                                     "\xff"
                                     R"("})"),
                "");  // not valid JSON text at all
  ExpectInvalid(ParseTokenRequest(R"({"name":"a\u001b[31m","role":"admin"})"), "'name'");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":"device","id":"\ud800","reason":"r"})"), "");
}

TEST(AdminRequests, SqlMetacharactersArePassedOnVerbatim) {
  for (size_t i = 0; i < std::size(kSqlValues); ++i) {
    const std::string v = kSqlValues[i];
    const std::string decoded = kSqlDecoded[i];
    Result<RevocationSpec> rev =
        ParseRevocationRequest(R"({"scope":"device","id":")" + v + R"(","reason":")" + v + R"("})");
    ASSERT_TRUE(rev.ok()) << rev.error().ToString();
    EXPECT_EQ(rev->id, decoded);
    EXPECT_EQ(rev->reason, decoded);

    Result<GroupSpec> group = ParseGroupRequest(R"({"name":")" + v + R"(","pcrs":[0]})");
    ASSERT_TRUE(group.ok()) << group.error().ToString();
    EXPECT_EQ(group->name, decoded);

    Result<EnrollmentTokenSpec> token = ParseEnrollmentTokenRequest(R"({"group":")" + v + "\"}");
    ASSERT_TRUE(token.ok()) << token.error().ToString();
    EXPECT_EQ(token->group, decoded);

    Result<LicenceSpec> lic =
        ParseLicenceRequest(R"({"model_id":")" + v + R"(","device_id":")" + v +
                            R"(","budget":1,"not_after":"2030-01-01","offline_grace_seconds":0})");
    ASSERT_TRUE(lic.ok()) << lic.error().ToString();
    EXPECT_EQ(lic->model_id, decoded);
    EXPECT_EQ(lic->device_id, decoded);

    Result<std::string> denial = ParseExtensionDenial(R"({"reason":")" + v + "\"}");
    ASSERT_TRUE(denial.ok());
    EXPECT_EQ(*denial, decoded);
  }
}

TEST(AdminRequests, SqlMetacharactersCannotStandInForEnumsOrNumbers) {
  ExpectInvalid(ParseTokenRequest(R"({"name":"n","role":"admin' --"})"), "'role'");
  ExpectInvalid(ParseTokenRequest(R"({"name":"n","role":"viewer OR 1=1"})"), "'role'");
  ExpectInvalid(ParseLicenceRequest(R"({"model_id":"m","group":"g","budget":"1 OR 1=1",)"
                                    R"("not_after":"2030-01-01","offline_grace_seconds":0})"),
                "'budget'");
  ExpectInvalid(ParseLicenceRequest(Licence("", "2030-01-01' --")), "'not_after'");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":["0; DROP TABLE groups"]})"), "'pcrs[0]'");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":"n","version":"1",)"
                                       R"("dek":"' OR 1=1 --' OR 1=1 --' OR 1=1 --' OR 1=1 --)"
                                       R"(' OR 1=1 --' OR 1=1 --' OR"})"),
                "'dek'");
}

// ----- models ------------------------------------------------------------------------------

TEST(ModelRegistration, ParsesEveryField) {
  Result<ModelRegistration> m = ParseModelRegistration(
      R"({"model_id":"00112233445566778899aabbccddeeff","name":"resnet","version":"1.2",)"
      R"("dek":")" +
      std::string(kDekHex) + R"(","sealed_sha256":")" + std::string(64, 'c') + "\"}");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->model_id, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(m->name, "resnet");
  EXPECT_EQ(m->version, "1.2");
  ASSERT_EQ(m->dek.size(), 32u);
  for (size_t i = 0; i < 32; ++i) EXPECT_EQ(m->dek.data()[i], i);
  EXPECT_EQ(m->sealed_sha256, std::string(64, 'c'));
}

TEST(ModelRegistration, SealedShaIsOptional) {
  Result<ModelRegistration> m = ParseModelRegistration(
      R"({"model_id":"m","name":"n","version":"1","dek":")" + std::string(kDekHex) + "\"}");
  ASSERT_TRUE(m.ok()) << m.error().ToString();
  EXPECT_EQ(m->sealed_sha256, "");
}

TEST(ModelRegistration, RejectsMalformedFields) {
  const std::string dek = R"(,"dek":")" + std::string(kDekHex) + "\"";
  ExpectInvalid(ParseModelRegistration(R"({"name":"n","version":"1")" + dek + "}"),
                "'model_id': missing");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":7,"name":"n","version":"1")" + dek + "}"),
                "'model_id': expected a string");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":")" + std::string(33, 'a') +
                                       R"(","name":"n","version":"1")" + dek + "}"),
                "'model_id': longer than 32");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":")" + std::string(129, 'n') +
                                       R"(","version":"1")" + dek + "}"),
                "'name'");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":"n","version":"1","dek":"00"})"),
                "'dek': expected 64 hex digits");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":"n","version":"1","dek":")" +
                                       std::string(62, '0') + "zz\"}"),
                "'dek'");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":"n","version":"1","dek":32})"),
                "'dek'");
  ExpectInvalid(ParseModelRegistration(R"({"model_id":"m","name":"n","version":"1")" + dek +
                                       R"(,"sealed_sha256":")" + std::string(65, 'c') + "\"}"),
                "'sealed_sha256'");
}

TEST(ModelRetirement, DefaultsToRetiredForAnEmptyBody) {
  EXPECT_EQ(*ParseModelRetirement(""), "retired");
  EXPECT_EQ(*ParseModelRetirement(R"({"reason":"superseded by v2"})"), "superseded by v2");
  ExpectInvalid(ParseModelRetirement("{}"), "'reason': missing");
  ExpectInvalid(ParseModelRetirement(R"({"reason":null})"), "'reason': missing");
  ExpectInvalid(ParseModelRetirement(R"({"reason":")" + std::string(513, 'r') + "\"}"),
                "'reason': longer than 512");
  ExpectInvalid(ParseModelRetirement(" "), "retirement");
}

// ----- groups and golden sets ----------------------------------------------------------------

TEST(GroupRequest, ParsesAndDefaults) {
  Result<GroupSpec> g = ParseGroupRequest(R"({"name":"kiosks","pcrs":[0,7,23]})");
  ASSERT_TRUE(g.ok()) << g.error().ToString();
  EXPECT_EQ(g->name, "kiosks");
  EXPECT_EQ(g->pcrs, (std::vector<uint32_t>{0, 7, 23}));
  EXPECT_FALSE(g->allow_tofu);
  EXPECT_TRUE(g->require_ek_certificate);

  g = ParseGroupRequest(
      R"({"name":"lab","pcrs":[],"allow_tofu":true,"require_ek_certificate":false})");
  ASSERT_TRUE(g.ok()) << g.error().ToString();
  EXPECT_TRUE(g->allow_tofu);
  EXPECT_FALSE(g->require_ek_certificate);
  // null is "absent" for optional fields.
  g = ParseGroupRequest(R"({"name":"lab","pcrs":[1],"allow_tofu":null})");
  ASSERT_TRUE(g.ok()) << g.error().ToString();
  EXPECT_FALSE(g->allow_tofu);
}

TEST(GroupRequest, RejectsBadPcrListsAndFlags) {
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[24]})"), "'pcrs[0]'");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[0,-1]})"), "'pcrs[1]'");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[1.5]})"), "'pcrs[0]'");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[18446744073709551616]})"), "'pcrs[0]'");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":7})"), "'pcrs': expected an array");
  std::string many = R"({"name":"g","pcrs":[0)";
  for (int i = 1; i < 25; ++i) many += ",0";
  ExpectInvalid(ParseGroupRequest(many + "]}"), "more than 24 items");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[0],"allow_tofu":"yes"})"),
                "'allow_tofu': expected true or false");
  ExpectInvalid(ParseGroupRequest(R"({"name":"g","pcrs":[0],"require_ek_certificate":1})"),
                "'require_ek_certificate'");
  ExpectInvalid(ParseGroupRequest(R"({"pcrs":[0]})"), "'name': missing");
}

TEST(GoldenSetRequest, ParsesPcrValues) {
  Result<GoldenSetSpec> s =
      ParseGoldenSetRequest(R"({"name":"v1","pcrs":{"0":")" + std::string(kPcrHex) + R"(","23":")" +
                            std::string(64, '0') + "\"}}");
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->name, "v1");
  ASSERT_EQ(s->pcrs.size(), 2u);
  EXPECT_EQ(s->pcrs.at(0)[0], 0xaa);
  EXPECT_EQ(s->pcrs.at(23)[31], 0x00);
}

TEST(GoldenSetRequest, RejectsBadIndicesAndValues) {
  const std::string v = std::string("\"") + kPcrHex + "\"";
  for (const char* index : {"24", "07", "-1", "+1", "", " 1", "1 ", "0x1", "4294967296"}) {
    ExpectInvalid(
        ParseGoldenSetRequest(R"({"name":"v","pcrs":{")" + std::string(index) + "\":" + v + "}}"),
        "not a PCR index");
  }
  ExpectInvalid(ParseGoldenSetRequest(R"({"name":"v","pcrs":{"1":"abcd"}})"),
                "'pcrs.1': expected 64 hex digits");
  ExpectInvalid(ParseGoldenSetRequest(R"({"name":"v","pcrs":{"1":null}})"), "'pcrs.1'");
  ExpectInvalid(ParseGoldenSetRequest(R"({"name":"v","pcrs":[]})"), "'pcrs': expected an object");
}

// ----- enrollment tokens ---------------------------------------------------------------------

TEST(EnrollmentTokenRequest, TtlDefaultsToOneDayAndIsCapped) {
  Result<EnrollmentTokenSpec> t = ParseEnrollmentTokenRequest(R"({"group":"kiosks"})");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->group, "kiosks");
  EXPECT_EQ(t->ttl, std::chrono::seconds(24 * 3600));
  t = ParseEnrollmentTokenRequest(R"({"group":"g","ttl_seconds":2592000})");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->ttl, std::chrono::seconds(30 * 24 * 3600));
  ExpectInvalid(ParseEnrollmentTokenRequest(R"({"group":"g","ttl_seconds":2592001})"),
                "'ttl_seconds': larger than");
  ExpectInvalid(ParseEnrollmentTokenRequest(R"({"group":"g","ttl_seconds":-5})"), "'ttl_seconds'");
  ExpectInvalid(ParseEnrollmentTokenRequest(R"({"group":"g","ttl_seconds":1e3})"), "'ttl_seconds'");
  ExpectInvalid(ParseEnrollmentTokenRequest(R"({"ttl_seconds":60})"), "'group': missing");
  // The first bad field in order is the one reported.
  ExpectInvalid(ParseEnrollmentTokenRequest(R"({"group":1,"ttl_seconds":"x"})"), "'group'");
}

// ----- licences -------------------------------------------------------------------------------

TEST(LicenceRequest, ParsesEveryField) {
  Result<LicenceSpec> l = ParseLicenceRequest(
      R"({"model_id":"m1","device_id":"dev_1","budget":281474976710656,)"
      R"("not_after":"2030-06-01T12:00:00Z","offline_grace_seconds":31536000,)"
      R"("extension":{"manual":false,"auto_approve_up_to":50,"period_seconds":86400}})");
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_EQ(l->model_id, "m1");
  EXPECT_EQ(l->device_id, "dev_1");
  EXPECT_EQ(l->group, "");
  EXPECT_EQ(l->budget, uint64_t{1} << 48);
  EXPECT_EQ(l->not_after.time_since_epoch().count(), 1906545600);
  EXPECT_EQ(l->offline_grace_ms, 31536000ull * 1000);
  EXPECT_FALSE(l->extension.manual);
  EXPECT_EQ(l->extension.auto_approve_up_to, 50u);
  EXPECT_EQ(l->extension.period_seconds, 86400u);
}

TEST(LicenceRequest, ADateMeansTheEndOfThatDay) {
  Result<LicenceSpec> l = ParseLicenceRequest(Licence());
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_EQ(l->not_after.time_since_epoch().count(), 1893542399);  // 2030-01-01T23:59:59Z
  EXPECT_TRUE(l->extension.manual);
}

TEST(LicenceRequest, ExtensionPolicyIsManualUnlessAutoApprovalIsGiven) {
  Result<LicenceSpec> l = ParseLicenceRequest(Licence(R"(,"extension":{})"));
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_TRUE(l->extension.manual);
  l = ParseLicenceRequest(Licence(R"(,"extension":{"auto_approve_up_to":10})"));
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_FALSE(l->extension.manual);
  EXPECT_EQ(l->extension.auto_approve_up_to, 10u);
  l = ParseLicenceRequest(Licence(R"(,"extension":{"manual":true,"auto_approve_up_to":10})"));
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_TRUE(l->extension.manual);
  l = ParseLicenceRequest(Licence(R"(,"extension":null)"));
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_TRUE(l->extension.manual);
}

TEST(LicenceRequest, RejectsMalformedFields) {
  ExpectInvalid(ParseLicenceRequest(R"({"group":"g","budget":1,"not_after":"2030-01-01",)"
                                    R"("offline_grace_seconds":0})"),
                "'model_id': missing");
  ExpectInvalid(ParseLicenceRequest(R"({"model_id":"m","budget":281474976710657,)"
                                    R"("not_after":"2030-01-01","offline_grace_seconds":0})"),
                "'budget': larger than");
  ExpectInvalid(ParseLicenceRequest(R"({"model_id":"m","budget":true,)"
                                    R"("not_after":"2030-01-01","offline_grace_seconds":0})"),
                "'budget'");
  for (const char* date : {"2030-02-30", "2030-13-01", "1969-12-31", "2030-01-01T24:00:00Z",
                           "2030-01-01T00:00:00+01:00", "01/01/2030", "", "10000-01-01"}) {
    ExpectInvalid(ParseLicenceRequest(Licence("", date)), "'not_after'");
  }
  ExpectInvalid(ParseLicenceRequest(R"({"model_id":"m","budget":1,"not_after":"2030-01-01",)"
                                    R"("offline_grace_seconds":31536001})"),
                "'offline_grace_seconds'");
  ExpectInvalid(ParseLicenceRequest(Licence(R"(,"extension":[])")),
                "'extension': expected an object");
  ExpectInvalid(ParseLicenceRequest(Licence(R"(,"extension":{"manual":"no"})")),
                "'extension.manual'");
  ExpectInvalid(ParseLicenceRequest(Licence(R"(,"extension":{"period_seconds":31622401})")),
                "'extension.period_seconds'");
  ExpectInvalid(
      ParseLicenceRequest(Licence(R"(,"extension":{"auto_approve_up_to":281474976710657})")),
      "'extension.auto_approve_up_to'");
  ExpectInvalid(ParseLicenceRequest(Licence(R"(,"device_id":)" + std::string("[]"))),
                "'device_id'");
}

TEST(LicenceRequest, TheLatestDateTheFormatAllowsFitsATimePoint) {
  Result<LicenceSpec> l = ParseLicenceRequest(Licence("", "9999-12-31T23:59:59Z"));
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_EQ(l->not_after.time_since_epoch().count(), 253402300799);
}

// ----- extensions, revocations, tokens ---------------------------------------------------------

TEST(ExtensionApproval, EmptyBodyOrNoGrantedMeansZero) {
  EXPECT_EQ(*ParseExtensionApproval(""), 0u);
  EXPECT_EQ(*ParseExtensionApproval("{}"), 0u);
  EXPECT_EQ(*ParseExtensionApproval(R"({"granted":null})"), 0u);
  EXPECT_EQ(*ParseExtensionApproval(R"({"granted":1099511627776})"), uint64_t{1} << 40);
  ExpectInvalid(ParseExtensionApproval(R"({"granted":1099511627777})"), "'granted': larger");
  ExpectInvalid(ParseExtensionApproval(R"({"granted":-1})"), "'granted'");
  ExpectInvalid(ParseExtensionApproval(R"({"granted":"5"})"), "'granted'");
  ExpectInvalid(ParseExtensionApproval(" "), "approval");
}

TEST(ExtensionDenial, NeedsAReason) {
  EXPECT_EQ(*ParseExtensionDenial(R"({"reason":"over budget"})"), "over budget");
  ExpectInvalid(ParseExtensionDenial(""), "denial");
  ExpectInvalid(ParseExtensionDenial("{}"), "'reason': missing");
  ExpectInvalid(ParseExtensionDenial(R"({"reason":")" + std::string(513, 'x') + "\"}"),
                "'reason': longer than 512");
  EXPECT_TRUE(ParseExtensionDenial(R"({"reason":")" + std::string(512, 'x') + "\"}").ok());
}

TEST(RevocationRequest, ParsesAndReportsTheFirstBadField) {
  Result<RevocationSpec> r =
      ParseRevocationRequest(R"({"scope":"licence","id":"lic_1","reason":"unpaid"})");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->scope, "licence");
  EXPECT_EQ(r->id, "lic_1");
  EXPECT_EQ(r->reason, "unpaid");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":1,"id":2,"reason":3})"), "'scope'");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":"device","id":2,"reason":3})"), "'id'");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":"device","id":"d"})"), "'reason': missing");
  ExpectInvalid(ParseRevocationRequest(R"({"scope":"everything-at-once","id":"d","reason":"r"})"),
                "'scope': longer than 16");
}

TEST(TokenRequest, ParsesRolesExactly) {
  Result<TokenSpec> t = ParseTokenRequest(R"({"name":"ci","role":"operator"})");
  ASSERT_TRUE(t.ok()) << t.error().ToString();
  EXPECT_EQ(t->name, "ci");
  EXPECT_EQ(t->role, Role::kOperator);
  EXPECT_EQ(ParseTokenRequest(R"({"name":"a","role":"admin"})")->role, Role::kAdmin);
  EXPECT_EQ(ParseTokenRequest(R"({"name":"v","role":"viewer"})")->role, Role::kViewer);
  for (const char* bad : {"Admin", "admin ", "root", "", "admin\\u0000"}) {
    EXPECT_FALSE(ParseTokenRequest(R"({"name":"n","role":")" + std::string(bad) + "\"}").ok())
        << bad;
  }
  ExpectInvalid(ParseTokenRequest(R"({"role":"admin"})"), "'name': missing");
  ExpectInvalid(ParseTokenRequest(R"({"name":"n"})"), "'role': missing");
}

// ----- query parameters -----------------------------------------------------------------------

TEST(QueryUint, ParsesDecimalOrFallsBack) {
  EXPECT_EQ(*QueryUint({}, "limit", 1000, 10000), 1000u);
  EXPECT_EQ(*QueryUint({{"limit", "0"}}, "limit", 1000, 10000), 0u);
  EXPECT_EQ(*QueryUint({{"limit", "10000"}}, "limit", 1000, 10000), 10000u);
  EXPECT_EQ(*QueryUint({{"after", "18446744073709551615"}}, "after", 0, UINT64_MAX), UINT64_MAX);
  EXPECT_EQ(*QueryUint({{"other", "x"}}, "after", 7, 10), 7u);
}

TEST(QueryUint, RejectsAnythingButAPlainDecimalInRange) {
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "0x10", "1e3", "1.0", "10001",
                          "18446744073709551616", "1; DROP TABLE audit", "1' OR '1'='1", "1%00"}) {
    ExpectInvalid(QueryUint({{"limit", bad}}, "limit", 1000, 10000),
                  "query parameter 'limit' must be an integer from 0 to 10000");
  }
}

TEST(ExtensionStatusFilter, AcceptsTheThreeStatusesOnly) {
  EXPECT_EQ(*ParseExtensionStatusFilter({}), std::nullopt);
  EXPECT_EQ(*ParseExtensionStatusFilter({{"status", "pending"}}), ExtensionStatus::kPending);
  EXPECT_EQ(*ParseExtensionStatusFilter({{"status", "approved"}}), ExtensionStatus::kApproved);
  EXPECT_EQ(*ParseExtensionStatusFilter({{"status", "denied"}}), ExtensionStatus::kDenied);
  for (const char* bad : {"", "PENDING", "pending ", "pending' OR '1'='1", "0", "all"}) {
    ExpectInvalid(ParseExtensionStatusFilter({{"status", bad}}), "query parameter 'status'");
  }
}

}  // namespace
}  // namespace custody::custodian
