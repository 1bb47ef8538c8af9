// The custodian end to end: a real custodian (in this process, on 127.0.0.1, with its SQLite
// store, keys and HTTPS server) and real devices (swtpm + the agent's protocol half) talking to it
// over the real API. First the whole story, then the attacks of docs/THREATS.md ("Custodian"),
// each expecting its specific HTTP status and a message that says what was wrong.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/protocol/audit.h"
#include "core/protocol/messages.h"
#include "custodian/app.h"
#include "custodian/ca.h"
#include "custodian/keys.h"
#include "http/client.h"
#include "tests/support/must.h"
#include "tests/support/test_device.h"

namespace custody::custodian {
namespace {

using testing::StatusFromResponse;
using testing::TestDevice;

std::string ReadText(const std::string& path) {
  Bytes b = ReadFile(path, 1 << 20).value();
  return std::string(AsChars(b));
}

class CustodianTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/custody-custodian-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const std::string data = dir_ + "/data";
    InitResult init = MUST(InitDataDir(data, "127.0.0.1:0", {}, {}));
    admin_token_ = init.admin_token;
    config_ = MUST(LoadConfig(init.config_path));
    config_.server.header_timeout = std::chrono::milliseconds(1500);
    config_.log_level = LogLevel::kWarn;
    ca_pem_ = ReadText(data + "/keys/ca.pem");
    app_ = MUST(App::Start(config_, [this] { return SystemNow() + skew_.load(); }));
    admin_ = MakeClient(admin_token_);
  }

