// custody-agent end to end: the real program, its swtpm, a real custodian (in this process) and
// real requests through the agent's socket. Each test is one scenario of the product's core loop
// or one attack on it, expecting a specific, explained refusal (docs/THREATS.md, "Device agent").
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "agent/device_protocol.h"
#include "agent/journal.h"
#include "agent/kserve.h"
#include "agent/state.h"
#include "core/base/file.h"
#include "core/format/sealed.h"
#include "tests/support/agent_world.h"
#include "tests/support/must.h"
#include "tests/support/unprivileged.h"

namespace custody::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class AgentE2eTest : public ::testing::Test {
 protected:
  void TearDown() override {
    client_.reset();
    agent_.reset();
    world_.reset();
  }

  // A world whose device is enrolled.
  void Make(WorldOptions options) {
    world_ = MUST(AgentWorld::Create(std::move(options)));
    const Exited enrolled = MUST(EnrollDevice(*world_));
    ASSERT_EQ(enrolled.code, 0) << enrolled.output;
    ASSERT_NE(enrolled.output.find("enrolled: device dev_"), std::string::npos) << enrolled.output;
  }

  void StartAgent(std::vector<std::string> env = {}) {
    client_.reset();
    agent_ = MUST(AgentProcess::Spawn({AgentBinary(), "run", "--config", world_->config_path()},
                                      world_->dir() + "/agent.log", std::move(env)));
    ASSERT_OK(agent_->WaitServing(world_->socket_path(), 60s));
    client_ = MUST(agent::LocalClient::Connect({world_->socket_path()}));
  }

  // SIGTERM: an orderly stop that must end with exit code 0.
  void StopAgent() {
    client_.reset();
    agent_->Signal(SIGTERM);
    const std::optional<int> code = agent_->Wait(20s);
    ASSERT_TRUE(code.has_value()) << "custody-agent did not stop on SIGTERM: " << agent_->Log();
    EXPECT_EQ(*code, 0) << agent_->Log();
    agent_.reset();
  }

  agent::LocalAnswer InferNow() { return MUST(Infer(*client_, world_->model_name())); }

  std::string RefusalOf(const agent::LocalAnswer& a) {
    std::optional<std::string_view> r = a.Header("Custody-Refusal");
    return r ? std::string(*r) : std::string();
  }

  nlohmann::json Status() {
    agent::LocalAnswer a = MUST(client_->Send("GET", "/v1/status"));
    EXPECT_EQ(a.status, 200) << a.body;
    return nlohmann::json::parse(a.body);
  }

  // Waits until the model serves (the agent attested and loaded it).
  void WaitServing() {
    const bool serving = WaitUntil([&] { return InferNow().status == 200; }, 30s);
    ASSERT_TRUE(serving) << Status().dump(2) << "\n" << agent_->Log();
  }

  // Infers until refused (at most `limit` times); returns how many were served and the refusal.
  std::pair<uint64_t, agent::LocalAnswer> ServeUntilRefused(uint64_t limit) {
    uint64_t served = 0;
    for (uint64_t i = 0; i < limit; ++i) {
      agent::LocalAnswer a = InferNow();
      if (a.status != 200) return {served, a};
      ++served;
    }
    return {served, agent::LocalAnswer{}};
  }

  // A copy of the (stopped) agent's state directory, as an operator's backup would be.
  std::string SaveStateCopy() {
    const std::string saved = world_->dir() + "/saved-state";
    std::filesystem::remove_all(saved);
    std::filesystem::copy(world_->state_dir(), saved, std::filesystem::copy_options::recursive);
    return saved;
  }
  void RestoreStateCopy(const std::string& saved) {
    std::filesystem::remove_all(world_->state_dir());
    std::filesystem::copy(saved, world_->state_dir(), std::filesystem::copy_options::recursive);
  }

  // A device with a budget of 12 serves 4 (the first, then 3), stops, and its state directory is
  // backed up into `saved`; the agent is started again.
  void BackUpAfterFourOfTwelve(std::string& saved) {
    WorldOptions o;
    o.budget = 12;
    ASSERT_NO_FATAL_FAILURE(Make(o));
    ASSERT_NO_FATAL_FAILURE(StartAgent());
    ASSERT_NO_FATAL_FAILURE(WaitServing());
    for (int i = 0; i < 3; ++i) ASSERT_EQ(InferNow().status, 200);
    ASSERT_NO_FATAL_FAILURE(StopAgent());
    saved = SaveStateCopy();
    ASSERT_NO_FATAL_FAILURE(StartAgent());
  }

  bool LogHas(std::string_view text) { return agent_->Log().find(text) != std::string::npos; }

  // The custodian's audit entries of `action`, once there is at least one (20 s at most).
  std::vector<nlohmann::json> AwaitAudit(const std::string& action) {
    std::vector<nlohmann::json> entries;
    EXPECT_TRUE(WaitUntil(
        [&] {
          entries = MUST(world_->AuditEntries(action));
          return !entries.empty();
        },
        20s))
        << "no " << action << " audited\n"
        << agent_->Log();
    return entries;
  }

