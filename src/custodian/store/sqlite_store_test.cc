#include "custodian/store/sqlite_store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <regex>
#include <thread>
#include <tuple>

#include "custodian/store/sqlite_db.h"
#include "custodian/store/sqlite_ptr.h"
#include "custodian/store/sqlite_schema.h"

namespace custody::custodian {

// Field-by-field equality of the records, for EXPECT_EQ (test code only).
auto Tie(const ApiToken& t) {
  return std::tie(t.id, t.name, t.role, t.token_hash, t.created, t.revoked);
}
auto Tie(const ModelRecord& m) {
  return std::tie(m.model_id, m.name, m.version, m.dek_sealed, m.sealed_sha256, m.created,
                  m.retired);
}
auto Tie(const GoldenSetRecord& g) { return std::tie(g.name, g.pcrs); }
bool operator==(const GoldenSetRecord& a, const GoldenSetRecord& b) { return Tie(a) == Tie(b); }
auto Tie(const GroupRecord& g) {
  return std::tie(g.name, g.pcr_selection, g.allow_tofu, g.require_ek_certificate, g.golden,
                  g.approvals_json, g.created);
}
auto Tie(const EnrollmentTokenRecord& t) {
  return std::tie(t.token_hash, t.group, t.created, t.expires, t.used, t.used_by_device,
                  t.created_by);
}
auto Tie(const PendingEnrollment& p) {
  return std::tie(p.id, p.token_hash, p.group, p.ek_public, p.ek_certificate, p.ek_type,
                  p.ak_public, p.credential_secret_hash, p.certify_nonce, p.expires);
}
auto Tie(const DeviceRecord& d) {
  return std::tie(d.device_id, d.group, d.ek_public, d.ek_name, d.ak_public, d.binding_public,
                  d.counter_index, d.counter_name, d.tls_serial, d.tls_public_key, d.enrolled,
                  d.revoked, d.revoked_reason, d.last_counter, d.last_seen, d.lease_sequence,
                  d.revocation_epoch, d.tofu_pcrs, d.counter_unit, d.meter_position,
                  d.attested_tpm_clock_ms, d.attested_tpm_reset_count);
}
auto Tie(const LicenceRecord& l) {
  return std::tie(l.licence_id, l.model_id, l.device_id, l.group, l.budget, l.used, l.not_after,
                  l.offline_grace_ms, l.extension.manual, l.extension.auto_approve_up_to,
                  l.extension.period_seconds, l.created, l.revoked, l.revoked_reason);
}
auto Tie(const LeaseRecord& l) {
  return std::tie(l.lease_id, l.device_id, l.licence_id, l.model_id, l.sequence, l.counter_limit,
                  l.not_after, l.offline_grace_ms, l.revocation_epoch, l.issued, l.envelope_json);
}
auto Tie(const UsageCount& u) { return std::tie(u.model_id, u.client, u.count); }
auto Tie(const ExtensionRequest& e) {
  return std::tie(e.request_id, e.device_id, e.licence_id, e.requested, e.reason, e.status,
                  e.granted, e.decided_by, e.decided, e.created);
}
auto Tie(const DeviceEvent& e) {
  return std::tie(e.seq, e.device_id, e.type, e.payload_json, e.created);
}
bool operator==(const ApiToken& a, const ApiToken& b) { return Tie(a) == Tie(b); }
bool operator==(const ModelRecord& a, const ModelRecord& b) { return Tie(a) == Tie(b); }
bool operator==(const GroupRecord& a, const GroupRecord& b) { return Tie(a) == Tie(b); }
bool operator==(const EnrollmentTokenRecord& a, const EnrollmentTokenRecord& b) {
  return Tie(a) == Tie(b);
}
bool operator==(const PendingEnrollment& a, const PendingEnrollment& b) { return Tie(a) == Tie(b); }
bool operator==(const DeviceRecord& a, const DeviceRecord& b) { return Tie(a) == Tie(b); }
bool operator==(const LicenceRecord& a, const LicenceRecord& b) { return Tie(a) == Tie(b); }
bool operator==(const LeaseRecord& a, const LeaseRecord& b) { return Tie(a) == Tie(b); }
bool operator==(const UsageCount& a, const UsageCount& b) { return Tie(a) == Tie(b); }
bool operator==(const ExtensionRequest& a, const ExtensionRequest& b) { return Tie(a) == Tie(b); }
bool operator==(const DeviceEvent& a, const DeviceEvent& b) { return Tie(a) == Tie(b); }

namespace {

using namespace std::chrono_literals;
using protocol::AuditEntry;

TimePoint T(int64_t seconds) { return TimePoint(std::chrono::seconds(seconds)); }
const TimePoint kT0 = T(1'700'000'000);

// SQL and JSON metacharacters, comment and parameter markers, and NUL-free unicode.
constexpr char kMeta[] =
    "'\"; DROP TABLE models; -- /* */ \\ % _ ? ?1 :a @a $a ) ); ' OR '1'='1 \xc3\xbc "
    "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82 \t\r\n";

// A one-shot flag a test can wait on with a deadline.
class Flag {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool WaitFor(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Polls `done` until it holds or the deadline passes (for state with no event to wait on).
template <typename Fn>
bool WaitUntil(Fn&& done, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ----- record builders (x is appended to every string, for the metacharacter test) -------

GroupRecord MakeGroup(const std::string& name) {
  GroupRecord g;
  g.name = name;
  g.pcr_selection = {0, 2, 4, 7};
  g.created = kT0;
  return g;
}

ModelRecord MakeModel(const std::string& id) {
  ModelRecord m;
  m.model_id = id;
  m.name = "resnet";
  m.version = "1.0";
  m.dek_sealed = Bytes{0x00, 0x27, 0x3b, 0x2d, 0x2d, 0xff};
  m.created = kT0;
  return m;
}

DeviceRecord MakeDevice(const std::string& id, const std::string& group) {
  DeviceRecord d;
  d.device_id = id;
  d.group = group;
  d.ek_public = Bytes{1, 2, 3};
  d.ek_name = Bytes{0x00, 0x0b, 4};
  d.ak_public = Bytes{5};
  d.binding_public = Bytes{6, 7};
  d.counter_index = 0x01500020;
  d.counter_name = Bytes{8};
  d.tls_serial = "0a1b";
  d.tls_public_key = Bytes{9, 9};
  d.enrolled = kT0;
  return d;
}

LicenceRecord MakeLicence(const std::string& id, const std::string& model,
                          const std::string& device, const std::string& group) {
  LicenceRecord l;
  l.licence_id = id;
  l.model_id = model;
  l.device_id = device;
  l.group = group;
  l.budget = 1000;
  l.not_after = kT0 + 86400s;
  l.offline_grace_ms = 3600000;
  l.created = kT0;
  return l;
}

UsageReport MakeReport(const std::string& device, const std::string& id) {
  UsageReport r;
  r.device_id = device;
  r.report_id = id;
  r.counter_value = 10;
  r.counts = {{"m1", "kiosk", 3}};
  r.received = kT0;
  return r;
}

// A group "g", a device "dev_1" in it and a model "m1": what most records refer to.
Status PutBasics(Transaction& tx) {
  CUSTODY_RETURN_IF_ERROR(tx.PutGroup(MakeGroup("g")));
  CUSTODY_RETURN_IF_ERROR(tx.PutDevice(MakeDevice("dev_1", "g")));
  return tx.PutModel(MakeModel("m1"));
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("custody-store-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "custodian.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<SqliteStore> OpenStore(Durability d = Durability::kPowerLoss) {
    auto store = SqliteStore::Open(path_, {d});
    EXPECT_TRUE(store.has_value()) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  // A raw connection to the file, as someone with the file (or a test) would use it.
  sqlite::SqliteDbPtr RawOpen() {
    sqlite3* raw = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &raw), SQLITE_OK);
    return sqlite::SqliteDbPtr(raw);
  }
  static int RawExec(sqlite3* db, const std::string& sql, std::string* error = nullptr) {
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    if (error != nullptr) *error = err != nullptr ? err : "";
    sqlite3_free(err);
    return rc;
  }

  // The file as a custodian at schema `version` left it: group 'g' and the rows `devices` lists
  // after "INSERT INTO devices (<the columns of version 2>, `extra_columns`) VALUES ".
  void OldDatabase(int version, const std::string& extra_columns, const std::string& devices) {
    {
      auto c = sqlite::Connection::Open(path_, {sqlite::ConnectionRole::kWriter});
      ASSERT_TRUE(c.has_value()) << c.error().ToString();
      ASSERT_EQ(sqlite::Migrate(**c, sqlite::Migrations().first(version)).value(), version);
    }
    auto db = RawOpen();
    std::string error;
    ASSERT_EQ(RawExec(db.get(),
                      "INSERT INTO device_groups VALUES ('g', '[0]', 0, 1, '[]', '[]', 0);"
                      "INSERT INTO devices (device_id, group_name, ek_public, ek_name, ak_public, "
                      "binding_public, counter_index, counter_name, tls_serial, tls_public_key, "
                      "enrolled, revoked, revoked_reason, last_counter, last_seen, lease_sequence, "
                      "revocation_epoch, tofu_pcrs" +
                          extra_columns + ") VALUES " + devices,
                      &error),
              SQLITE_OK)
        << error;
  }

  std::vector<AuditEntry> AllAudit(const Store& store) {
    auto entries = store.AuditAfter(0, SIZE_MAX);
    EXPECT_TRUE(entries.has_value()) << entries.error().ToString();
    return entries ? *entries : std::vector<AuditEntry>();
  }

  // Opens the store, appends `n` audit entries in one transaction and closes it again.
  void AppendAuditEntries(size_t n) {
    auto store = OpenStore(Durability::kProcessCrash);
    ASSERT_NE(store, nullptr);
    Status s = store->Transact([&](Transaction& tx) -> Status {
      for (size_t i = 0; i < n; ++i) {
        CUSTODY_RETURN_IF_ERROR(
            tx.Audit("admin:alice", "licence.extend", "lic_1", {{"granted", i}}));
      }
      return OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // Opening the store fails with `code` and a message that holds `needle`.
  void ExpectOpenRefused(StatusCode code, const std::string& needle) {
    auto store = SqliteStore::Open(path_, {});
    ASSERT_FALSE(store.has_value());
    EXPECT_EQ(store.error().code(), code) << store.error().ToString();
    EXPECT_TRUE(Contains(store.error().message(), needle)) << store.error().ToString();
  }

  // Puts one record of every type, with optional fields absent and present, through one
  // transaction, and reads each back through the Store and through a Transaction. `x` is
  // appended to every string field (ids included).
  void RoundTripEverything(SqliteStore& store, const std::string& x);

  std::filesystem::path dir_;
  std::string path_;
};

void SqliteStoreTest::RoundTripEverything(SqliteStore& store, const std::string& x) {
  // Audit text fields refuse control characters (the export format); they get x without them.
  std::string xa;
  std::copy_if(x.begin(), x.end(), std::back_inserter(xa),
               [](char c) { return static_cast<unsigned char>(c) >= 0x20; });
  ApiToken tok1{"tok_1" + x, "ci" + x, Role::kViewer, Bytes(32, 0x11), kT0, std::nullopt};
  ApiToken tok2{"tok_2" + x, "alice" + x, Role::kAdmin, Bytes{0, '\'', ';', 0xff},
                kT0 + 1s,    kT0 + 2s};
  ModelRecord m1 = MakeModel("m1" + x);
  m1.name += x;
  m1.version += x;
  ModelRecord m2 = MakeModel("m2" + x);
  m2.sealed_sha256 = "ab12" + x;
  m2.created = kT0 + 1s;
  m2.retired = kT0 + 9s;
  GroupRecord g1 = MakeGroup("g1" + x);
  g1.pcr_selection.clear();
  GroupRecord g2 = MakeGroup("g2" + x);
  g2.allow_tofu = true;
  g2.require_ek_certificate = false;
  g2.golden = {{"os-1" + x, {{0, Bytes(32, 0xaa)}, {7, Bytes(32, 0x00)}}},
               {"os-2" + x, {{10, Bytes(32, 0xbb)}}}};
  g2.approvals_json = {R"({"policy":"p1","note":")" + std::string("x") + R"("})", "[]" + x};
  EnrollmentTokenRecord et1{Bytes(32, 0x21),  g1.name, kT0, kT0 + 3600s, std::nullopt, "",
                            "admin:alice" + x};
  EnrollmentTokenRecord et2{Bytes(32, 0x22), g2.name,        kT0, kT0 + 3600s, kT0 + 60s,
                            "dev_1" + x,     "admin:bob" + x};
  PendingEnrollment p1;
  p1.id = "pend_1" + x;
  p1.token_hash = et1.token_hash;
  p1.group = g1.name;
  p1.ek_public = Bytes{1, 2};
  p1.ek_type = 1;
  p1.ak_public = Bytes{3};
  p1.credential_secret_hash = Bytes(32, 4);
  p1.certify_nonce = Bytes(16, 5);
  p1.expires = kT0 + 300s;
  PendingEnrollment p2 = p1;
  p2.id = "pend_2" + x;
  p2.ek_certificate = Bytes{0x30, 0x82, 0x00};
  DeviceRecord d1 = MakeDevice("dev_1" + x, g1.name);
  d1.tls_serial += x;
  DeviceRecord d2 = MakeDevice("dev_2" + x, g2.name);
  d2.revoked = kT0 + 100s;
  d2.revoked_reason = "stolen" + x;
  d2.last_counter = UINT64_MAX;
  d2.last_seen = kT0 + 50s;
  d2.lease_sequence = 7;
  d2.revocation_epoch = 3;
  d2.tofu_pcrs = {{0, Bytes(32, 1)}, {23, Bytes(32, 2)}};
  d2.counter_unit = 65536;
  d2.meter_position = UINT64_MAX - 1;
  d2.attested_tpm_clock_ms = (1ull << 63) + 7;
  d2.attested_tpm_reset_count = UINT32_MAX - 1;
  LicenceRecord l1 = MakeLicence("lic_1" + x, m1.model_id, d1.device_id, "");
  l1.budget = UINT64_MAX;
  l1.used = (1ull << 63) + 5;
  l1.extension = {false, 500, 86400};
  LicenceRecord l2 = MakeLicence("lic_2" + x, m2.model_id, "", g2.name);
  l2.revoked = kT0 + 10s;
  l2.revoked_reason = "ended" + x;
  LicenceRecord l3 = MakeLicence("lic_3" + x, m1.model_id, "", g1.name);
  LeaseRecord ls1{"lease_1" + x,
                  d1.device_id,
                  l1.licence_id,
                  m1.model_id,
                  1,
                  100,
                  kT0 + 60s,
                  5000,
                  0,
                  kT0,
                  "{\"sig\":\"" + x + "\"}"};
  LeaseRecord ls2 = ls1;
  ls2.lease_id = "lease_2" + x;
  ls2.sequence = 2;
  UsageReport r1 = MakeReport(d1.device_id, "rep_1" + x);
  r1.counts = {{m1.model_id, "kiosk" + x, 3}, {m1.model_id, "uid:1000" + x, 4}};
  r1.rollback = true;
  UsageReport r2 = MakeReport(d1.device_id, "rep_2" + x);
  r2.counts = {{m1.model_id, "kiosk" + x, 5}};
  UsageReport r3 = MakeReport(d1.device_id, "rep_3" + x);
  r3.counts.clear();
  ExtensionRequest e1{
      "ext_1" + x, d1.device_id, l1.licence_id, 100, "busy week" + x, ExtensionStatus::kPending,
      0,           "",           std::nullopt,  kT0};
  ExtensionRequest e2{"ext_2" + x, d1.device_id,      l1.licence_id,
                      200,         "more" + x,        ExtensionStatus::kApproved,
                      150,         "admin:carol" + x, kT0 + 5s,
                      kT0 + 1s};
  DeviceEvent ev{0, d1.device_id, "revocation" + x, "{\"reason\":\"" + x + "\"}", kT0};
  uint64_t ev_seq = 0;

  Status put_all = store.Transact([&](Transaction& tx) -> Status {
    for (const ApiToken& t : {tok1, tok2}) CUSTODY_RETURN_IF_ERROR(tx.PutToken(t));
    for (const ModelRecord& m : {m1, m2}) CUSTODY_RETURN_IF_ERROR(tx.PutModel(m));
    for (const GroupRecord& g : {g1, g2}) CUSTODY_RETURN_IF_ERROR(tx.PutGroup(g));
    for (const auto& t : {et1, et2}) CUSTODY_RETURN_IF_ERROR(tx.PutEnrollmentToken(t));
    for (const auto& p : {p1, p2}) CUSTODY_RETURN_IF_ERROR(tx.PutPendingEnrollment(p));
    for (const auto& d : {d1, d2}) CUSTODY_RETURN_IF_ERROR(tx.PutDevice(d));
    for (const auto& l : {l1, l2, l3}) CUSTODY_RETURN_IF_ERROR(tx.PutLicence(l));
    for (const auto& l : {ls1, ls2}) CUSTODY_RETURN_IF_ERROR(tx.PutLease(l));
    for (const auto& r : {r1, r2, r3}) CUSTODY_RETURN_IF_ERROR(tx.PutUsageReport(r));
    for (const auto& e : {e1, e2}) CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
    CUSTODY_ASSIGN_OR_RETURN(ev_seq, tx.AddEvent(ev));
    // Reads inside the transaction see its own writes.
    EXPECT_EQ(tx.GetDevice(d2.device_id).value(), d2);
    EXPECT_EQ(tx.GetLicence(l1.licence_id).value(), l1);
    EXPECT_EQ(tx.GetExtension(e2.request_id).value(), e2);
    EXPECT_EQ(tx.GetPendingEnrollment(p1.id).value(), p1);
    EXPECT_EQ(tx.GetPendingEnrollment(p2.id).value(), p2);
    EXPECT_EQ(tx.GetEnrollmentToken(et1.token_hash).value(), et1);
    EXPECT_EQ(tx.GetEnrollmentToken(et2.token_hash).value(), et2);
    return tx.Audit("admin:alice" + xa, "everything.put" + xa, "subject" + xa,
                    {{"note", x}, {"n", 1}});
  });
  ASSERT_TRUE(put_all.ok()) << put_all.ToString();

  EXPECT_EQ(store.FindTokenByHash(tok1.token_hash).value(), tok1);
  EXPECT_EQ(store.FindTokenByHash(tok2.token_hash).value(), tok2);
  EXPECT_FALSE(store.FindTokenByHash(Bytes(32, 0x99)).value().has_value());
  EXPECT_EQ(store.ListTokens().value(), (std::vector<ApiToken>{tok1, tok2}));
  EXPECT_EQ(store.GetModel(m1.model_id).value(), m1);
  EXPECT_EQ(store.ListModels().value(), (std::vector<ModelRecord>{m1, m2}));
  EXPECT_EQ(store.GetGroup(g2.name).value(), g2);
  EXPECT_EQ(store.ListGroups().value(), (std::vector<GroupRecord>{g1, g2}));
  EXPECT_EQ(store.GetDevice(d1.device_id).value(), d1);
  EXPECT_EQ(store.ListDevices().value(), (std::vector<DeviceRecord>{d1, d2}));
  EXPECT_EQ(store.GetLicence(l2.licence_id).value(), l2);
  EXPECT_EQ(store.ListLicences().value(), (std::vector<LicenceRecord>{l1, l2, l3}));
  // Its own licence and its group's, not revoked ones.
  EXPECT_EQ(store.LicencesForDevice(d1.device_id, g1.name).value(),
            (std::vector<LicenceRecord>{l1, l3}));
  EXPECT_EQ(store.LicencesForDevice(d2.device_id, g2.name).value(), std::vector<LicenceRecord>{});
  EXPECT_EQ(store.LeasesForDevice(d1.device_id).value(), (std::vector<LeaseRecord>{ls1, ls2}));
  EXPECT_EQ(store.DevicesWithModel(m1.model_id).value(), std::vector<std::string>{d1.device_id});
  EXPECT_EQ(store.DevicesWithModel(m2.model_id).value(), std::vector<std::string>{});
  EXPECT_EQ(
      store.UsageForDevice(d1.device_id).value(),
      (std::vector<UsageCount>{{m1.model_id, "kiosk" + x, 8}, {m1.model_id, "uid:1000" + x, 4}}));
  EXPECT_EQ(store.ListExtensions(std::nullopt).value(), (std::vector<ExtensionRequest>{e1, e2}));
  EXPECT_EQ(store.ListExtensions(ExtensionStatus::kApproved).value(),
            std::vector<ExtensionRequest>{e2});
  EXPECT_EQ(store.ListExtensions(ExtensionStatus::kDenied).value(),
            std::vector<ExtensionRequest>{});
  EXPECT_EQ(store.GrantedSince(l1.licence_id, kT0).value(), 150u);
  EXPECT_EQ(store.GrantedSince(l1.licence_id, kT0 + 6s).value(), 0u);
  ev.seq = ev_seq;
  EXPECT_EQ(store.EventsAfter(d1.device_id, ev_seq - 1, 10).value(), std::vector<DeviceEvent>{ev});
  EXPECT_EQ(store.LastEventSeq().value(), ev_seq);
  std::vector<AuditEntry> audit = AllAudit(store);
  ASSERT_FALSE(audit.empty());
  const AuditEntry& last = audit.back();
  EXPECT_EQ(last.actor, "admin:alice" + xa);
  EXPECT_EQ(last.action, "everything.put" + xa);
  EXPECT_EQ(last.subject, "subject" + xa);
  EXPECT_EQ(last.details, nlohmann::json({{"note", x}, {"n", 1}}).dump());
  EXPECT_TRUE(protocol::VerifyAuditChain(audit).ok());
  // The entry survives the export format too (what `custody admin audit verify` reads).
  auto parsed = protocol::AuditEntryFromJsonLine(protocol::AuditEntryToJsonLine(last));
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  EXPECT_EQ(protocol::AuditEntryToJsonLine(*parsed), protocol::AuditEntryToJsonLine(last));
}

// ----- round trips --------------------------------------------------------------------------

TEST_F(SqliteStoreTest, EveryRecordRoundTripsWithOptionalFieldsAbsentAndPresent) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RoundTripEverything(*store, "");
}

TEST_F(SqliteStoreTest, SqlMetacharactersInEveryStringFieldRoundTrip) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  RoundTripEverything(*store, kMeta);
  // Nothing was dropped or rewritten by the text: the tables are all there.
  EXPECT_TRUE(store->Transact(PutBasics).ok());
  EXPECT_EQ(store->ListModels().value().size(), 3u);
}

TEST_F(SqliteStoreTest, GetOfAnUnknownKeyIsNotFoundNamingIt) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  auto model = store->GetModel("nope");
  EXPECT_EQ(model.error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(model.error().message(), "model 'nope'")) << model.error().ToString();
  EXPECT_EQ(store->GetDevice("dev_x").error().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->GetGroup("g").error().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->GetLicence("lic").error().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->LastEventSeq().value(), 0u);
  EXPECT_TRUE(store->Ping().ok());
}

TEST_F(SqliteStoreTest, PutsOfGroupsDevicesLicencesAndExtensionsReplaceByKey) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  GroupRecord g = MakeGroup("g");
  g.golden = {{"new", {{7, Bytes(32, 7)}}}};
  DeviceRecord d = MakeDevice("dev_1", "g");
  d.last_counter = 42;
  d.lease_sequence = 9;
  d.counter_unit = 16;
  d.meter_position = 42 * 16 - 3;
  d.attested_tpm_clock_ms = 123456;
  LicenceRecord l = MakeLicence("lic_1", "m1", "dev_1", "");
  ExtensionRequest e{"ext_1", "dev_1", "lic_1",      10, "", ExtensionStatus::kPending,
                     0,       "",      std::nullopt, kT0};
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(g));
                    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(d));
                    CUSTODY_RETURN_IF_ERROR(tx.PutLicence(l));
                    CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
                    // Read-modify-write inside one transaction.
                    CUSTODY_ASSIGN_OR_RETURN(LicenceRecord read, tx.GetLicence("lic_1"));
                    read.used += 5;
                    read.budget += 100;
                    CUSTODY_RETURN_IF_ERROR(tx.PutLicence(read));
                    e.status = ExtensionStatus::kDenied;
                    e.decided = kT0 + 1s;
                    e.decided_by = "admin:alice";
                    return tx.PutExtension(e);
                  })
                  .ok());
  EXPECT_EQ(store->GetGroup("g").value(), g);
  EXPECT_EQ(store->GetDevice("dev_1").value(), d);
  LicenceRecord want = l;
  want.used = 5;
  want.budget = 1100;
  EXPECT_EQ(store->GetLicence("lic_1").value(), want);
  EXPECT_EQ(store->ListExtensions(std::nullopt).value(), std::vector<ExtensionRequest>{e});
}