  void TearDown() override {
    admin_.reset();
    app_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::unique_ptr<http::Client> MakeClient(std::optional<std::string> token) {
    http::ClientOptions o;
    o.host = "127.0.0.1";
    o.port = app_->port();
    o.ca_pem = ca_pem_;
    o.bearer_token = std::move(token);
    return MUST(http::Client::Create(o));
  }

  http::ClientResponse Admin(const std::string& method, const std::string& target,
                             const nlohmann::json& body = nullptr) {
    http::ClientRequest req;
    req.method = method;
    req.target = target;
    if (!body.is_null()) req.body = body.dump();
    return MUST(admin_->Send(req));
  }

  nlohmann::json AdminOk(const std::string& method, const std::string& target,
                         const nlohmann::json& body = nullptr) {
    http::ClientResponse r = Admin(method, target, body);
    EXPECT_EQ(r.status / 100, 2) << method << " " << target << ": " << r.body;
    return nlohmann::json::parse(r.body, nullptr, false);
  }

  std::unique_ptr<TestDevice> NewDevice() {
    return MUST(TestDevice::Create(app_->port(), ca_pem_));
  }

  // A device of the group provisioned by Provision(), enrolled with a fresh token.
  std::unique_ptr<TestDevice> EnrolledDevice() {
    std::unique_ptr<TestDevice> device = NewDevice();
    const Status s = device->Enroll(EnrollmentToken());
    if (!s.ok()) {
      ADD_FAILURE() << "enrollment: " << s.ToString();
      std::abort();
    }
    return device;
  }

  // A group whose golden state is what a fresh swtpm reads (all PCRs zero), a model, and a
  // licence for the group; returns the model id and licence id.
  struct Fixture {
    std::string model_id;
    std::string licence_id;
    Bytes dek;
  };
  Fixture Provision(uint64_t budget, const nlohmann::json& extension = nullptr) {
    AdminOk("POST", "/v1/admin/groups",
            {{"name", "kiosks"}, {"pcrs", {0, 2, 4, 7}}, {"require_ek_certificate", false}});
    nlohmann::json zero;
    for (int pcr : {0, 2, 4, 7}) zero[std::to_string(pcr)] = std::string(64, '0');
    AdminOk("POST", "/v1/admin/groups/kiosks/golden-sets", {{"name", "factory"}, {"pcrs", zero}});
    Fixture f;
    f.model_id = HexEncode(MUST(crypto::RandomBytes(16)));
    f.dek = MUST(crypto::RandomBytes(32));
    AdminOk("POST", "/v1/admin/models",
            {{"model_id", f.model_id},
             {"name", "resnet"},
             {"version", "1.0"},
             {"dek", HexEncode(f.dek)}});
    nlohmann::json licence{{"model_id", f.model_id},
                           {"group", "kiosks"},
                           {"budget", budget},
                           {"not_after", "2099-12-31"},
                           {"offline_grace_seconds", 3600}};
    if (!extension.is_null()) licence["extension"] = extension;
    f.licence_id = AdminOk("POST", "/v1/admin/licences", licence)["licence_id"].get<std::string>();
    return f;
  }

  // Every audit entry, from the admin export.
  std::vector<protocol::AuditEntry> AuditEntries() {
    http::ClientResponse audit = Admin("GET", "/v1/admin/audit?limit=10000");
    EXPECT_EQ(audit.status, 200) << audit.body;
    std::vector<protocol::AuditEntry> entries;
    std::istringstream lines(audit.body);
    for (std::string line; std::getline(lines, line);) {
      entries.push_back(MUST(protocol::AuditEntryFromJsonLine(line)));
    }
    return entries;
  }

  std::string EnrollmentToken() {
    return AdminOk("POST", "/v1/admin/enrollment-tokens", {{"group", "kiosks"}})["token"]
        .get<std::string>();
  }

  std::string dir_;
  Config config_;
  std::string admin_token_;
  std::string ca_pem_;
  std::unique_ptr<App> app_;
  std::unique_ptr<http::Client> admin_;
  std::atomic<std::chrono::seconds> skew_{std::chrono::seconds(0)};  // the custodian's clock
};

// ----- the whole story --------------------------------------------------------------------------

TEST_F(CustodianTest, EnrollAttestLeaseUnwrapReportExtendApproveRevoke) {
  Fixture f = Provision(/*budget=*/10);
  auto device = EnrolledDevice();
  ASSERT_EQ(device->identity().device_id.rfind("dev_", 0), 0u);

  // Attestation: one lease for the licensed model, whose key only this TPM can unwrap.
  std::vector<protocol::LeasePayload> leases = MUST(device->Attest());
  ASSERT_EQ(leases.size(), 1u);
  const protocol::LeasePayload& lease = leases[0];
  EXPECT_EQ(lease.model_id, f.model_id);
  EXPECT_EQ(lease.offline_grace_ms, 3600000u);
  SecretBuffer dek = MUST(device->Unwrap(lease));
  EXPECT_TRUE(ConstantTimeEquals(dek.span(), f.dek));
  const uint64_t start = MUST(
      device->tpm().ReadCounter(device->identity().counter_index, device->identity().counter_auth));
  EXPECT_EQ(lease.counter_limit, start + 10);

  // Usage: 8 of 10 used, certified by the TPM counter; a retried report is not counted twice.
  nlohmann::json usage = MUST(device->UseAndReport(f.model_id, 8, "r1"));
  EXPECT_EQ(usage["counter"].get<uint64_t>(), start + 8);
  nlohmann::json details = AdminOk("GET", "/v1/admin/devices/" + device->identity().device_id);
  EXPECT_EQ(details["licences"][0]["remaining"].get<uint64_t>(), 2u);

  // Budget running low: a (manual) extension request waits for an operator...
  nlohmann::json ext = MUST(device->RequestExtension(f.licence_id, 20));
  EXPECT_EQ(ext["status"], "pending");
  // Asking again while it waits (a lost answer, a restart) returns that request, not a second.
  nlohmann::json again = MUST(device->RequestExtension(f.licence_id, 20));
  EXPECT_EQ(again["request_id"], ext["request_id"]);
  nlohmann::json pending = AdminOk("GET", "/v1/admin/extensions?status=pending");
  ASSERT_EQ(pending.size(), 1u);
  // ...who approves it; the raised lease is on the device's event stream at once.
  protocol::EventsResponse before = MUST(device->Poll(0, 0));
  AdminOk("POST", "/v1/admin/extensions/" + ext["request_id"].get<std::string>() + "/approve");
  protocol::EventsResponse events = MUST(device->Poll(before.last_seq, 5000));
  ASSERT_EQ(events.events.size(), 1u);
  EXPECT_EQ(events.events[0].type, "lease");
  protocol::LeasePayload raised =
      MUST(agent::OpenLease(device->identity(), events.events[0].document));
  EXPECT_GT(raised.sequence, lease.sequence);
  EXPECT_EQ(raised.counter_limit, start + 8 + 2 + 20);

  // The stop switch: a device waiting on its long-poll learns of its revocation within a second.
  uint64_t after = events.last_seq;
  Result<protocol::EventsResponse> waited = Result<protocol::EventsResponse>(Internal("not run"));
  std::thread waiter([&] { waited = device->Poll(after, 20000); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let the poll start waiting
  const auto t0 = std::chrono::steady_clock::now();
  AdminOk(
      "POST", "/v1/admin/revocations",
      {{"scope", "device"}, {"id", device->identity().device_id}, {"reason", "contract ended"}});
  waiter.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(waited.has_value()) << waited.error().ToString();
  ASSERT_EQ(waited->events.size(), 1u);
  EXPECT_EQ(waited->events[0].type, "revocation");
  EXPECT_LT(seconds, 1.0) << "the revocation took " << seconds << " s to reach the device";
  protocol::RevocationPayload rev =
      MUST(agent::OpenRevocation(device->identity(), waited->events[0].document));
  EXPECT_EQ(rev.reason, "contract ended");
  EXPECT_GT(rev.revocation_epoch, raised.revocation_epoch);
  // And a revoked device gets no lease.
  Result<std::vector<protocol::LeasePayload>> after_revoke = device->Attest();
  ASSERT_FALSE(after_revoke.has_value());
  EXPECT_EQ(after_revoke.error().code(), StatusCode::kPermissionDenied)
      << after_revoke.error().ToString();

  // Everything above is in the audit trail, and the chain verifies.
  http::ClientResponse audit = Admin("GET", "/v1/admin/audit?limit=10000");
  ASSERT_EQ(audit.status, 200);
  std::vector<protocol::AuditEntry> entries;
  std::istringstream lines(audit.body);
  for (std::string line; std::getline(lines, line);) {
    entries.push_back(MUST(protocol::AuditEntryFromJsonLine(line)));
  }
  ASSERT_OK(protocol::VerifyAuditChain(entries));
  std::set<std::string> actions;
  for (const auto& e : entries) actions.insert(e.action);
  for (const char* a :
       {"model.register", "licence.create", "device.enroll", "device.attest", "usage.report",
        "extension.request", "extension.approve", "lease.issue", "device.revoke"}) {
    EXPECT_TRUE(actions.contains(a)) << "no audit entry for " << a;
  }
}

TEST_F(CustodianTest, AutomaticExtensionWithinTheLicencesAllowance) {
  Fixture f = Provision(5, {{"auto_approve_up_to", 100}, {"period_seconds", 86400}});
  auto device = EnrolledDevice();
  MUST(device->Attest());
  nlohmann::json first = MUST(device->RequestExtension(f.licence_id, 60));
  EXPECT_EQ(first["status"], "approved");
  EXPECT_EQ(first["decided_by"], "policy");
  nlohmann::json second = MUST(device->RequestExtension(f.licence_id, 60));  // over 100 a day
  EXPECT_EQ(second["status"], "pending");
}

TEST_F(CustodianTest, ConcurrentRequestsNeverExceedTheAutomaticAllowance) {
  Fixture f = Provision(5, {{"auto_approve_up_to", 100}, {"period_seconds", 86400}});
  std::vector<std::unique_ptr<TestDevice>> devices;
  for (int i = 0; i < 4; ++i) {
    devices.push_back(EnrolledDevice());
    MUST(devices.back()->Attest());
  }
  // Four devices of the group ask for 40 each at the same moment: two fit in 100, two wait.
  std::vector<std::string> status(devices.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < devices.size(); ++i) {
    threads.emplace_back([&, i] {
      Result<nlohmann::json> r = devices[i]->RequestExtension(f.licence_id, 40);
      status[i] = r ? (*r)["status"].get<std::string>() : r.error().ToString();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(std::count(status.begin(), status.end(), "approved"), 2);
  EXPECT_EQ(std::count(status.begin(), status.end(), "pending"), 2);
}

TEST_F(CustodianTest, PolicyUpdateAndNewLicenceReachWaitingDevices) {
  Fixture f = Provision(10);
  auto device = EnrolledDevice();
  ASSERT_EQ(MUST(device->Attest()).size(), 1u);
  const uint64_t after = MUST(device->Poll(0, 0)).last_seq;

  // An OS update: the vendor approves the new PCR state; a waiting device gets a lease carrying
  // both approvals at once, before it reboots into the new state.
  Result<protocol::EventsResponse> waited = Result<protocol::EventsResponse>(Internal("not run"));
  std::thread waiter([&] { waited = device->Poll(after, 20000); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  nlohmann::json updated;
  for (int pcr : {0, 2, 4, 7}) updated[std::to_string(pcr)] = std::string(64, pcr == 4 ? 'a' : '0');
  AdminOk("POST", "/v1/admin/groups/kiosks/golden-sets", {{"name", "os-2"}, {"pcrs", updated}});
  waiter.join();
  ASSERT_TRUE(waited.has_value()) << waited.error().ToString();
  ASSERT_EQ(waited->events.size(), 1u);
  ASSERT_EQ(waited->events[0].type, "lease");
  protocol::LeasePayload lease =
      MUST(agent::OpenLease(device->identity(), waited->events[0].document));
  EXPECT_EQ(lease.model_id, f.model_id);
  EXPECT_EQ(lease.approvals.size(), 2u);
  // The new lease's key still unwraps in the current (factory) state.
  EXPECT_TRUE(ConstantTimeEquals(MUST(device->Unwrap(lease)).span(), f.dek));

  // A new licence for another model: its lease arrives on the stream too.
  const std::string model2 = HexEncode(MUST(crypto::RandomBytes(16)));
  AdminOk("POST", "/v1/admin/models",
          {{"model_id", model2},
           {"name", "detector"},
           {"version", "2.0"},
           {"dek", HexEncode(MUST(crypto::RandomBytes(32)))}});
  AdminOk("POST", "/v1/admin/licences",
          {{"model_id", model2},
           {"device_id", device->identity().device_id},
           {"budget", 5},
           {"not_after", "2099-12-31"},
           {"offline_grace_seconds", 60}});
  protocol::EventsResponse more = MUST(device->Poll(waited->last_seq, 5000));
  ASSERT_EQ(more.events.size(), 1u);
  protocol::LeasePayload second =
      MUST(agent::OpenLease(device->identity(), more.events[0].document));
  EXPECT_EQ(second.model_id, model2);
  EXPECT_GT(second.sequence, lease.sequence);
}

// ----- metering: counter units, prepaid requests, the TPM clock ------------------------------

TEST_F(CustodianTest, DeviceWithCounterUnit16IsMeteredInRequests) {
  Fixture f = Provision(/*budget=*/100);
  auto device = NewDevice();
  ASSERT_OK(device->Enroll(EnrollmentToken(), /*counter_unit=*/16));
  EXPECT_EQ(device->identity().counter_unit, 16u);
  const std::string path = "/v1/admin/devices/" + device->identity().device_id;
  const uint64_t c0 = MUST(
      device->tpm().ReadCounter(device->identity().counter_index, device->identity().counter_auth));
  nlohmann::json record = AdminOk("GET", path);
  EXPECT_EQ(record["counter_unit"].get<uint64_t>(), 16u);
  EXPECT_EQ(record["meter_position"].get<uint64_t>(), c0 * 16) << "what the counter paid is used";

  // The lease counts requests: the certified counter's worth plus the budget.
  std::vector<protocol::LeasePayload> leases = MUST(device->Attest());
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].counter_unit, 16u);
  EXPECT_EQ(leases[0].counter_limit, c0 * 16 + 100);

  // Two blocks paid, 20 requests served: 12 prepaid. The position is exactly what was served.
  ASSERT_OK(device->AdvanceCounter(2));
  MUST(device->Report(f.model_id, 20, "r1", /*prepaid=*/12));
  EXPECT_EQ(AdminOk("GET", path)["meter_position"].get<uint64_t>(), c0 * 16 + 20);
  EXPECT_EQ(MUST(device->Attest()).at(0).counter_limit, c0 * 16 + 20 + (100 - 20));

  // A report made at 25 requests and sent after three more blocks: its prepaid (55) is relative
  // to the position its counts add up to, all of it is credited, and the limit stays exact.
  ASSERT_OK(device->AdvanceCounter(3));
  const uint64_t position = c0 * 16 + 25;
  MUST(device->Report(f.model_id, 5, "r2", /*prepaid=*/(c0 + 5) * 16 - position));
  EXPECT_EQ(AdminOk("GET", path)["meter_position"].get<uint64_t>(), position);
  EXPECT_EQ(MUST(device->Attest()).at(0).counter_limit, c0 * 16 + 100) << "the budget, exactly";
  bool audited = false;
  for (const protocol::AuditEntry& e : AuditEntries()) {
    if (e.action != "usage.report" || e.subject != "r2") continue;
    nlohmann::json details = nlohmann::json::parse(e.details);
    EXPECT_EQ(details["prepaid"].get<uint64_t>(), 55u);
    EXPECT_EQ(details["credited"].get<uint64_t>(), 55u);
    EXPECT_EQ(details["position"].get<uint64_t>(), position);
    audited = true;
  }
  EXPECT_TRUE(audited) << "no usage.report entry for r2";

  // The position never moves back: the same counter with a larger prepaid claim changes nothing.
  MUST(device->Report(f.model_id, 0, "r3", /*prepaid=*/0));
  MUST(device->Report(f.model_id, 0, "r4", /*prepaid=*/10));
  EXPECT_EQ(AdminOk("GET", path)["meter_position"].get<uint64_t>(), (c0 + 5) * 16);

  // A device that counts in another unit than its lease refuses the lease.
  Bytes nonce = MUST(device->Nonce());
  protocol::AttestRequest req =
      MUST(agent::MakeAttestation(device->tpm(), device->identity(), nonce));
  http::ClientResponse answer = MUST(device->Post("/v1/attest", protocol::ToJson(req)));
  ASSERT_EQ(answer.status, 200) << answer.body;
  protocol::AttestResponse attested = MUST(protocol::ParseAttestResponse(answer.body));
  ASSERT_EQ(attested.leases.size(), 1u);
  EXPECT_TRUE(agent::OpenLease(device->identity(), attested.leases[0]).ok());
  agent::DeviceIdentity other_unit = device->identity();
  other_unit.counter_unit = 1;
  Result<protocol::LeasePayload> refused = agent::OpenLease(other_unit, attested.leases[0]);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), StatusCode::kFailedPrecondition) << refused.error().ToString();
}

TEST_F(CustodianTest, EnrollmentRefusesACounterUnitOutside1To65536) {
  Provision(10);
  auto device = NewDevice();
  Result<agent::EnrollmentInProgress> local = agent::BeginEnrollment(
      device->tpm(), EnrollmentToken(), tpm::EkType::kEcc, tpm::kDefaultCounterIndex, 0);
  ASSERT_FALSE(local.ok());
  EXPECT_EQ(local.error().code(), StatusCode::kInvalidArgument) << local.error().ToString();

  agent::EnrollmentInProgress e = MUST(agent::BeginEnrollment(
      device->tpm(), EnrollmentToken(), tpm::EkType::kEcc, tpm::kDefaultCounterIndex, 65536));
  http::ClientResponse begun = MUST(device->Post("/v1/enroll/begin", protocol::ToJson(e.request)));
  ASSERT_EQ(begun.status, 200) << begun.body;
  protocol::EnrollBeginResponse challenge = MUST(protocol::ParseEnrollBeginResponse(begun.body));
  crypto::P256PrivateKey key = MUST(crypto::P256PrivateKey::Generate());
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key.get(), &der);
  Bytes spki(der, der + len);
  OPENSSL_free(der);
  protocol::EnrollCompleteRequest complete =
      MUST(agent::ContinueEnrollment(device->tpm(), e, challenge, spki));
  EXPECT_EQ(complete.counter_unit, 65536u);
  for (uint64_t unit : {uint64_t{0}, uint64_t{65537}}) {
    complete.counter_unit = unit;
    http::ClientResponse r = MUST(device->Post("/v1/enroll/complete", protocol::ToJson(complete)));
    EXPECT_EQ(r.status, 400) << "unit " << unit << ": " << r.body;
    EXPECT_NE(r.body.find("counter_unit"), std::string::npos) << r.body;
  }
  complete.counter_unit = 65536;
  http::ClientResponse enrolled =
      MUST(device->Post("/v1/enroll/complete", protocol::ToJson(complete)));
  ASSERT_EQ(enrolled.status, 200) << enrolled.body;
  const std::string id = MUST(protocol::ParseEnrollCompleteResponse(enrolled.body)).device_id;
  EXPECT_EQ(AdminOk("GET", "/v1/admin/devices/" + id)["counter_unit"].get<uint64_t>(), 65536u);
}

TEST_F(CustodianTest, LeaseCarriesTheTpmClockOfItsQuoteAndPushedLeasesTheStoredOne) {
  Fixture f = Provision(10);
  auto device = EnrolledDevice();
  const uint64_t before = MUST(device->tpm().ReadClock()).clock_ms;
  protocol::LeasePayload lease = MUST(device->Attest()).at(0);
  const tpm::TimeInfo after_time = MUST(device->tpm().ReadClock());
  const uint64_t after = after_time.clock_ms;
  EXPECT_GE(lease.tpm_clock_ms, before);
  EXPECT_LE(lease.tpm_clock_ms, after);
  // And its reset count as the AK quotes it: the TPM adds a constant of the AK (the AK is in the
  // storage hierarchy), which the device finds with a quote of its own.
  const uint32_t offset =
      MUST(agent::QuotedResetOffset(device->tpm(), device->identity(), after_time.reset_count));
  EXPECT_NE(offset, 0u) << "swtpm obfuscates like any TPM";
  EXPECT_EQ(
      MUST(agent::QuotedResetOffset(device->tpm(), device->identity(), after_time.reset_count)),
      offset);
  EXPECT_EQ(static_cast<uint32_t>(lease.tpm_reset_count - offset), after_time.reset_count);

  // A lease pushed later (an approved extension) carries the stored clock of that quote: an older
  // reference, so less offline time, never more.
  nlohmann::json ext = MUST(device->RequestExtension(f.licence_id, 5));
  const uint64_t seen = MUST(device->Poll(0, 0)).last_seq;
  AdminOk("POST", "/v1/admin/extensions/" + ext["request_id"].get<std::string>() + "/approve");
  protocol::EventsResponse events = MUST(device->Poll(seen, 5000));
  ASSERT_EQ(events.events.size(), 1u);
  protocol::LeasePayload pushed =
      MUST(agent::OpenLease(device->identity(), events.events[0].document));
  EXPECT_GT(pushed.sequence, lease.sequence);
  EXPECT_EQ(pushed.tpm_clock_ms, lease.tpm_clock_ms);
  EXPECT_EQ(pushed.tpm_reset_count, lease.tpm_reset_count);

  // The next attestation moves the reference to its own quote.
  const uint64_t later = MUST(device->tpm().ReadClock()).clock_ms;
  protocol::LeasePayload fresh = MUST(device->Attest()).at(0);
  EXPECT_GE(fresh.tpm_clock_ms, later);
  EXPECT_LE(fresh.tpm_clock_ms, MUST(device->tpm().ReadClock()).clock_ms);
  EXPECT_GE(later, after);
}

TEST_F(CustodianTest, MeterAnomalyReportedByTheDeviceIsAudited) {
  Fixture f = Provision(10);
  auto device = EnrolledDevice();
  const std::string anomaly = "journal behind the counter at start by 2 blocks";
  nlohmann::json answer = MUST(device->Report(f.model_id, 0, "r-anomaly", 0, anomaly));
  EXPECT_EQ(answer["duplicate"], false);
  // A retry of the report is not recorded twice.
  answer = MUST(device->Report(f.model_id, 0, "r-anomaly", 0, anomaly));
  EXPECT_EQ(answer["duplicate"], true);
  int found = 0;
  for (const protocol::AuditEntry& e : AuditEntries()) {
    if (e.action != "device.meter_anomaly") continue;
    ++found;
    EXPECT_EQ(e.actor, "device:" + device->identity().device_id);
    EXPECT_EQ(e.subject, device->identity().device_id);
    EXPECT_EQ(nlohmann::json::parse(e.details),
              (nlohmann::json{{"report_id", "r-anomaly"}, {"anomaly", anomaly}}));
  }
  EXPECT_EQ(found, 1);
}

// ----- attacks on attestation ----------------------------------------------------------------

TEST_F(CustodianTest, ReplayedNonceIsRefused) {
  Provision(10);
  auto device = EnrolledDevice();
  Bytes nonce = MUST(device->Nonce());
  protocol::AttestRequest req =
      MUST(agent::MakeAttestation(device->tpm(), device->identity(), nonce));
  http::ClientResponse first = MUST(device->Post("/v1/attest", protocol::ToJson(req)));
  EXPECT_EQ(first.status, 200) << first.body;
  http::ClientResponse replay = MUST(device->Post("/v1/attest", protocol::ToJson(req)));
  EXPECT_EQ(replay.status, 401);
  EXPECT_NE(replay.body.find("nonce was already used"), std::string::npos) << replay.body;
}

TEST_F(CustodianTest, ForgedNonceIsRefused) {
  Provision(10);
  auto device = EnrolledDevice();
  Bytes nonce = MUST(crypto::RandomBytes(40));  // never issued
  protocol::AttestRequest req =
      MUST(agent::MakeAttestation(device->tpm(), device->identity(), nonce));
  Status s = StatusFromResponse(MUST(device->Post("/v1/attest", protocol::ToJson(req))));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("not issued by this custodian"), std::string::npos) << s.ToString();
}

TEST_F(CustodianTest, ExpiredNonceIsRefused) {
  Provision(10);
  auto device = EnrolledDevice();
  Bytes nonce = MUST(device->Nonce());
  protocol::AttestRequest req =
      MUST(agent::MakeAttestation(device->tpm(), device->identity(), nonce));
  skew_ = std::chrono::seconds(3600);  // the answer arrives an hour later
  Status s = StatusFromResponse(MUST(device->Post("/v1/attest", protocol::ToJson(req))));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("nonce expired"), std::string::npos) << s.ToString();
}

TEST_F(CustodianTest, QuoteFromAnotherDeviceIsRefused) {
  Provision(10);
  auto a = EnrolledDevice();
  auto b = EnrolledDevice();
  Bytes nonce = MUST(a->Nonce());
  // B's TPM quotes over A's nonce; A sends it as its own.
  protocol::AttestRequest req = MUST(agent::MakeAttestation(b->tpm(), b->identity(), nonce));
  Status s = StatusFromResponse(MUST(a->Post("/v1/attest", protocol::ToJson(req))));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("AK"), std::string::npos) << s.ToString();
}