  // The journal is lost while the custodian cannot be reached, after a usage report was delivered
  // (`report_pending` false) or while one was still waiting to be sent: either way the next start
  // that reaches the custodian reports the loss, once.
  void LoseJournalOffline(bool report_pending) {
    const std::string state_file = world_->state_dir() + "/state.json";
    auto state = [&] { return nlohmann::json::parse(AsChars(MUST(ReadFile(state_file)))); };
    if (report_pending) world_->StopCustodian();
    for (int i = 0; i < 3; ++i) ASSERT_EQ(InferNow().status, 200);
    // Until a usage report is made, the state names no journal to compare with.
    ASSERT_TRUE(WaitUntil(
        [&] {
          const nlohmann::json s = state();
          return !s.at("report_journal").get<std::string>().empty() &&
                 s.at("pending_report").is_null() != report_pending;
        },
        20s))
        << agent_->Log();
    const std::string lost_journal = state().at("report_journal");
    ASSERT_NO_FATAL_FAILURE(StopAgent());

    // The journal is deleted and the agent started and stopped while the custodian is
    // unreachable: this start's anomaly never leaves the device.
    std::filesystem::remove(world_->state_dir() + "/meter.journal");
    world_->StopCustodian();
    ASSERT_NO_FATAL_FAILURE(StartAgent());
    EXPECT_TRUE(WaitUntil([&] { return LogHas("the metering journal was missing"); }, 10s))
        << agent_->Log();
    ASSERT_NO_FATAL_FAILURE(StopAgent());
    ASSERT_OK(world_->StartCustodian());

    // The next start finds a journal other than the one the last report came from.
    ASSERT_NO_FATAL_FAILURE(StartAgent());
    const std::vector<nlohmann::json> audited = AwaitAudit("device.meter_anomaly");
    ASSERT_EQ(audited.size(), 1u);
    EXPECT_NE(audited[0].dump().find("the last usage report came from"), std::string::npos)
        << audited[0].dump();
    // The pending report went first, as it was made, and the cursor now belongs to the new journal.
    ASSERT_TRUE(WaitUntil([&] { return state().at("pending_report").is_null(); }, 20s))
        << agent_->Log();
    EXPECT_NE(state().at("report_journal").get<std::string>(), lost_journal);
  }

  std::unique_ptr<AgentWorld> world_;
  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<agent::LocalClient> client_;
};

// ----- the core loop -----------------------------------------------------------------------

TEST_F(AgentE2eTest, ServesThroughTheSocketMetersExactlyAndReportsUsage) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  for (int i = 0; i < 9; ++i) ASSERT_EQ(InferNow().status, 200);

  // The KServe answer: the model's output, as binary tensor data.
  agent::LocalAnswer a = InferNow();
  ASSERT_EQ(a.status, 200) << a.body;
  ASSERT_TRUE(a.Header("Inference-Header-Content-Length").has_value());
  agent::kserve::InferResponse decoded =
      MUST(agent::kserve::ParseInferResponse(a.body, a.Header("Inference-Header-Content-Length")));
  ASSERT_EQ(decoded.outputs.size(), 1u);
  EXPECT_EQ(decoded.outputs[0].shape, (std::vector<int64_t>{1, 4}));
  // Metadata, readiness and health.
  EXPECT_EQ(MUST(client_->Send("GET", "/v2/models/tiny")).status, 200);
  EXPECT_EQ(MUST(client_->Send("GET", "/v2/models/tiny/ready")).status, 200);
  EXPECT_EQ(MUST(client_->Send("GET", "/v2/health/ready")).status, 200);
  EXPECT_EQ(MUST(client_->Send("GET", "/v2/models/other/infer")).status, 400);
  agent::LocalAnswer wrong = MUST(client_->Send("POST", "/v2/models/tiny/infer",
                                                R"({"inputs":[{"name":"x","shape":[1,3],)"
                                                R"("datatype":"FP32","data":[1,2,3]}]})"));
  EXPECT_EQ(wrong.status, 400) << wrong.body;  // a wrong shape is an error, and not counted

  // The status: budget and lease in requests; 11 served from the 100 of the licence (the metadata,
  // readiness and the refused request are not counted).
  nlohmann::json status = Status();
  ASSERT_EQ(status["models"].size(), 1u) << status.dump(2);
  const nlohmann::json& m = status["models"][0];
  EXPECT_TRUE(m["serving"].get<bool>());
  EXPECT_EQ(m["budget"]["remaining"].get<uint64_t>(), 89u) << m.dump(2);
  EXPECT_EQ(status["metering"]["unit"].get<uint64_t>(), 4u);
  EXPECT_TRUE(status["process_protection"]["non_dumpable"].get<bool>());
  EXPECT_EQ(status["process_protection"]["seccomp"], "installed (errno)");

  // Usage reaches the custodian with the exact counts per client.
  const std::string device = MUST(world_->DeviceId());
  const bool reported = WaitUntil(
      [&] {
        Result<nlohmann::json> d = world_->Admin("GET", "/v1/admin/devices/" + device);
        if (!d || (*d)["usage"].empty()) return false;
        return (*d)["usage"][0]["count"].get<uint64_t>() == 11 &&
               (*d)["usage"][0]["client"] == "uid:" + std::to_string(geteuid());
      },
      20s);
  EXPECT_TRUE(reported) << world_->Admin("GET", "/v1/admin/devices/" + device)->dump(2);
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  EXPECT_NE(MUST(ReadFile(world_->dir() + "/agent.log")).size(), 0u);
}