TEST_F(SqliteStoreTest, RevokeAndRetireKeepTheFirstTimeAndNameUnknownKeys) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ApiToken tok{"tok_1", "ci", Role::kOperator, Bytes(32, 1), kT0, std::nullopt};
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutToken(tok));
                    CUSTODY_RETURN_IF_ERROR(tx.PutModel(MakeModel("m1")));
                    CUSTODY_RETURN_IF_ERROR(tx.RevokeToken("tok_1", kT0 + 10s));
                    CUSTODY_RETURN_IF_ERROR(tx.RevokeToken("tok_1", kT0 + 20s));
                    CUSTODY_RETURN_IF_ERROR(tx.RetireModel("m1", kT0 + 30s));
                    return tx.RetireModel("m1", kT0 + 40s);
                  })
                  .ok());
  EXPECT_EQ(store->FindTokenByHash(tok.token_hash).value()->revoked, kT0 + 10s);
  EXPECT_EQ(store->GetModel("m1").value().retired, kT0 + 30s);
  Status s = store->Transact([](Transaction& tx) { return tx.RevokeToken("tok_x", kT0); });
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(s.message(), "api token 'tok_x'")) << s.ToString();
  s = store->Transact([](Transaction& tx) { return tx.RetireModel("m_x", kT0); });
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(s.message(), "model 'm_x'")) << s.ToString();
}