TEST_F(CustodianTest, PlatformStateOutsideThePolicyGetsNoLease) {
  Provision(10);
  auto device = EnrolledDevice();
  ASSERT_OK(device->tpm().ExtendPcr(4, AsBytes("an unapproved boot loader")));
  Result<std::vector<protocol::LeasePayload>> r = device->Attest();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kPermissionDenied) << r.error().ToString();
  EXPECT_NE(r.error().message().find("PCR 4"), std::string::npos) << r.error().ToString();
}

TEST_F(CustodianTest, DeviceReportingWithAnotherDevicesCounterIsRefused) {
  Fixture f = Provision(10);
  auto a = EnrolledDevice();
  auto b = EnrolledDevice();
  Bytes nonce = MUST(a->Nonce());
  protocol::UsageRequest req = MUST(agent::MakeUsageReport(
      b->tpm(), b->identity(), nonce, "x", {{f.model_id, "kiosk", 1}}, 0, std::nullopt));
  Status s = StatusFromResponse(MUST(a->Post("/v1/usage", protocol::ToJson(req))));
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
}

TEST_F(CustodianTest, CounterRollbackIsFlaggedAsTampering) {
  Fixture f = Provision(10);
  auto device = EnrolledDevice();
  // The custodian has seen a higher certified value than the TPM now shows: what a restored disk
  // image of a device whose counter was replaced would look like.
  ASSERT_OK(app_->store().Transact([&](Transaction& tx) -> Status {
    CUSTODY_ASSIGN_OR_RETURN(DeviceRecord d, tx.GetDevice(device->identity().device_id));
    d.last_counter = *d.last_counter + 1000;
    return tx.PutDevice(d);
  }));
  Result<nlohmann::json> r = device->UseAndReport(f.model_id, 1, "after-restore");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kFailedPrecondition) << r.error().ToString();
  EXPECT_NE(r.error().message().find("went backwards"), std::string::npos);
  http::ClientResponse audit = Admin("GET", "/v1/admin/audit?limit=10000");
  EXPECT_NE(audit.body.find("usage.rollback"), std::string::npos);
}