TEST_F(AgentE2eTest, BudgetLowRequestsAnExtensionApprovalRaisesItExhaustionRefuses) {
  WorldOptions o;
  o.budget = 12;
  o.extension_threshold = 5;
  o.extension_amount = 20;
  ASSERT_NO_FATAL_FAILURE(Make(o));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());  // 1 served
  auto [served, refused] = ServeUntilRefused(100);
  EXPECT_EQ(served + 1, 12u) << "exactly the budget";
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_EQ(RefusalOf(refused), "budget_exhausted");
  EXPECT_NE(refused.body.find("budget"), std::string::npos) << refused.body;

  // Crossing the threshold filed a request, which waits for an operator.
  nlohmann::json pending;
  ASSERT_TRUE(WaitUntil(
      [&] {
        pending = MUST(world_->Admin("GET", "/v1/admin/extensions?status=pending"));
        return pending.size() == 1;
      },
      20s))
      << agent_->Log();
  EXPECT_EQ(pending[0]["requested"].get<uint64_t>(), 20u);
  MUST(world_->Admin(
      "POST", "/v1/admin/extensions/" + pending[0]["request_id"].get<std::string>() + "/approve"));
  // The raised lease comes down the event stream; serving continues for exactly 20 more.
  ASSERT_TRUE(WaitUntil([&] { return InferNow().status == 200; }, 10s)) << Status().dump(2);
  auto [more, again] = ServeUntilRefused(100);
  EXPECT_EQ(more + 1, 20u);
  EXPECT_EQ(RefusalOf(again), "budget_exhausted");
}

TEST_F(AgentE2eTest, StopSwitchRefusesWithinASecondAndUnloadsTheModel) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  std::this_thread::sleep_for(300ms);  // let the long-poll park (as a device online would be)
  const auto t0 = Clock::now();
  MUST(world_->Admin("POST", "/v1/admin/revocations",
                     {{"scope", "licence"}, {"id", world_->licence_id()}, {"reason", "unpaid"}}));
  agent::LocalAnswer refused;
  ASSERT_TRUE(WaitUntil(
      [&] {
        refused = InferNow();
        return refused.status != 200;
      },
      5s));
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(seconds, 1.0) << "the stop switch took " << seconds << " s";
  EXPECT_EQ(refused.status, 403);
  EXPECT_EQ(RefusalOf(refused), "revoked");
  EXPECT_NE(refused.body.find("unpaid"), std::string::npos) << refused.body;
  // The log line follows the refusal (the model is wiped once its last request is done).
  EXPECT_TRUE(WaitUntil([&] { return LogHas("1 model(s) unloaded"); }, 5s)) << agent_->Log();
  // The revocation survives a restart.
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer after = InferNow();
  EXPECT_EQ(RefusalOf(after), "revoked") << after.body;
}

// Offline: the custodian goes away; the agent serves until the grace runs out on the TPM clock,
// refuses saying why and since when, and serves again once the custodian is back.
void OfflineGraceScenario(
    AgentE2eTest* t, AgentWorld& world, AgentProcess& agent,
    const std::function<void()>& after_custodian_stops,
    const std::function<void()>& before_custodian_starts = [] {}) {
  world.StopCustodian();
  const auto t0 = Clock::now();
  after_custodian_stops();
  std::unique_ptr<agent::LocalClient> connection =
      MUST(agent::LocalClient::Connect({world.socket_path()}));
  agent::LocalClient& client = *connection;
  (void)t;
  EXPECT_EQ(MUST(Infer(client, world.model_name())).status, 200) << "within the grace";
  agent::LocalAnswer refused;
  ASSERT_TRUE(WaitUntil(
      [&] {
        refused = MUST(Infer(client, world.model_name()));
        return refused.status != 200;
      },
      20s))
      << agent.Log();
  const double offline = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_EQ(refused.Header("Custody-Refusal").value_or(""), "offline_grace_expired")
      << refused.body;
  EXPECT_NE(refused.body.find("ran out"), std::string::npos) << refused.body;
  // The grace is 6 s and the agent renews its lease every 3 s while online.
  EXPECT_GE(offline, 2.0);
  EXPECT_LE(offline, 8.0);
  before_custodian_starts();
  ASSERT_OK(world.StartCustodian());
  EXPECT_TRUE(WaitUntil([&] { return MUST(Infer(client, world.model_name())).status == 200; }, 60s))
      << agent.Log();
  // Back online, the event long-poll is held again at once (not after a backoff grown while the
  // custodian was down): the stop switch still acts within a second.
  std::this_thread::sleep_for(300ms);
  const auto revoked_at = Clock::now();
  MUST(world.Admin("POST", "/v1/admin/revocations",
                   {{"scope", "licence"}, {"id", world.licence_id()}, {"reason", "after outage"}}));
  EXPECT_TRUE(
      WaitUntil([&] { return MUST(Infer(client, world.model_name())).status != 200; }, 20s));
  const double stop = std::chrono::duration<double>(Clock::now() - revoked_at).count();
  EXPECT_LT(stop, 1.0) << "the stop switch took " << stop << " s after the outage\n" << agent.Log();
}