TEST_F(SqliteStoreTest, Uint64ValuesAboveInt64MaxRoundTripAndSumWithoutOverflow) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  UsageReport a = MakeReport("dev_1", "a");
  a.counter_value = UINT64_MAX;
  a.counts = {{"m1", "c", UINT64_MAX - 1}};
  UsageReport b = MakeReport("dev_1", "b");
  b.counts = {{"m1", "c", 5}};
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutUsageReport(a));
                    return tx.PutUsageReport(b);
                  })
                  .ok());
  // The total saturates instead of wrapping around to a small number.
  EXPECT_EQ(store->UsageForDevice("dev_1").value(),
            (std::vector<UsageCount>{{"m1", "c", UINT64_MAX}}));
  EXPECT_EQ(store->EventsAfter("dev_1", UINT64_MAX, SIZE_MAX).value().size(), 0u);
  EXPECT_EQ(store->AuditAfter(UINT64_MAX, SIZE_MAX).value().size(), 0u);
}

TEST_F(SqliteStoreTest, GrantedToDeviceSumsOnlyThatDevicesApprovedRequestsOnTheLicence) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  auto ext = [](const std::string& id, const std::string& device, const std::string& licence,
                ExtensionStatus status, uint64_t granted) {
    return ExtensionRequest{id,     device,  licence,       granted,  "why",
                            status, granted, "admin:alice", kT0 + 1s, kT0};
  };
  const std::vector<ExtensionRequest> requests = {
      ext("ext_1", "dev_1", "lic_g", ExtensionStatus::kApproved, 10),
      ext("ext_2", "dev_1", "lic_g", ExtensionStatus::kApproved, 20),
      ext("ext_3", "dev_1", "lic_g", ExtensionStatus::kPending, 40),
      ext("ext_4", "dev_1", "lic_g", ExtensionStatus::kDenied, 80),
      ext("ext_5", "dev_2", "lic_g", ExtensionStatus::kApproved, 160),
      ext("ext_6", "dev_1", "lic_d", ExtensionStatus::kApproved, 320),
      ext("ext_7", "dev_1", "lic_d", ExtensionStatus::kApproved, UINT64_MAX),
  };
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(MakeDevice("dev_2", "g")));
                    CUSTODY_RETURN_IF_ERROR(tx.PutLicence(MakeLicence("lic_g", "m1", "", "g")));
                    CUSTODY_RETURN_IF_ERROR(tx.PutLicence(MakeLicence("lic_d", "m1", "dev_1", "")));
                    for (const ExtensionRequest& e : requests) {
                      CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
                    }
                    return OkStatus();
                  })
                  .ok());
  // Pending and denied requests, other devices' and other licences' grants do not count.
  EXPECT_EQ(store->GrantedToDevice("lic_g", "dev_1").value(), 30u);
  EXPECT_EQ(store->GrantedToDevice("lic_g", "dev_2").value(), 160u);
  EXPECT_EQ(store->GrantedToDevice("lic_d", "dev_2").value(), 0u);
  EXPECT_EQ(store->GrantedToDevice("lic_x", "dev_x").value(), 0u);
  // The sum saturates instead of wrapping around to a small number.
  EXPECT_EQ(store->GrantedToDevice("lic_d", "dev_1").value(), UINT64_MAX);
}