// ----- attacks on enrollment -------------------------------------------------------------------

TEST_F(CustodianTest, EnrollmentTokenWorksOnce) {
  Provision(10);
  const std::string token = EnrollmentToken();
  auto a = NewDevice();
  auto b = NewDevice();
  ASSERT_OK(a->Enroll(token));
  Status again = b->Enroll(token);
  EXPECT_EQ(again.code(), StatusCode::kUnauthenticated) << again.ToString();
  EXPECT_NE(again.message().find("already used"), std::string::npos) << again.ToString();
  Status unknown = b->Enroll("enr_00000000000000000000000000000000000000000000000");
  EXPECT_EQ(unknown.code(), StatusCode::kUnauthenticated) << unknown.ToString();
}

TEST_F(CustodianTest, ExpiredEnrollmentTokenIsRefused) {
  Provision(10);
  const std::string token = AdminOk("POST", "/v1/admin/enrollment-tokens",
                                    {{"group", "kiosks"}, {"ttl_seconds", 600}})["token"]
                                .get<std::string>();
  skew_ = std::chrono::seconds(601);
  auto device = NewDevice();
  Status s = device->Enroll(token);
  EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  EXPECT_NE(s.message().find("enrollment token expired"), std::string::npos) << s.ToString();
}

TEST_F(CustodianTest, DeviceCertificateFromAnotherCaIsRefused) {
  Provision(10);
  auto device = EnrolledDevice();
  // A certificate with the same device id from another custodian's CA.
  const std::string other = dir_ + "/other";
  InitResult o = MUST(InitDataDir(other, "127.0.0.1:0", {}, {}));
  (void)o;
  CustodianKeys other_keys = MUST(LoadKeys(other));
  crypto::P256PrivateKey key = MUST(crypto::P256PrivateKey::Generate());
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(key.get(), &der);
  Bytes spki(der, der + len);
  OPENSSL_free(der);
  IssuedCertificate forged =
      MUST(other_keys.ca.IssueDevice(spki, device->identity().device_id, 30));
  http::ClientOptions opts;
  opts.host = "127.0.0.1";
  opts.port = app_->port();
  opts.ca_pem = ca_pem_;
  opts.client_certificate_pem = forged.pem;
  opts.client_key_pem = std::string(AsChars(MUST(key.ToPem()).span()));
  auto client = MUST(http::Client::Create(opts));
  Result<http::ClientResponse> r = client->PostJson("/v1/nonce", nlohmann::json::object());
  if (r.has_value()) {
    EXPECT_EQ(r->status, 401) << r->body;  // the handshake passed without a usable certificate
  } else {
    EXPECT_EQ(r.error().code(), StatusCode::kUnavailable) << r.error().ToString();
  }
}