TEST_F(AgentE2eTest, CustodianDownServesWithinGraceThenRefusesThenRecovers) {
  WorldOptions o;
  o.offline_grace_s = 6;
  o.budget = 1'000'000;
  ASSERT_NO_FATAL_FAILURE(Make(o));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  OfflineGraceScenario(this, *world_, *agent_, [] {});
}

TEST_F(AgentE2eTest, SystemClockMovedBackDuringOfflineGraceDoesNotExtendIt) {
  // libfaketime gives the agent a system clock that the test moves, leaving its monotonic clock
  // (and the TPM's) alone: as a site admin setting the date would.
  const std::string faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
  ASSERT_TRUE(PathExists(faketime))
      << faketime << " is missing: scripts/install-deps.sh installs it (package libfaketime)";
  WorldOptions o;
  o.offline_grace_s = 6;
  o.budget = 1'000'000;
  ASSERT_NO_FATAL_FAILURE(Make(o));
  const std::string clock_file = world_->dir() + "/faketime";
  ASSERT_OK(WriteFileAtomic(clock_file, AsBytes(std::string("+0\n")),
                            WriteOptions{0644, Overwrite::kAllow}));
  ASSERT_NO_FATAL_FAILURE(
      StartAgent({"LD_PRELOAD=" + faketime, "FAKETIME_TIMESTAMP_FILE=" + clock_file,
                  "FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1"}));
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  OfflineGraceScenario(
      this, *world_, *agent_,
      [&] {
        // Back by a day, then by another day a second later.
        ASSERT_OK(WriteFileAtomic(clock_file, AsBytes(std::string("-1d\n")),
                                  WriteOptions{0644, Overwrite::kAllow}));
        std::this_thread::sleep_for(1s);
        ASSERT_OK(WriteFileAtomic(clock_file, AsBytes(std::string("-2d\n")),
                                  WriteOptions{0644, Overwrite::kAllow}));
      },
      [&] {
        // Two days back, the custodian's certificate is not valid yet: the clock is put right
        // before the custodian comes back.
        ASSERT_OK(WriteFileAtomic(clock_file, AsBytes(std::string("+0\n")),
                                  WriteOptions{0644, Overwrite::kAllow}));
      });
  // The agent did see the clock moved back: its log lines are stamped two days earlier.
  const auto earlier = std::chrono::floor<std::chrono::days>(std::chrono::system_clock::now() -
                                                             std::chrono::days(2));
  const std::string day = format::FormatTimestamp(std::chrono::sys_seconds(earlier)).substr(0, 10);
  EXPECT_NE(agent_->Log().find("\"ts\":\"" + day), std::string::npos)
      << "no log line dated " << day << ": the fake clock did not reach the agent";
}

// ----- attacks ------------------------------------------------------------------------------

TEST_F(AgentE2eTest, PowerCutThatSetsTheTpmClockBackDoesNotExtendTheGrace) {
  WorldOptions o;
  o.offline_grace_s = 600;  // far longer than the test, shorter than what one power cut counts
  ASSERT_NO_FATAL_FAILURE(Make(o));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  const uint64_t contact = Status()["tpm_clock"]["contact_ms"].get<uint64_t>();
  ASSERT_NO_FATAL_FAILURE(StopAgent());

  // Offline, the power is cut before the TPM saved its clock: the clock falls back. Once it is
  // above the attestation again, only the TPM's reset count tells (its `safe` flag only until
  // the next save, 4 s on swtpm).
  world_->StopCustodian();
  ASSERT_OK(world_->swtpm().Restart(Swtpm::Shutdown::kPowerCut));
  std::string clock;
  ASSERT_TRUE(WaitUntil(
      [&] {
        clock = MUST(world_->swtpm().Tool({"tpm2_readclock"}));
        const size_t at = clock.find("clock: ");
        return at != std::string::npos && std::stoull(clock.substr(at + 7)) > contact + 500;
      },
      60s))
      << clock;

  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer refused;
  EXPECT_TRUE(WaitUntil(
      [&] {
        refused = InferNow();
        return RefusalOf(refused) == "offline_grace_expired";
      },
      20s))
      << refused.body << "\n"
      << agent_->Log();
  EXPECT_NE(refused.body.find("for 1 TPM reset(s) since then"), std::string::npos) << refused.body;
  EXPECT_EQ(Status()["tpm_clock"]["possible_loss_ms"].get<uint64_t>(), agent::kClockLossPerResetMs);
  // The reset count it is measured from is the signed lease's: nothing in the state directory
  // holds it for an attacker to move.
  EXPECT_EQ(Status()["tpm_clock"]["resets_since_contact"].get<uint32_t>(), 1u);
  const std::string state(AsChars(MUST(ReadFile(world_->state_dir() + "/state.json"))));
  EXPECT_EQ(state.find("reset"), std::string::npos) << state;

  // Back online: a new attestation is a new reference, and serving resumes.
  ASSERT_OK(world_->StartCustodian());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  EXPECT_EQ(Status()["tpm_clock"]["possible_loss_ms"].get<uint64_t>(), 0u);
  EXPECT_EQ(Status()["tpm_clock"]["resets_since_contact"].get<uint32_t>(), 0u);
}