// ----- transactions -------------------------------------------------------------------------

TEST_F(SqliteStoreTest, FailingCallbackLeavesNothingNotEvenItsAuditEntry) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store
                  ->Transact([](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(PutBasics(tx));
                    return tx.Audit("system", "setup", "", {});
                  })
                  .ok());
  Status s = store->Transact([](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutModel(MakeModel("m2")));
    CUSTODY_RETURN_IF_ERROR(tx.Audit("admin:alice", "model.register", "m2", {}));
    return FailedPrecondition("changed my mind");
  });
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "changed my mind");
  EXPECT_EQ(store->GetModel("m2").error().code(), StatusCode::kNotFound);
  EXPECT_EQ(AllAudit(*store).size(), 1u);

  // A store error inside the callback rolls back the callback's earlier writes too.
  s = store->Transact([](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutModel(MakeModel("m3")));
    CUSTODY_RETURN_IF_ERROR(tx.Audit("admin:alice", "model.register", "m3", {}));
    return tx.PutModel(MakeModel("m1"));  // exists
  });
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(store->GetModel("m3").error().code(), StatusCode::kNotFound);

  // The chain goes on from the last committed entry, with no gap.
  ASSERT_TRUE(store
                  ->Transact([](Transaction& tx) {
                    return tx.Audit("admin:alice", "model.register", "m4", {{"k", "v"}});
                  })
                  .ok());
  std::vector<AuditEntry> audit = AllAudit(*store);
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_EQ(audit[1].seq, 2u);
  EXPECT_EQ(audit[1].subject, "m4");
  EXPECT_TRUE(protocol::VerifyAuditChain(audit).ok());
}

TEST_F(SqliteStoreTest, CallbackThatThrowsIsRolledBackAsInternal) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  Status s = store->Transact([](Transaction& tx) -> Status {
    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(MakeGroup("g")));
    throw std::runtime_error("boom");
  });
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_TRUE(Contains(s.message(), "boom"));
  EXPECT_EQ(store->GetGroup("g").error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(store->Transact(PutBasics).ok()) << "the writer carries on";
}

TEST_F(SqliteStoreTest, ConcurrentTransactsFromEightThreadsCommitWithAGaplessChain) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  const WriterStats before = store->writer_stats();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 150;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = std::to_string(t) + "-" + std::to_string(i);
        const bool fail = i % 10 == 3;  // some callbacks fail inside the same batches
        Status s = store->Transact([&](Transaction& tx) -> Status {
          CUSTODY_RETURN_IF_ERROR(tx.PutUsageReport(MakeReport("dev_1", id)));
          CUSTODY_RETURN_IF_ERROR(tx.Audit("device:dev_1", "usage.report", id, {{"i", i}}));
          if (fail) return Unavailable("injected " + id);
          return OkStatus();
        });
        if (fail ? s.message() != "injected " + id : !s.ok()) failures.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);

  const int committed = kThreads * (kPerThread - kPerThread / 10);
  std::vector<AuditEntry> audit = AllAudit(*store);
  ASSERT_EQ(audit.size(), static_cast<size_t>(committed));
  for (size_t i = 0; i < audit.size(); ++i) EXPECT_EQ(audit[i].seq, i + 1);
  EXPECT_TRUE(protocol::VerifyAuditChain(audit).ok());
  EXPECT_EQ(store->UsageForDevice("dev_1").value(),
            (std::vector<UsageCount>{{"m1", "kiosk", 3ull * committed}}));

  const WriterStats after = store->writer_stats();
  EXPECT_EQ(after.callbacks - before.callbacks, static_cast<uint64_t>(kThreads * kPerThread));
  // Group commit: callers waiting together share a commit.
  EXPECT_LT(after.batches - before.batches, after.callbacks - before.callbacks);
  EXPECT_GT(after.largest_batch, 1u);
  EXPECT_LE(after.largest_batch, kMaxBatchCallbacks);
}