// ----- attacks on the admin API ------------------------------------------------------------------

TEST_F(CustodianTest, TokensAndRolesAreEnforced) {
  nlohmann::json viewer =
      AdminOk("POST", "/v1/admin/tokens", {{"name", "dashboard"}, {"role", "viewer"}});
  auto as_viewer = MakeClient(viewer["token"].get<std::string>());
  EXPECT_EQ(MUST(as_viewer->Get("/v1/admin/models")).status, 200);
  http::ClientResponse denied =
      MUST(as_viewer->PostJson("/v1/admin/groups", {{"name", "x"}, {"pcrs", {0}}}));
  EXPECT_EQ(denied.status, 403);
  EXPECT_NE(denied.body.find("admin"), std::string::npos) << denied.body;
  auto anonymous = MakeClient(std::nullopt);
  EXPECT_EQ(MUST(anonymous->Get("/v1/admin/models")).status, 401);
  auto forged = MakeClient("cust_" + std::string(64, 'a'));
  EXPECT_EQ(MUST(forged->Get("/v1/admin/models")).status, 401);
  // A revoked token stops working at once.
  AdminOk("POST", "/v1/admin/tokens/" + viewer["id"].get<std::string>() + "/revoke");
  EXPECT_EQ(MUST(as_viewer->Get("/v1/admin/models")).status, 401);
}