TEST_F(AgentE2eTest, CopiedStateDirectoryOnAnotherTpmGetsNoLeaseAndNoModel) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  // The whole state directory (identity, key blobs, counter auth, TLS key, leases, journal)
  // copied to a second machine with its own TPM.
  const std::string copy = world_->dir() + "/copied-state";
  std::filesystem::copy(world_->state_dir(), copy, std::filesystem::copy_options::recursive);
  std::unique_ptr<Swtpm> other = MUST(Swtpm::Start());
  std::string config = MUST(ReadFile(world_->config_path())).empty()
                           ? std::string()
                           : std::string(AsChars(MUST(ReadFile(world_->config_path()))));
  auto replace = [&](const std::string& from, const std::string& to) {
    config.replace(config.find(from), from.size(), to);
  };
  replace("state_dir = \"" + world_->state_dir() + "\"", "state_dir = \"" + copy + "\"");
  replace(world_->swtpm().tcti(), other->tcti());
  replace(world_->socket_path(), world_->dir() + "/run/copy.sock");
  const std::string copy_config = world_->dir() + "/copy.toml";
  ASSERT_OK(WriteFileAtomic(copy_config, AsBytes(config), WriteOptions{0644, Overwrite::kAllow}));
  const Exited run = MUST(RunToExit({AgentBinary(), "run", "--config", copy_config}, 60s));
  EXPECT_EQ(run.code, 7) << run.output;
  EXPECT_NE(run.output.find("belongs to another TPM"), std::string::npos) << run.output;

  // And below the agent: its TPM cannot quote with the copied AK or unwrap the copied lease.
  std::unique_ptr<tpm::Tpm> tpm = MUST(tpm::Tpm::Open(other->tcti()));
  agent::StateDir dir = MUST(agent::StateDir::Open(copy));
  const agent::DeviceIdentity id = MUST(dir.LoadIdentity());
  EXPECT_FALSE(agent::MakeAttestation(*tpm, id, Bytes(32, 7)).ok()) << "the AK must not load";
  std::vector<nlohmann::json> leases = MUST(dir.LoadLeases());
  ASSERT_EQ(leases.size(), 1u);
  const protocol::LeasePayload lease = MUST(agent::OpenLease(id, leases[0]));
  Result<SecretBuffer> dek = agent::UnwrapLeaseKey(*tpm, id, lease);
  EXPECT_FALSE(dek.ok()) << "the binding key must not load on another TPM";
  Result<SecretBuffer> tls = agent::OpenTlsKey(*tpm, id.device_id, MUST(dir.LoadTlsKey()));
  ASSERT_FALSE(tls.ok()) << "the TLS key must not unseal on another TPM";
  EXPECT_EQ(tls.error().code(), StatusCode::kUnauthenticated) << tls.error().ToString();
}