// Runs one callback that holds the writer until seven more are queued behind it, then lets all
// eight finish; returns the writer's counters over those eight.
WriterStats EightCallbacksWithSevenWaiting(SqliteStore& store, const std::string& ids) {
  constexpr int kWaiting = 7;
  const WriterStats before = store.writer_stats();
  Flag first_running;
  std::thread first([&] {
    EXPECT_TRUE(store
                    .Transact([&](Transaction& tx) {
                      first_running.Set();
                      EXPECT_TRUE(
                          WaitUntil([&] { return store.writer_stats().queued >= kWaiting; }));
                      return tx.PutUsageReport(MakeReport("dev_1", ids + "first"));
                    })
                    .ok());
  });
  EXPECT_TRUE(first_running.WaitFor(10s));
  std::vector<std::thread> others;
  for (int i = 0; i < kWaiting; ++i) {
    others.emplace_back([&, i] {
      EXPECT_TRUE(store
                      .Transact([&](Transaction& tx) {
                        return tx.PutUsageReport(MakeReport("dev_1", ids + std::to_string(i)));
                      })
                      .ok());
    });
  }
  first.join();
  for (std::thread& t : others) t.join();
  WriterStats after = store.writer_stats();
  EXPECT_EQ(after.callbacks - before.callbacks, static_cast<uint64_t>(kWaiting + 1));
  EXPECT_EQ(after.queued, 0u);
  after.batches -= before.batches;
  return after;
}

TEST_F(SqliteStoreTest, GroupCommitRunsWaitingCallersInOneBatch) {
  // No time bound in this test: a loaded machine may preempt the writer for milliseconds.
  auto store = SqliteStore::Open(path_, {}, {.max_batch_time = 1min});
  ASSERT_TRUE(store.has_value()) << store.error().ToString();
  ASSERT_TRUE((*store)->Transact(PutBasics).ok());
  const WriterStats stats = EightCallbacksWithSevenWaiting(**store, "a");
  // All eight in one commit: the seven were queued before the first one's callback returned.
  EXPECT_EQ(stats.batches, 1u);
  EXPECT_EQ(stats.largest_batch, 8u);
}

TEST_F(SqliteStoreTest, BatchesAreBoundedInCallbacksAndTime) {
  auto by_count = SqliteStore::Open(path_, {}, {.max_batch_callbacks = 3, .max_batch_time = 1min});
  ASSERT_TRUE(by_count.has_value()) << by_count.error().ToString();
  ASSERT_TRUE((*by_count)->Transact(PutBasics).ok());
  WriterStats stats = EightCallbacksWithSevenWaiting(**by_count, "a");
  EXPECT_EQ(stats.batches, 3u);  // 3 + 3 + 2
  EXPECT_EQ(stats.largest_batch, 3u);
  by_count->reset();

  // A zero time bound closes every batch after its first callback.
  auto by_time = SqliteStore::Open(path_, {}, {.max_batch_time = 0ms});
  ASSERT_TRUE(by_time.has_value()) << by_time.error().ToString();
  stats = EightCallbacksWithSevenWaiting(**by_time, "b");
  EXPECT_EQ(stats.batches, 8u);
  EXPECT_EQ(stats.largest_batch, 1u);
}

TEST_F(SqliteStoreTest, DatabaseLockedByAnotherProcessIsUnavailableAndReadsGoOn) {
  auto store = SqliteStore::Open(path_, {}, {.busy_timeout = 50ms});
  ASSERT_TRUE(store.has_value()) << store.error().ToString();
  ASSERT_TRUE((*store)->Transact(PutBasics).ok());
  auto other = RawOpen();
  ASSERT_EQ(RawExec(other.get(), "BEGIN IMMEDIATE"), SQLITE_OK);
  Status s = (*store)->Transact([](Transaction& tx) { return tx.PutModel(MakeModel("m2")); });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_TRUE((*store)->GetModel("m1").has_value()) << "reads do not need the write lock";
  ASSERT_EQ(RawExec(other.get(), "COMMIT"), SQLITE_OK);
  EXPECT_TRUE(
      (*store)->Transact([](Transaction& tx) { return tx.PutModel(MakeModel("m2")); }).ok());
}

TEST_F(SqliteStoreTest, ReadsDoNotWaitForAnOpenWriteTransaction) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  Flag read_done;
  std::thread reader;
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutModel(MakeModel("m2")));
                    reader = std::thread([&] {
                      EXPECT_TRUE(store->GetModel("m1").has_value());
                      // Not committed yet: invisible to readers.
                      EXPECT_EQ(store->GetModel("m2").error().code(), StatusCode::kNotFound);
                      read_done.Set();
                    });
                    EXPECT_TRUE(read_done.WaitFor(10s)) << "a read waited for the writer";
                    return OkStatus();
                  })
                  .ok());
  reader.join();
  EXPECT_TRUE(store->GetModel("m2").has_value());
}

// Death tests fork (gtest's default style) while this process has no store open, so the child
// starts single-threaded and works in the fixture's directory, which TearDown removes.
TEST_F(SqliteStoreTest, NestedTransactAbortsLoudly) {
  EXPECT_DEATH(
      {
        auto store = SqliteStore::Open(path_, {});
        if (!store) std::abort();
        (*store)
            ->Transact([&](Transaction&) {
              return (*store)->Transact([](Transaction&) { return OkStatus(); });
            })
            .IgnoreError();
      },
      "inside a Transact callback");
}

TEST_F(SqliteStoreTest, TransactionUsedAfterItsCallbackAbortsLoudly) {
  EXPECT_DEATH(
      {
        auto store = SqliteStore::Open(path_, {});
        if (!store) std::abort();
        Transaction* kept = nullptr;
        (*store)
            ->Transact([&](Transaction& tx) {
              kept = &tx;
              return OkStatus();
            })
            .IgnoreError();
        kept->PutGroup(MakeGroup("late")).IgnoreError();
      },
      "outside its Transact callback");
}

// ----- unique keys and references -----------------------------------------------------------

TEST_F(SqliteStoreTest, DuplicateKeysAreAlreadyExistsNamingTheEntity) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(
      store
          ->Transact([](Transaction& tx) -> Status {
            CUSTODY_RETURN_IF_ERROR(PutBasics(tx));
            CUSTODY_RETURN_IF_ERROR(tx.PutDevice(MakeDevice("dev_2", "g")));
            CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(Bytes(16, 0xab), "dev_1", kT0));
            CUSTODY_RETURN_IF_ERROR(tx.PutUsageReport(MakeReport("dev_1", "r1")));
            CUSTODY_RETURN_IF_ERROR(
                tx.PutToken({"tok_1", "ci", Role::kViewer, Bytes(32, 1), kT0, std::nullopt}));
            CUSTODY_RETURN_IF_ERROR(tx.PutLicence(MakeLicence("lic_1", "m1", "dev_1", "")));
            return tx.PutLease({"lease_1", "dev_1", "lic_1", "m1", 1, 10, kT0, 0, 0, kT0, "{}"});
          })
          .ok());
  struct Case {
    const char* name;
    std::function<Status(Transaction&)> fn;
    const char* expected;  // in the message
  };
  const Case cases[] = {
      {"model", [](Transaction& tx) { return tx.PutModel(MakeModel("m1")); }, "model 'm1'"},
      {"nonce", [](Transaction& tx) { return tx.ConsumeNonce(Bytes(16, 0xab), "dev_2", kT0); },
       "nonce abababab"},
      {"usage report", [](Transaction& tx) { return tx.PutUsageReport(MakeReport("dev_1", "r1")); },
       "usage report 'r1' of device 'dev_1'"},
      {"token id",
       [](Transaction& tx) {
         return tx.PutToken({"tok_1", "x", Role::kAdmin, Bytes(32, 2), kT0, std::nullopt});
       },
       "api token 'tok_1'"},
      {"token hash",
       [](Transaction& tx) {
         return tx.PutToken({"tok_2", "x", Role::kAdmin, Bytes(32, 1), kT0, std::nullopt});
       },
       "api_tokens.token_hash"},
      {"lease id",
       [](Transaction& tx) {
         return tx.PutLease({"lease_1", "dev_1", "lic_1", "m1", 2, 10, kT0, 0, 0, kT0, "{}"});
       },
       "lease 'lease_1'"},
      {"lease sequence",
       [](Transaction& tx) {
         return tx.PutLease({"lease_2", "dev_1", "lic_1", "m1", 1, 10, kT0, 0, 0, kT0, "{}"});
       },
       "leases.device_id, leases.sequence"},
  };
  for (const Case& c : cases) {
    Status s = store->Transact(c.fn);
    EXPECT_EQ(s.code(), StatusCode::kAlreadyExists) << c.name << ": " << s.ToString();
    EXPECT_TRUE(Contains(s.message(), c.expected)) << c.name << ": " << s.ToString();
  }
  // A report id is per device: another device may use the same one.
  EXPECT_TRUE(
      store->Transact([](Transaction& tx) { return tx.PutUsageReport(MakeReport("dev_2", "r1")); })
          .ok());
}