TEST_F(CustodianTest, OversizedBodiesAreRefused) {
  http::ClientRequest req;
  req.method = "POST";
  req.target = "/v1/admin/groups";
  req.body = "{\"name\":\"" + std::string(2 << 20, 'a') + "\"}";
  Result<http::ClientResponse> r = admin_->Send(req);
  if (r.has_value()) {
    EXPECT_EQ(r->status, 413) << r->body.substr(0, 200);
  }  // else the server closed the connection while the body was still being sent: also a refusal
}

TEST_F(CustodianTest, MalformedJsonIsRefusedFieldByField) {
  Fixture f = Provision(10);
  const nlohmann::json good{{"model_id", f.model_id},
                            {"group", "kiosks"},
                            {"budget", 5},
                            {"not_after", "2099-12-31"},
                            {"offline_grace_seconds", 60}};
  EXPECT_EQ(Admin("POST", "/v1/admin/licences", good).status, 201);
  for (const auto& [field, bad] :
       std::vector<std::pair<std::string, nlohmann::json>>{{"model_id", 42},
                                                           {"group", nlohmann::json::array()},
                                                           {"budget", -1},
                                                           {"budget", "five"},
                                                           {"not_after", "next year"},
                                                           {"not_after", "2027-02-30"},
                                                           {"offline_grace_seconds", 1.5},
                                                           {"unexpected", true}}) {
    nlohmann::json body = good;
    body[field] = bad;
    http::ClientResponse r = Admin("POST", "/v1/admin/licences", body);
    EXPECT_EQ(r.status, 400) << field << "=" << bad.dump() << ": " << r.body;
    EXPECT_NE(r.body.find(field), std::string::npos)
        << "the error does not name " << field << ": " << r.body;
  }
  for (const char* key : {"model_id", "budget", "not_after", "offline_grace_seconds"}) {
    nlohmann::json body = good;
    body.erase(key);
    http::ClientResponse r = Admin("POST", "/v1/admin/licences", body);
    EXPECT_EQ(r.status, 400) << "without " << key << ": " << r.body;
    EXPECT_NE(r.body.find(key), std::string::npos) << r.body;
  }
  http::ClientRequest raw;
  raw.method = "POST";
  raw.target = "/v1/admin/licences";
  for (std::string text : {std::string("{"), std::string("[]"), std::string("null"),
                           std::string(100, '[') + std::string(100, ']')}) {
    raw.body = text;
    EXPECT_EQ(MUST(admin_->Send(raw)).status, 400) << text;
  }
}