TEST_F(AgentE2eTest, ReplayedOldLeaseFileIsRefused) {
  WorldOptions o;
  o.renew_interval = "2s";  // a new lease every 2 s
  ASSERT_NO_FATAL_FAILURE(Make(o));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  const std::string leases = world_->state_dir() + "/leases.json";
  const Bytes first = MUST(ReadFile(leases));
  ASSERT_TRUE(WaitUntil([&] { return MUST(ReadFile(leases)) != first; }, 20s));
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  world_->StopCustodian();  // offline: only the files can give it a lease
  ASSERT_OK(WriteFileAtomic(leases, first, WriteOptions{0600, Overwrite::kAllow}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer refused = InferNow();
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(RefusalOf(refused), "no_lease");
  EXPECT_NE(agent_->Log().find("an old lease file (replay)"), std::string::npos) << agent_->Log();
}

TEST_F(AgentE2eTest, RolledBackStateDirectoryNeverGivesBudgetBack) {
  std::string saved;
  ASSERT_NO_FATAL_FAILURE(BackUpAfterFourOfTwelve(saved));
  auto [served, refused] = ServeUntilRefused(100);
  EXPECT_EQ(served, 8u);
  EXPECT_EQ(RefusalOf(refused), "budget_exhausted");
  ASSERT_NO_FATAL_FAILURE(StopAgent());

  // The operator restores the copy from when 4 of 12 were used.
  RestoreStateCopy(saved);
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer after = InferNow();
  EXPECT_EQ(after.status, 403) << after.body;
  EXPECT_EQ(RefusalOf(after), "budget_exhausted") << after.body;
  EXPECT_TRUE(LogHas("an older copy of the state directory was restored")) << agent_->Log();
  // The custodian is told, and keeps it in its audit trail.
  AwaitAudit("device.meter_anomaly");
}

TEST_F(AgentE2eTest, RollbackFoundOfflineIsReportedAfterTheNextStart) {
  std::string saved;
  ASSERT_NO_FATAL_FAILURE(BackUpAfterFourOfTwelve(saved));
  for (int i = 0; i < 6; ++i) ASSERT_EQ(InferNow().status, 200);
  ASSERT_NO_FATAL_FAILURE(StopAgent());

  // The copy goes back while the custodian cannot be reached, and the agent stops before it can
  // report what it found.
  RestoreStateCopy(saved);
  world_->StopCustodian();
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  EXPECT_TRUE(
      WaitUntil([&] { return LogHas("an older copy of the state directory was restored"); }, 10s))
      << agent_->Log();
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  ASSERT_OK(world_->StartCustodian());
  ASSERT_TRUE(MUST(world_->AuditEntries("device.meter_anomaly")).empty());

  // The written-off record in the journal is what the next start reports from.
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  const std::vector<nlohmann::json> audited = AwaitAudit("device.meter_anomaly");
  ASSERT_EQ(audited.size(), 1u);
  EXPECT_NE(audited[0].dump().find("written off and not reported yet"), std::string::npos)
      << audited[0].dump();
}

TEST_F(AgentE2eTest, JournalLostOfflineIsReportedAfterTheNextStart) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  ASSERT_NO_FATAL_FAILURE(LoseJournalOffline(/*report_pending=*/false));
}

TEST_F(AgentE2eTest, JournalLostWithAReportPendingIsStillReported) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  ASSERT_NO_FATAL_FAILURE(LoseJournalOffline(/*report_pending=*/true));
}