TEST_F(SqliteStoreTest, ReferencesToMissingRowsAreNotFoundNamingTheRow) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Transact(PutBasics).ok());
  struct Case {
    std::function<Status(Transaction&)> fn;
    const char* expected;
  };
  const Case cases[] = {
      {[](Transaction& tx) { return tx.PutDevice(MakeDevice("dev_2", "nogroup")); },
       "device 'dev_2': group 'nogroup' does not exist"},
      {[](Transaction& tx) { return tx.PutLicence(MakeLicence("lic_1", "m9", "dev_1", "")); },
       "licence 'lic_1': model 'm9' does not exist"},
      {[](Transaction& tx) { return tx.PutLicence(MakeLicence("lic_1", "m1", "dev_9", "")); },
       "licence 'lic_1': device 'dev_9' does not exist"},
      {[](Transaction& tx) { return tx.PutUsageReport(MakeReport("dev_9", "r")); },
       "device 'dev_9' does not exist"},
      {[](Transaction& tx) {
         return tx.AddEvent({0, "dev_9", "lease", "{}", kT0}).error();
       },
       "device 'dev_9' does not exist"},
  };
  for (const Case& c : cases) {
    Status s = store->Transact(c.fn);
    EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
    EXPECT_TRUE(Contains(s.message(), c.expected)) << s.ToString();
  }
  Status s = store->Transact(
      [](Transaction& tx) { return tx.PutLicence(MakeLicence("lic_1", "m1", "dev_1", "g")); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  s = store->Transact(
      [](Transaction& tx) { return tx.PutLicence(MakeLicence("lic_1", "m1", "", "")); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

// ----- enrollment ---------------------------------------------------------------------------

TEST_F(SqliteStoreTest, EnrollmentTokenIsSingleUseAndExpires) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  const Bytes fresh(32, 0x01), expiring(32, 0x02);
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(MakeGroup("g")));
                    CUSTODY_RETURN_IF_ERROR(tx.PutEnrollmentToken(
                        {fresh, "g", kT0, kT0 + 3600s, std::nullopt, "", "admin:alice"}));
                    return tx.PutEnrollmentToken(
                        {expiring, "g", kT0, kT0 + 60s, std::nullopt, "", "admin:alice"});
                  })
                  .ok());
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) {
                    return tx.UseEnrollmentToken(fresh, "dev_1", kT0 + 10s);
                  })
                  .ok());
  Status again = store->Transact(
      [&](Transaction& tx) { return tx.UseEnrollmentToken(fresh, "dev_2", kT0 + 20s); });
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(again.message(), "already used")) << again.ToString();
  EXPECT_TRUE(Contains(again.message(), "dev_1")) << again.ToString();

  Status expired = store->Transact(
      [&](Transaction& tx) { return tx.UseEnrollmentToken(expiring, "dev_3", kT0 + 60s); });
  EXPECT_EQ(expired.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(expired.message(), "expired at 2023-11-14T22:14:20Z")) << expired.ToString();

  Status unknown = store->Transact(
      [&](Transaction& tx) { return tx.UseEnrollmentToken(Bytes(32, 9), "dev_4", kT0); });
  EXPECT_EQ(unknown.code(), StatusCode::kNotFound);

  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_ASSIGN_OR_RETURN(EnrollmentTokenRecord t, tx.GetEnrollmentToken(fresh));
                    EXPECT_EQ(t.used, kT0 + 10s);
                    EXPECT_EQ(t.used_by_device, "dev_1");
                    return OkStatus();
                  })
                  .ok());
}

TEST_F(SqliteStoreTest, PendingEnrollmentIsDeletedOnceAndPruneRemovesExpiredRecords) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  PendingEnrollment p;
  p.token_hash = Bytes(32, 1);
  p.group = "g";
  p.expires = kT0 + 300s;
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.PutGroup(MakeGroup("g")));
                    CUSTODY_RETURN_IF_ERROR(tx.PutEnrollmentToken(
                        {p.token_hash, "g", kT0, kT0 + 3600s, std::nullopt, "", "admin"}));
                    for (const char* id : {"p1", "p2", "p3"}) {
                      p.id = id;
                      CUSTODY_RETURN_IF_ERROR(tx.PutPendingEnrollment(p));
                      p.expires += 300s;
                    }
                    CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(Bytes{1}, "dev_1", kT0));
                    CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(Bytes{2}, "dev_1", kT0 + 100s));
                    return tx.ConsumeNonce(Bytes{3}, "", kT0 + 200s);
                  })
                  .ok());
  ASSERT_TRUE(
      store->Transact([](Transaction& tx) { return tx.DeletePendingEnrollment("p1"); }).ok());
  EXPECT_EQ(
      store->Transact([](Transaction& tx) { return tx.DeletePendingEnrollment("p1"); }).code(),
      StatusCode::kNotFound);

  // At kT0+600s: p2 (expires kT0+600s) is gone, p3 stays; nonces used before kT0+150s go.
  auto pruned = store->Prune(kT0 + 600s, 450s);
  ASSERT_TRUE(pruned.has_value()) << pruned.error().ToString();
  EXPECT_EQ(pruned->pending_enrollments, 1u);
  EXPECT_EQ(pruned->nonces, 2u);
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    EXPECT_EQ(tx.GetPendingEnrollment("p2").error().code(), StatusCode::kNotFound);
                    EXPECT_TRUE(tx.GetPendingEnrollment("p3").has_value());
                    EXPECT_TRUE(tx.ConsumeNonce(Bytes{1}, "dev_1", kT0 + 600s).ok());
                    EXPECT_EQ(tx.ConsumeNonce(Bytes{3}, "dev_1", kT0 + 600s).code(),
                              StatusCode::kAlreadyExists);
                    return OkStatus();
                  })
                  .ok());
}

// ----- events -------------------------------------------------------------------------------

TEST_F(SqliteStoreTest, EventsHaveStrictlyIncreasingSeqAcrossDevices) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> seqs;
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(PutBasics(tx));
                    CUSTODY_RETURN_IF_ERROR(tx.PutDevice(MakeDevice("dev_2", "g")));
                    for (int i = 0; i < 6; ++i) {
                      const std::string dev = i % 2 == 0 ? "dev_1" : "dev_2";
                      CUSTODY_ASSIGN_OR_RETURN(
                          uint64_t seq, tx.AddEvent({0, dev, "lease", std::to_string(i), kT0}));
                      seqs.push_back(seq);
                    }
                    return OkStatus();
                  })
                  .ok());
  ASSERT_EQ(seqs.size(), 6u);
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_GT(seqs[i], seqs[i - 1]);
  EXPECT_EQ(store->LastEventSeq().value(), seqs.back());

  auto dev1 = store->EventsAfter("dev_1", 0, 100).value();
  ASSERT_EQ(dev1.size(), 3u);
  EXPECT_EQ(dev1[0].seq, seqs[0]);
  EXPECT_EQ(dev1[1].seq, seqs[2]);
  EXPECT_EQ(dev1[2].payload_json, "4");
  auto after = store->EventsAfter("dev_1", seqs[0], 1).value();
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].seq, seqs[2]);
  EXPECT_TRUE(store->EventsAfter("dev_1", seqs[4], 100).value().empty());
  EXPECT_TRUE(store->EventsAfter("dev_1", 0, 0).value().empty());

  // Later events get higher seqs, also after a reopen.
  store.reset();
  store = OpenStore();
  ASSERT_NE(store, nullptr);
  uint64_t next = 0;
  ASSERT_TRUE(store
                  ->Transact([&](Transaction& tx) -> Status {
                    CUSTODY_ASSIGN_OR_RETURN(next, tx.AddEvent({0, "dev_2", "policy", "", kT0}));
                    return OkStatus();
                  })
                  .ok());
  EXPECT_GT(next, seqs.back());
}