TEST_F(CustodianTest, SqlMetacharactersRoundTripUnchanged) {
  const std::string nasty = "x'); DROP TABLE models; -- \"\\ é ∑ %s";
  const std::string id = HexEncode(MUST(crypto::RandomBytes(16)));
  AdminOk("POST", "/v1/admin/models",
          {{"model_id", id}, {"name", nasty}, {"version", nasty}, {"dek", std::string(64, '1')}});
  nlohmann::json models = AdminOk("GET", "/v1/admin/models");
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0]["name"], nasty);
  EXPECT_EQ(models[0]["version"], nasty);
}

TEST_F(CustodianTest, SlowClientsAreCutOff) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(app_->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  // A TLS ClientHello that never completes: one byte every 200 ms.
  const auto start = std::chrono::steady_clock::now();
  bool closed = false;
  for (int i = 0; i < 50 && !closed; ++i) {
    const char byte = 0x16;
    closed = send(fd, &byte, 1, MSG_NOSIGNAL) < 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    char buf[16];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) closed = true;
  }
  close(fd);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(closed) << "a client sending a byte every 200 ms was still connected after "
                      << seconds << " s";
  EXPECT_LT(seconds, 5.0);
  // And the custodian still serves.
  EXPECT_EQ(Admin("GET", "/healthz").status, 200);
}

// ----- the API document ----------------------------------------------------------------------

TEST_F(CustodianTest, OpenApiDocumentDescribesExactlyTheServedRoutes) {
  Bytes text = MUST(ReadFile(CUSTODY_OPENAPI_PATH, 1 << 20));
  nlohmann::json doc = nlohmann::json::parse(AsChars(text));
  std::set<std::string> documented;
  for (auto& [path, ops] : doc["paths"].items()) {
    for (auto& [method, op] : ops.items()) {
      std::string m = method;
      std::transform(m.begin(), m.end(), m.begin(), ::toupper);
      documented.insert(m + " " + path);
    }
  }
  std::set<std::string> served;
  for (const http::RouteInfo& r : app_->routes()) served.insert(r.method + " " + r.pattern);
  EXPECT_EQ(documented, served);
}

}  // namespace
}  // namespace custody::custodian