TEST_F(AgentE2eTest, TamperedSealedModelIsRefused) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  Bytes sealed = MUST(ReadFile(world_->sealed_path()));
  sealed[sealed.size() - 100] ^= 0x01;  // one bit in the last chunk
  ASSERT_OK(WriteFileAtomic(world_->sealed_path(), sealed, WriteOptions{0644, Overwrite::kAllow}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer refused;
  ASSERT_TRUE(WaitUntil(
      [&] {
        refused = InferNow();
        return RefusalOf(refused) == "model_unavailable" &&
               refused.body.find("failed authentication") != std::string::npos;
      },
      30s))
      << refused.body;
  EXPECT_EQ(refused.status, 503);
  EXPECT_NE(refused.body.find("tampered with"), std::string::npos) << refused.body;
}

TEST_F(AgentE2eTest, PcrChangedAfterAttestationGetsNoLeaseAndTheKeyDoesNotUnwrap) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  ASSERT_NO_FATAL_FAILURE(StopAgent());
  // The boot chain changes (swtpm has one connection: the agent is stopped meanwhile).
  MUST(world_->swtpm().Tool({"tpm2_pcrextend", "0:sha256=" + std::string(64, 'a')}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  agent::LocalAnswer refused = InferNow();
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_EQ(RefusalOf(refused), "platform_not_approved") << refused.body;
  // The custodian refuses to lease: the quote shows PCR 0 out of policy.
  ASSERT_TRUE(WaitUntil(
      [&] {
        const nlohmann::json error = Status()["custodian"]["last_error"];
        return error.is_string() &&
               error.get<std::string>().find("attestation") != std::string::npos;
      },
      20s))
      << Status().dump(2);
  EXPECT_NE(Status()["custodian"]["last_error"].get<std::string>().find("0"), std::string::npos);
  EXPECT_EQ(RefusalOf(InferNow()), "platform_not_approved");
}

TEST_F(AgentE2eTest, UnauthorisedUidIsRefusedAtTheSocket) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  WorldOptions o;
  // The unprivileged user's group may connect.
  o.serve_extra = "socket_group = \"" + std::to_string(kNobodyGid) + "\"\n";
  ASSERT_NO_FATAL_FAILURE(Make(o));
  // As /run/custody in a deployment: others may reach the socket; its mode and the peer check
  // decide.
  const std::string run_dir = std::filesystem::path(world_->socket_path()).parent_path();
  ASSERT_EQ(chmod(std::filesystem::path(run_dir).parent_path().c_str(), 0711), 0);
  ASSERT_EQ(chmod(run_dir.c_str(), 0711), 0);
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  struct stat st {};
  ASSERT_EQ(stat(world_->socket_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  EXPECT_EQ(st.st_gid, kNobodyGid);
  const std::string result = MUST(AsUnprivilegedUser([&] {
    Result<std::unique_ptr<agent::LocalClient>> c =
        agent::LocalClient::Connect({world_->socket_path()});
    Result<agent::LocalAnswer> a =
        c ? (*c)->Send("GET", "/v1/status") : Result<agent::LocalAnswer>(c.error());
    return a ? std::to_string(a->status) + " " + a->body : a.error().ToString();
  }));
  EXPECT_EQ(result.substr(0, 4), "403 ") << result;
  EXPECT_NE(result.find("uid " + std::to_string(kNobodyUid) + " may not use this agent"),
            std::string::npos)
      << result;
  EXPECT_EQ(MUST(client_->Send("GET", "/v1/status")).status, 200) << "the agent's own uid may";
}

TEST_F(AgentE2eTest, KilledAtRandomPointsWhileServingLosesNoCountedRequest) {
  WorldOptions o;
  o.budget = 100000;
  ASSERT_NO_FATAL_FAILURE(Make(o));
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  uint64_t answered = 0;
  for (int round = 0; round < 4; ++round) {
    ASSERT_NO_FATAL_FAILURE(StartAgent());
    ASSERT_NO_FATAL_FAILURE(WaitServing());
    ++answered;
    std::atomic<uint64_t> ok{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int c = 0; c < 3; ++c) {
      clients.emplace_back([&] {
        Result<std::unique_ptr<agent::LocalClient>> client =
            agent::LocalClient::Connect({world_->socket_path()});
        while (client && !stop) {
          Result<agent::LocalAnswer> a = Infer(**client, world_->model_name());
          if (!a) break;  // the agent died
          if (a->status == 200) ++ok;
        }
      });
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(100, 600)(rng)));
    agent_->Signal(SIGKILL);
    agent_->Wait(10s);
    stop = true;
    for (std::thread& t : clients) t.join();
    answered += ok;
    client_.reset();
    agent_.reset();
  }
  ASSERT_GT(answered, 20u);
  // Everything answered is in the journal and paid for by the counter.
  const agent::DeviceIdentity id =
      MUST(MUST(agent::StateDir::Open(world_->state_dir())).LoadIdentity());
  const agent::JournalScan scan = MUST(
      agent::ScanJournal(MUST(ReadFile(world_->state_dir() + "/meter.journal")), "meter.journal"));
  EXPECT_GE(scan.state.served_total, answered);
  std::unique_ptr<tpm::Tpm> tpm = MUST(tpm::Tpm::Open(world_->swtpm().tcti()));
  const uint64_t counter = MUST(tpm->ReadCounter(id.counter_index, id.counter_auth));
  EXPECT_GE(counter * id.counter_unit - scan.state.counter_base, answered);
}

TEST_F(AgentE2eTest, ModelPlaintextNeverTouchesDisk) {
  const std::string models =
      getenv("CUSTODY_TEST_MODELS_DIR") ? getenv("CUSTODY_TEST_MODELS_DIR") : "";
  const Bytes marker = MUST(ReadFile(models + "/tiny.pt.marker"));
  ASSERT_EQ(marker.size(), 64u);
  // Only files written since the agent's world was made can be the agent's doing (a developer's
  // own copies of the plain model elsewhere in /tmp are not).
  const auto started = std::filesystem::file_time_type::clock::now() - std::chrono::seconds(2);
  ASSERT_NO_FATAL_FAILURE(Make({}));
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  for (int i = 0; i < 5; ++i) ASSERT_EQ(InferNow().status, 200);
  const std::string needle(AsChars(marker));
  auto contains = [&](const std::string& path) {
    Result<Bytes> b = ReadFile(path, 256 << 20);
    return b && std::string_view(AsChars(*b)).find(needle) != std::string_view::npos;
  };
  // The plaintext model file itself holds it (the check can see it)...
  ASSERT_TRUE(contains(models + "/tiny.pt"));
  std::vector<std::string> found;
  const std::filesystem::path source = std::filesystem::canonical(models);
  auto scan = [&](const std::string& root) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(
             root, std::filesystem::directory_options::skip_permission_denied, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path() == source) {  // the vendor's own plaintext, before sealing
        it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(ec) && it->last_write_time(ec) >= started &&
          contains(it->path().string())) {
        found.push_back(it->path());
      }
    }
  };
  // ...and no file in the state directory, the world, the temporary directories, or any file
  // the agent has open.
  for (const char* root : {"/tmp", "/var/tmp", "/dev/shm"}) scan(root);
  const std::string fd_dir = "/proc/" + std::to_string(agent_->pid()) + "/fd";
  for (const auto& fd : std::filesystem::directory_iterator(fd_dir)) {
    std::error_code ec;
    const std::filesystem::path target = std::filesystem::read_symlink(fd.path(), ec);
    if (!ec && std::filesystem::is_regular_file(target, ec) && contains(target.string())) {
      found.push_back(target.string() + " (open in the agent)");
    }
  }
  EXPECT_TRUE(found.empty()) << "the model's plaintext is in: " << found[0];
}