// ----- audit --------------------------------------------------------------------------------

TEST_F(SqliteStoreTest, AuditEntriesHoldCompactDetailsAndAnRfc3339Time) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store
                  ->Transact([](Transaction& tx) -> Status {
                    CUSTODY_RETURN_IF_ERROR(tx.Audit("admin:alice", "licence.create", "lic_1",
                                                     {{"budget", 100}, {"model", "m1"}}));
                    return tx.Audit("system", "start", "", nullptr);
                  })
                  .ok());
  std::vector<AuditEntry> audit = AllAudit(*store);
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_EQ(audit[0].details, R"({"budget":100,"model":"m1"})");
  EXPECT_EQ(audit[1].details, "{}");
  EXPECT_TRUE(
      std::regex_match(audit[0].time, std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)")))
      << audit[0].time;
  EXPECT_EQ(audit[1].prev_hash, audit[0].hash);

  Status s = store->Transact(
      [](Transaction& tx) { return tx.Audit("system", "bad", "", nlohmann::json::array()); });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  s = store->Transact([](Transaction& tx) {
    return tx.Audit("system", "bad", "", {{"text", std::string("\xff\xfe")}});
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AllAudit(*store).size(), 2u);
  EXPECT_EQ(store->AuditAfter(1, 10).value().size(), 1u);
  EXPECT_EQ(store->AuditAfter(0, 1).value().size(), 1u);
}

TEST_F(SqliteStoreTest, AuditEntriesTheExportCouldNotCarryAreRefused) {
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  struct Case {
    const char* name;
    std::string actor, action, subject;
    nlohmann::json details;
  };
  const std::string ok = "admin:alice";
  const Case cases[] = {
      {"newline in actor", "admin:alice\n", ok, ok, {}},
      {"invalid UTF-8 in subject", ok, ok, std::string("lic_\xc3"), {}},
      {"DEL in details", ok, ok, ok, {{"note", "a\x7f"}}},
      {"action too long", ok, std::string(129, 'a'), ok, {}},
      {"actor too long", std::string(257, 'a'), ok, ok, {}},
      {"details too long", ok, ok, ok, {{"note", std::string(256 << 10, 'a')}}},
      {"details not an object", ok, ok, ok, nlohmann::json::array({1, 2})},
  };
  for (const Case& c : cases) {
    Status s = store->Transact(
        [&](Transaction& tx) { return tx.Audit(c.actor, c.action, c.subject, c.details); });
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.name << ": " << s.ToString();
  }
  // The longest accepted entry exports and parses back, even with details that escaping doubles
  // twice (a quote is \" in the details and \\\" in the export line).
  ASSERT_TRUE(store
                  ->Transact([](Transaction& tx) {
                    return tx.Audit(std::string(256, 'a'), std::string(128, 'b'),
                                    std::string(256, 'c'),
                                    {{"n", std::string((128 << 10) - 16, '"')}});
                  })
                  .ok());
  std::vector<AuditEntry> audit = AllAudit(*store);
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_GT(audit[0].details.size(), 255u << 10);
  EXPECT_TRUE(
      protocol::AuditEntryFromJsonLine(protocol::AuditEntryToJsonLine(audit[0])).has_value());
}

TEST_F(SqliteStoreTest, ReopeningKeepsEverythingAndTheChainContinues) {
  AuditEntry last_before;
  {
    auto store = OpenStore();
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(store
                      ->Transact([&](Transaction& tx) -> Status {
                        if (i == 0) CUSTODY_RETURN_IF_ERROR(PutBasics(tx));
                        CUSTODY_RETURN_IF_ERROR(
                            tx.PutUsageReport(MakeReport("dev_1", std::to_string(i))));
                        return tx.Audit("device:dev_1", "usage.report", std::to_string(i), {});
                      })
                      .ok());
    }
    last_before = AllAudit(*store).back();
  }
  auto store = OpenStore(Durability::kProcessCrash);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->GetModel("m1").has_value());
  EXPECT_EQ(store->UsageForDevice("dev_1").value(), (std::vector<UsageCount>{{"m1", "kiosk", 15}}));
  ASSERT_TRUE(store
                  ->Transact([](Transaction& tx) {
                    return tx.Audit("admin:alice", "device.revoke", "dev_1", {});
                  })
                  .ok());
  std::vector<AuditEntry> audit = AllAudit(*store);
  ASSERT_EQ(audit.size(), 6u);
  EXPECT_EQ(audit[5].seq, last_before.seq + 1);
  EXPECT_EQ(audit[5].prev_hash, last_before.hash);
  EXPECT_TRUE(protocol::VerifyAuditChain(audit).ok());
}

TEST_F(SqliteStoreTest, OpenVerifiesOnlyTheTailOfALongChain) {
  AppendAuditEntries(kAuditEntriesVerifiedAtOpen + 50);
  // An edit below the verified window is not looked at when opening (VerifyAuditChain on the
  // export finds it); one inside the window is.
  auto db = RawOpen();
  ASSERT_EQ(RawExec(db.get(),
                    "DROP TRIGGER audit_log_no_update; "
                    "UPDATE audit_log SET actor = 'mallory' WHERE seq = 10"),
            SQLITE_OK);
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(protocol::VerifyAuditChain(AllAudit(*store)).code(), StatusCode::kDataLoss);
  store.reset();
  ASSERT_EQ(RawExec(db.get(), "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1000"),
            SQLITE_OK);
  ExpectOpenRefused(StatusCode::kDataLoss, "audit entry 1000");
}

TEST_F(SqliteStoreTest, TamperedAuditRowRefusesTheOpenNamingTheEntry) {
  AppendAuditEntries(5);
  auto db = RawOpen();
  ASSERT_EQ(RawExec(db.get(),
                    "DROP TRIGGER audit_log_no_update; "
                    "UPDATE audit_log SET details = '{\"granted\":1000000}' WHERE seq = 3"),
            SQLITE_OK);
  ExpectOpenRefused(StatusCode::kDataLoss, "database " + path_ + ": audit log: audit entry 3");
}

TEST_F(SqliteStoreTest, RemovedAuditRowRefusesTheOpen) {
  AppendAuditEntries(5);
  auto db = RawOpen();
  ASSERT_EQ(
      RawExec(db.get(), "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = 2"),
      SQLITE_OK);
  ExpectOpenRefused(StatusCode::kDataLoss, "audit entry 3");
}

TEST_F(SqliteStoreTest, TriggersRefuseUpdateDeleteAndReplaceOfAuditRows) {
  AppendAuditEntries(1);
  auto db = RawOpen();
  std::string error;
  EXPECT_EQ(RawExec(db.get(), "UPDATE audit_log SET actor = 'x' WHERE seq = 1", &error),
            SQLITE_CONSTRAINT);
  EXPECT_TRUE(Contains(error, "append-only")) << error;
  EXPECT_EQ(RawExec(db.get(), "DELETE FROM audit_log", &error), SQLITE_CONSTRAINT);
  EXPECT_TRUE(Contains(error, "append-only")) << error;
  // The store's connections turn recursive triggers on, so a REPLACE (a delete, then an insert)
  // fires the delete trigger too.
  ASSERT_EQ(RawExec(db.get(), "PRAGMA recursive_triggers = ON"), SQLITE_OK);
  EXPECT_EQ(RawExec(db.get(),
                    "INSERT OR REPLACE INTO audit_log SELECT seq, time, 'x', action, subject, "
                    "details, prev_hash, hash FROM audit_log WHERE seq = 1",
                    &error),
            SQLITE_CONSTRAINT);
  EXPECT_TRUE(Contains(error, "append-only")) << error;
  db.reset();
  EXPECT_NE(OpenStore(), nullptr) << "the chain is intact";
}

// ----- schema and files ---------------------------------------------------------------------

