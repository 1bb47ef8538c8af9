#include "agent/state.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "core/base/file.h"
#include "tests/support/must.h"

namespace custody::agent {
namespace {

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/custody-state-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  std::string root_;
};

DeviceIdentity SampleIdentity() {
  DeviceIdentity id;
  id.device_id = "dev_0123";
  id.ak = {Bytes{1, 2, 3}, Bytes{4, 5}};
  id.binding = {Bytes{6}, Bytes{7, 8}};
  id.counter_index = 0x01000C57;
  id.counter_auth = Bytes(32, 9);
  id.counter_unit = 4;
  id.pcr_selection = {0, 2, 4, 7};
  id.lease_public = Bytes(32, 1);
  id.policy_public = Bytes(65, 4);
  id.ca_certificate_pem = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";
  id.certificate_pem = "-----BEGIN CERTIFICATE-----\nREVW\n-----END CERTIFICATE-----\n";
  return id;
}

TEST_F(StateDirTest, IdentityStateAndLeasesRoundTripInOwnerOnlyFiles) {
  const std::string path = root_ + "/state";
  StateDir dir = MUST(StateDir::Create(path));
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_FALSE(dir.enrolled());
  EXPECT_EQ(dir.LoadIdentity().error().code(), StatusCode::kNotFound);

  ASSERT_OK(dir.SaveIdentity(SampleIdentity()));
  ASSERT_EQ(stat((path + "/identity.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const DeviceIdentity id = MUST(dir.LoadIdentity());
  EXPECT_EQ(id.device_id, "dev_0123");
  EXPECT_EQ(id.ak.private_area, (Bytes{4, 5}));
  EXPECT_EQ(id.counter_auth, Bytes(32, 9));
  EXPECT_EQ(id.counter_unit, 4u);
  EXPECT_EQ(id.pcr_selection, (std::vector<uint32_t>{0, 2, 4, 7}));
  EXPECT_EQ(id.certificate_pem, SampleIdentity().certificate_pem);
  EXPECT_EQ(StateDir::Create(path).error().code(), StatusCode::kAlreadyExists);

  AgentState s = MUST(dir.LoadState());  // none yet: fresh
  EXPECT_EQ(s.book.max_sequence, 0u);
  s.book.max_sequence = 7;
  s.book.revocation_epoch = 2;
  s.book.held["lic_a"] = 7;
  s.book.revoked.push_back(
      {"licence", "lic_b", "ended", "2027-01-01T00:00:00Z", 2, {"m2"}, {"resnet"}});
  s.events_after = 12;
  s.report_cursor = 40;
  s.report_journal = "00ff";
  s.pending_report =
      PendingReport{"rep_1", 40, 52, 300, {{"m1", "uid:1000", 12}}, "30 requests written off"};
  ASSERT_OK(dir.SaveState(s));
  const AgentState back = MUST(dir.LoadState());
  EXPECT_EQ(back.book.held.at("lic_a"), 7u);
  ASSERT_EQ(back.book.revoked.size(), 1u);
  EXPECT_EQ(back.book.revoked[0].model_ids, std::vector<std::string>{"m2"});
  ASSERT_TRUE(back.pending_report.has_value());
  EXPECT_EQ(back.pending_report->position, 300u);
  EXPECT_EQ(back.pending_report->counts.at(0).client, "uid:1000");
  EXPECT_EQ(back.pending_report->anomaly, "30 requests written off");
  EXPECT_EQ(StateToJson(back), StateToJson(s));
  // A report without an anomaly has no such key (the files of earlier versions read the same).
  s.pending_report->anomaly.clear();
  EXPECT_FALSE(StateToJson(s)["pending_report"].contains("anomaly"));
  ASSERT_OK(dir.SaveState(s));
  EXPECT_EQ(MUST(dir.LoadState()).pending_report->anomaly, "");

  ASSERT_OK(dir.SaveLeases({nlohmann::json{{"type", "custody.lease.v1"}}}));
  EXPECT_EQ(MUST(dir.LoadLeases()).size(), 1u);
}

TEST_F(StateDirTest, CorruptFilesAreDataLossNamingTheFileAndField) {
  StateDir dir = MUST(StateDir::Create(root_ + "/state"));
  ASSERT_OK(dir.SaveIdentity(SampleIdentity()));
  nlohmann::json j = IdentityToJson(SampleIdentity());
  j["counter_unit"] = 0;
  Result<DeviceIdentity> bad = IdentityFromJson(j.dump(), "identity.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.error().message().find("identity.json: field 'counter_unit'"), std::string::npos)
      << bad.error().message();
  EXPECT_EQ(StateFromJson("{\"version\": 1}", "state.json").error().code(), StatusCode::kDataLoss);
  EXPECT_EQ(StateFromJson("not json", "state.json").error().code(), StatusCode::kDataLoss);
  nlohmann::json unknown = StateToJson({});
  unknown["extra"] = 1;
  EXPECT_NE(StateFromJson(unknown.dump(), "state.json").error().message().find("extra"),
            std::string::npos);
  ASSERT_OK(WriteFileAtomic(root_ + "/state/leases.json", AsBytes(std::string("{\"leases\": 3}")),
                            WriteOptions{0600, Overwrite::kAllow}));
  EXPECT_EQ(dir.LoadLeases().error().code(), StatusCode::kDataLoss);
}

TEST_F(StateDirTest, SealedTlsKeyRoundTripsAndABadFileNamesWhatIsWrong) {
  StateDir dir = MUST(StateDir::Create(root_ + "/state"));
  const std::string path = root_ + "/state/tls-key.sealed";
  Status missing = dir.LoadTlsKey().error();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("enroll the device again"), std::string::npos)
      << missing.ToString();
  const SealedTlsKey key{{Bytes{1, 2}, Bytes{3}}, Bytes(12, 4), Bytes(40, 5)};
  ASSERT_OK(dir.SaveTlsKey(key));
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const SealedTlsKey back = MUST(dir.LoadTlsKey());
  EXPECT_EQ(back.sealed_key.private_area, Bytes{3});
  EXPECT_EQ(back.nonce, Bytes(12, 4));
  EXPECT_EQ(back.ciphertext, Bytes(40, 5));
  const nlohmann::json good = nlohmann::json::parse(AsChars(MUST(ReadFile(path))));
  auto load_with = [&](const std::string& field, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[field] = value;
    EXPECT_TRUE(
        WriteFileAtomic(path, AsBytes(j.dump()), WriteOptions{0600, Overwrite::kAllow}).ok());
    return dir.LoadTlsKey().error();
  };
  for (const auto& [field, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"nonce", Base64Encode(Bytes(8, 1))},
           {"ciphertext", Base64Encode(Bytes(16, 1))},
           {"version", 2},
           {"extra", 1}}) {
    const Status bad = load_with(field, value);
    EXPECT_EQ(bad.code(), StatusCode::kDataLoss) << bad.ToString();
    EXPECT_NE(bad.message().find("tls-key.sealed"), std::string::npos) << bad.ToString();
    EXPECT_NE(bad.message().find(field), std::string::npos) << bad.ToString();
  }
}

TEST_F(StateDirTest, DirectoryOthersCanWriteToIsRefused) {
  const std::string path = root_ + "/open";
  ASSERT_EQ(mkdir(path.c_str(), 0777), 0);
  ASSERT_EQ(chmod(path.c_str(), 0777), 0);
  Result<StateDir> dir = StateDir::Open(path);
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(dir.error().message().find("mode 0777"), std::string::npos) << dir.error().message();
  EXPECT_EQ(StateDir::Open(root_ + "/missing").error().code(), StatusCode::kNotFound);
  EXPECT_EQ(StateDir::Create("relative").error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(StateDir::Create(root_ + "/no/parent").error().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace custody::agent