TEST_F(AgentE2eTest, TlsKeyIsSealedToTheTpmAndAnAlteredOrMissingOneIsRefused) {
  ASSERT_NO_FATAL_FAILURE(Make({}));
  // No private key in the clear anywhere in the state directory.
  for (const auto& entry : std::filesystem::directory_iterator(world_->state_dir())) {
    const std::string text(AsChars(MUST(ReadFile(entry.path().string(), 64 << 20))));
    EXPECT_EQ(text.find("PRIVATE KEY"), std::string::npos) << entry.path();
  }
  const std::string sealed_path = world_->state_dir() + "/tls-key.sealed";
  struct stat st {};
  ASSERT_EQ(stat(sealed_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // It opens in this TPM: the agent reaches the custodian over mutual TLS with it.
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
  ASSERT_NO_FATAL_FAILURE(StopAgent());

  // One bit of the encrypted key changed.
  const Bytes original = MUST(ReadFile(sealed_path));
  nlohmann::json altered = nlohmann::json::parse(AsChars(original));
  Bytes ciphertext = MUST(Base64Decode(altered["ciphertext"].get<std::string>()));
  ciphertext[ciphertext.size() / 2] ^= 0x01;
  altered["ciphertext"] = Base64Encode(ciphertext);
  ASSERT_OK(
      WriteFileAtomic(sealed_path, AsBytes(altered.dump()), WriteOptions{0600, Overwrite::kAllow}));
  const Exited refused =
      MUST(RunToExit({AgentBinary(), "run", "--config", world_->config_path()}, 60s));
  EXPECT_EQ(refused.code, 5) << refused.output;
  EXPECT_NE(refused.output.find("tls-key.sealed) does not open: it was altered"), std::string::npos)
      << refused.output;

  // Gone.
  std::filesystem::remove(sealed_path);
  const Exited missing =
      MUST(RunToExit({AgentBinary(), "run", "--config", world_->config_path()}, 60s));
  EXPECT_EQ(missing.code, 3) << missing.output;
  EXPECT_NE(missing.output.find("enroll the device again"), std::string::npos) << missing.output;

  // Put back, it opens in this TPM, but only as this device's key: the device id is bound in.
  ASSERT_OK(WriteFileAtomic(sealed_path, original, WriteOptions{0600, Overwrite::kAllow}));
  {
    std::unique_ptr<tpm::Tpm> tpm = MUST(tpm::Tpm::Open(world_->swtpm().tcti()));
    agent::StateDir dir = MUST(agent::StateDir::Open(world_->state_dir()));
    const agent::SealedTlsKey key = MUST(dir.LoadTlsKey());
    const std::string device_id = MUST(dir.LoadIdentity()).device_id;
    EXPECT_NE(std::string(AsChars(MUST(agent::OpenTlsKey(*tpm, device_id, key)).span()))
                  .find("PRIVATE KEY"),
              std::string::npos);
    Result<SecretBuffer> other = agent::OpenTlsKey(*tpm, device_id + "0", key);
    ASSERT_FALSE(other.ok());
    EXPECT_EQ(other.error().code(), StatusCode::kUnauthenticated) << other.error().ToString();
  }
  ASSERT_NO_FATAL_FAILURE(StartAgent());
  ASSERT_NO_FATAL_FAILURE(WaitServing());
}

TEST_F(AgentE2eTest, ProgramRefusesClearlyWhenNotEnrolledOrEnrolledTwice) {
  world_ = MUST(AgentWorld::Create({}));
  const Exited not_enrolled =
      MUST(RunToExit({AgentBinary(), "run", "--config", world_->config_path()}, 60s));
  EXPECT_EQ(not_enrolled.code, 3) << not_enrolled.output;
  EXPECT_NE(not_enrolled.output.find("enroll the device first"), std::string::npos)
      << not_enrolled.output;
  const Exited bad_token = MUST(RunToExit(
      {AgentBinary(), "enroll", "--config", world_->config_path(), "--token", "cet_wrong"}, 60s));
  EXPECT_EQ(bad_token.code, 7) << bad_token.output;
  EXPECT_NE(bad_token.output.find("enrollment token is not valid"), std::string::npos)
      << bad_token.output;
  const Exited wrong_custodian = MUST(
      RunToExit({AgentBinary(), "enroll", "--custodian", "https://custodian.elsewhere.example",
                 "--config", world_->config_path(), "--token", MUST(world_->EnrollmentToken())},
                60s));
  EXPECT_EQ(wrong_custodian.code, 2) << wrong_custodian.output;
  EXPECT_NE(wrong_custodian.output.find("set custodian.url"), std::string::npos)
      << wrong_custodian.output;
  std::filesystem::remove_all(world_->state_dir());
  const Exited enrolled = MUST(EnrollDevice(*world_));
  ASSERT_EQ(enrolled.code, 0) << enrolled.output;
  const Exited twice = MUST(EnrollDevice(*world_));
  EXPECT_EQ(twice.code, 4) << twice.output;
  EXPECT_NE(twice.output.find("already holds an enrolled device"), std::string::npos)
      << twice.output;
}

}  // namespace
}  // namespace custody::testing