TEST_F(SqliteStoreTest, FreshDatabaseGetsTheLatestSchemaVersionAndOwnerOnlyPermissions) {
  ASSERT_NE(OpenStore(), nullptr);
  auto db = RawOpen();
  sqlite3_stmt* raw = nullptr;
  ASSERT_EQ(
      sqlite3_prepare_v2(db.get(), "SELECT MAX(version) FROM schema_version", -1, &raw, nullptr),
      SQLITE_OK);
  sqlite::SqliteStmtPtr stmt(raw);
  ASSERT_EQ(sqlite3_step(stmt.get()), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt.get(), 0), static_cast<int>(sqlite::Migrations().size()));
  EXPECT_EQ(std::filesystem::status(path_).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

TEST_F(SqliteStoreTest, DatabaseFromANewerCustodianIsRefused) {
  ASSERT_NE(OpenStore(), nullptr);
  {
    auto db = RawOpen();
    ASSERT_EQ(RawExec(db.get(), "INSERT INTO schema_version (version, applied) VALUES (99, 0)"),
              SQLITE_OK);
  }
  auto store = SqliteStore::Open(path_, {});
  ASSERT_FALSE(store.has_value());
  EXPECT_EQ(store.error().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(store.error().message(), "database schema version 99 is newer than this custodian (" +
                                         std::to_string(sqlite::Migrations().size()) +
                                         "); upgrade the custodian");
}

TEST_F(SqliteStoreTest, MigrationsApplyInOrderAndAFailingOneChangesNothing) {
  const sqlite::Migration v1[] = {{1, "CREATE TABLE a (x INTEGER)"}};
  const sqlite::Migration v3[] = {{1, "CREATE TABLE a (x INTEGER)"},
                                  {2, "CREATE TABLE b (y TEXT); INSERT INTO a VALUES (1)"},
                                  {3, "CREATE TABLE c (z TEXT); THIS IS NOT SQL"}};
  auto c = sqlite::Connection::Open(path_, {sqlite::ConnectionRole::kWriter});
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  EXPECT_EQ(sqlite::Migrate(**c, v1).value(), 1);
  EXPECT_EQ(sqlite::Migrate(**c, v1).value(), 1) << "idempotent";
  auto failed = sqlite::Migrate(**c, v3);
  ASSERT_FALSE(failed.has_value());
  EXPECT_TRUE(Contains(failed.error().message(), "migration to schema version 3"))
      << failed.error().ToString();
  // Version 2 was applied in full; version 3 not at all.
  auto db = RawOpen();
  EXPECT_EQ(RawExec(db.get(), "SELECT y FROM b"), SQLITE_OK);
  EXPECT_NE(RawExec(db.get(), "SELECT z FROM c"), SQLITE_OK);
  EXPECT_EQ(sqlite::Migrate(**c, std::span(v3).first(2)).value(), 2);
}

TEST_F(SqliteStoreTest, SchemaV3MetersExistingDevicesInUnitsOfOneFromTheirLastCounter) {
  // A database of a custodian before metering units: schema version 2, two devices.
  ASSERT_NO_FATAL_FAILURE(OldDatabase(2, "",
                                      "('dev_1', 'g', x'01', x'02', x'03', x'04', 1, x'05', 'a', "
                                      "x'06', 0, NULL, '', 41, NULL, 3, 0, '{}'), "
                                      "('dev_2', 'g', x'01', x'02', x'03', x'04', 1, x'05', 'b', "
                                      "x'06', 0, NULL, '', NULL, NULL, 0, 0, '{}')"));
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  DeviceRecord d1 = store->GetDevice("dev_1").value();
  EXPECT_EQ(d1.counter_unit, 1u);
  EXPECT_EQ(d1.meter_position, 41u) << "its leases keep the limit they had";
  EXPECT_EQ(d1.attested_tpm_clock_ms, std::nullopt);
  DeviceRecord d2 = store->GetDevice("dev_2").value();
  EXPECT_EQ(d2.counter_unit, 1u);
  EXPECT_EQ(d2.meter_position, 0u);
  // And the migrated rows take the new fields.
  d1.counter_unit = 4;
  d1.meter_position = 160;
  d1.attested_tpm_clock_ms = 5000;
  ASSERT_TRUE(store->Transact([&](Transaction& tx) { return tx.PutDevice(d1); }).ok());
  EXPECT_EQ(store->GetDevice("dev_1").value(), d1);
}

TEST_F(SqliteStoreTest, SchemaV4DropsTheStoredClockSoThatClockAndResetsComeFromOneQuote) {
  // A device with a clock recorded at schema version 3.
  ASSERT_NO_FATAL_FAILURE(OldDatabase(3, ", counter_unit, meter_position, attested_tpm_clock_ms",
                                      "('dev_1', 'g', x'01', x'02', x'03', x'04', 1, x'05', 'a', "
                                      "x'06', 0, NULL, '', 41, NULL, 3, 0, '{}', 4, 164, 5000)"));
  auto store = OpenStore();
  ASSERT_NE(store, nullptr);
  DeviceRecord d = store->GetDevice("dev_1").value();
  EXPECT_EQ(d.attested_tpm_clock_ms, std::nullopt) << "until the device attests again";
  EXPECT_EQ(d.attested_tpm_reset_count, std::nullopt);
  EXPECT_EQ(d.meter_position, 164u) << "the rest stays";
  d.attested_tpm_clock_ms = 6000;
  d.attested_tpm_reset_count = UINT32_MAX;  // obfuscated: any 32-bit value
  ASSERT_TRUE(store->Transact([&](Transaction& tx) { return tx.PutDevice(d); }).ok());
  EXPECT_EQ(store->GetDevice("dev_1").value(), d);
  // A value no TPM gives is a corrupt row, not a silent truncation.
  {
    auto db = RawOpen();
    ASSERT_EQ(RawExec(db.get(), "UPDATE devices SET attested_tpm_reset_count = 4294967296"),
              SQLITE_OK);
  }
  Result<DeviceRecord> corrupt = store->GetDevice("dev_1");
  ASSERT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.error().message().find("TPM reset count"), std::string::npos)
      << corrupt.error().ToString();
}

TEST_F(SqliteStoreTest, FilesThatAreNotCustodianDatabasesAreRefused) {
  {
    std::ofstream f(path_);
    f << "this is not an SQLite database, it only has a name like one...........................";
  }
  auto garbage = SqliteStore::Open(path_, {});
  ASSERT_FALSE(garbage.has_value());
  EXPECT_EQ(garbage.error().code(), StatusCode::kDataLoss) << garbage.error().ToString();

  std::filesystem::remove(path_);
  {
    auto db = RawOpen();
    ASSERT_EQ(RawExec(db.get(), "CREATE TABLE photos (id INTEGER)"), SQLITE_OK);
  }
  auto other = SqliteStore::Open(path_, {});
  ASSERT_FALSE(other.has_value());
  EXPECT_EQ(other.error().code(), StatusCode::kFailedPrecondition) << other.error().ToString();

  auto missing_dir = SqliteStore::Open((dir_ / "no" / "such" / "dir.db").string(), {});
  ASSERT_FALSE(missing_dir.has_value());
  EXPECT_EQ(missing_dir.error().code(), StatusCode::kNotFound) << missing_dir.error().ToString();
}

TEST(SqliteStatusTest, ResultCodesMapOntoTheStoreContract) {
  using sqlite::StatusFromSqlite;
  EXPECT_EQ(StatusFromSqlite(SQLITE_BUSY, "").code(), StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromSqlite(SQLITE_BUSY_SNAPSHOT, "").code(), StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromSqlite(SQLITE_LOCKED, "").code(), StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CORRUPT, "").code(), StatusCode::kDataLoss);
  EXPECT_EQ(StatusFromSqlite(SQLITE_NOTADB, "").code(), StatusCode::kDataLoss);
  EXPECT_EQ(StatusFromSqlite(SQLITE_FULL, "").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CONSTRAINT_UNIQUE, "").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CONSTRAINT_PRIMARYKEY, "").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CONSTRAINT_FOREIGNKEY, "").code(), StatusCode::kNotFound);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CONSTRAINT_CHECK, "").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusFromSqlite(SQLITE_CONSTRAINT_TRIGGER, "").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(StatusFromSqlite(SQLITE_IOERR_FSYNC, "").code(), StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromSqlite(SQLITE_MISUSE, "").code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace custody::custodian
