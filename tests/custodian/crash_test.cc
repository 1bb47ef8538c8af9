// Crash safety of the real custodian program (DESIGN.md §11: every state change is one durable
// transaction with its audit entry). `custodian serve` runs as a child process on 127.0.0.1 and is
// killed with SIGKILL at a random moment of every round while swtpm-backed devices report usage
// and ask for more budget, and an operator approves and denies their requests, all concurrently
// over the real HTTPS API. Every request that got a 2xx answer was acknowledged; after the last
// restart each acknowledged usage report must be counted exactly once, each acknowledged decision
// must be in the state it was acknowledged with, the remaining budget must be what that data
// implies, and the exported audit log must verify and hold an entry for each of them.
//
// Requests whose answer was lost to a kill are retried after the restart the way a device or an
// operator would: a usage report with the same report id (the custodian must answer "duplicate"
// if it had committed it), a decision with the same verdict (the custodian must answer that the
// request was already decided that way). Extension requests carry no idempotency key; one whose
// answer was lost may exist or not, and the operator decides it like any other pending request.
//
// A second test stops the custodian with SIGTERM while requests are in flight: it must exit 0
// within a few seconds and lose nothing it acknowledged.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/device_protocol.h"
#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/protocol/audit.h"
#include "core/protocol/messages.h"
#include "custodian/store/sqlite_store.h"
#include "http/client.h"
#include "tests/support/must.h"
#include "tests/support/test_device.h"

namespace custody::custodian {
namespace {

using namespace std::chrono_literals;
using testing::TestDevice;
using Clock = std::chrono::steady_clock;

constexpr int kKillRounds = 25;
constexpr int kTermRounds = 3;
constexpr int kDevices = 2;
constexpr auto kMinRunBeforeStop = 10ms;
constexpr auto kMaxRunBeforeStop = 300ms;
constexpr auto kStartTimeout = 20s;      // `custodian serve` until it says it serves
constexpr auto kGracefulExitLimit = 5s;  // SIGTERM until exit
constexpr auto kTestDeadline = 120s;     // workers give up (and fail the test) after this
constexpr auto kRetryWait = 2s;          // a failed request waits this long for a new server
constexpr auto kExtensionPace = 20ms;    // between two extension requests of a device
constexpr uint64_t kBudget = 1'000'000;  // never exhausted: remaining is budget + granted - used
constexpr uint64_t kMaxInferencesPerReport = 3;
constexpr uint64_t kMaxRequestedPerExtension = 50;
constexpr size_t kIdempotencyResends = 5;  // per device, after the loop
constexpr char kClientName[] = "kiosk";

std::string ReadText(const std::string& path) {
  Bytes b = MUST(ReadFile(path, 1 << 20));
  return std::string(AsChars(b));
}

void ReplaceOnce(std::string& text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos) << "'" << from << "' not in the configuration";
  text.replace(at, from.size(), to);
}

// A TCP port on 127.0.0.1 that was free a moment ago (`custodian serve` reports the port it bound
// only on stderr, and a restart must come back on the same port, so the config names one).
uint16_t PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

bool IsTpmConnectFailure(const Status& s) {
  return s.code() == StatusCode::kUnavailable &&
         s.message().find("cannot connect to the TPM") != std::string::npos;
}

// ----- a child process -----------------------------------------------------------------------

// A program run with its stdout and stderr on a pipe that a thread drains into output(). The pipe
// reaching end-of-file is how the exit is noticed (the custodian starts no processes of its own),
// so every wait here is on a condition with a deadline.
class ChildProcess {
 public:
  static Result<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      close(fds[0]);
      close(fds[1]);
      return ErrnoStatus(err, "fork");
    }
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec (the test process has threads).
      // The program gets the pipe as stdout and stderr and no other descriptor of the test: an
      // inherited TPM or HTTPS socket would outlive the test's own close of it.
      if (dup2(fds[1], STDOUT_FILENO) < 0 || dup2(fds[1], STDERR_FILENO) < 0) _exit(126);
      close_range(3, ~0U, 0);
      // A test that dies (an abort) takes the program with it.
      if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(125);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    std::unique_ptr<ChildProcess> child(new ChildProcess(pid, fds[0]));
    child->drain_ = std::thread([c = child.get()] { c->Drain(); });
    return child;
  }

  ~ChildProcess() {
    if (!reaped_) {
      kill(pid_, SIGKILL);
      Reap();
    }
    if (drain_.joinable()) drain_.join();
    close(fd_);
  }

  // true once `text` has appeared in the output; false if the program closed its output (exited)
  // or `timeout` passed first.
  bool WaitForOutput(const std::string& text, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return eof_ || output_.find(text) != std::string::npos; });
    return output_.find(text) != std::string::npos;
  }

  void Signal(int sig) { kill(pid_, sig); }

  // The wait status once the program has exited, or nullopt if it is still running after
  // `timeout`.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, timeout, [&] { return eof_; })) return std::nullopt;
    }
    Reap();
    return status_;
  }

  std::string output() const {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }

 private:
  ChildProcess(pid_t pid, int fd) : pid_(pid), fd_(fd) {}

  void Drain() {
    char buf[4096];
    while (true) {
      const ssize_t n = read(fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      std::lock_guard<std::mutex> lock(mu_);
      if (n <= 0) {
        eof_ = true;
        cv_.notify_all();
        return;
      }
      output_.append(buf, static_cast<size_t>(n));
      cv_.notify_all();
    }
  }

  void Reap() {
    if (reaped_) return;
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    status_ = status;
    reaped_ = true;
  }

  const pid_t pid_;
  const int fd_;
  std::thread drain_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string output_;
  bool eof_ = false;
  bool reaped_ = false;
  int status_ = 0;
};

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// ----- what was acknowledged -------------------------------------------------------------------

enum class Verdict { kApprove, kDeny };

// The operator's verdict on a request is a function of its id, so that a decision whose answer
// was lost is retried with the same verdict.
Verdict VerdictFor(const std::string& request_id) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (char c : request_id) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
  return h % 4 == 0 ? Verdict::kDeny : Verdict::kApprove;
}

const char* VerdictStatus(Verdict v) { return v == Verdict::kApprove ? "approved" : "denied"; }

struct ReportRecord {
  std::string device_id;
  uint64_t count = 0;
  bool answered = false;            // a 2xx answer arrived (on some attempt)
  bool first_try = true;            // answered on the first attempt
  bool answered_duplicate = false;  // the 2xx answer said the report was already counted
};

struct DecisionRecord {
  Verdict verdict = Verdict::kApprove;
  uint64_t granted = 0;
  bool acknowledged = false;  // 2xx; otherwise resolved by "already <verdict>" after a lost answer
};

struct Ledger {
  std::mutex mu;
  std::map<std::string, ReportRecord> reports;                       // by report id
  std::map<std::string, std::pair<std::string, uint64_t>> requests;  // id -> (device, requested)
  std::map<std::string, DecisionRecord> decisions;                   // by request id
  // Requests that failed in transport: in flight when the custodian went away, or sent while it
  // was down.
  uint64_t lost_answers = 0;
  uint64_t lost_extension_requests = 0;
};

// ----- the fixture ---------------------------------------------------------------------------

class CustodianCrashTest : public ::testing::Test {
 protected:
  enum class StopHow { kKill, kTerm };

  void SetUp() override {
    std::random_device rd;
    seed_ = (static_cast<uint64_t>(rd()) << 32) | rd();
    std::printf("random seed %llu\n", static_cast<unsigned long long>(seed_));
    std::fflush(stdout);
    rng_.seed(seed_);
    deadline_ = Clock::now() + kTestDeadline;
    char tmpl[] = "/tmp/custody-crash-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  void TearDown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      abort_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    if (operator_thread_.joinable()) operator_thread_.join();
    server_.reset();
    devices_.clear();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // `custodian init`, then the config adjusted for the test: a fixed port (restarts come back on
  // it), no per-client rate limit (the test's clients are few and busy), quiet logs.
  void Init(const std::string& durability) {
    port_ = PickFreePort();
    ASSERT_NE(port_, 0);
    data_dir_ = dir_ + "/data";
    auto init = MUST(ChildProcess::Spawn({CUSTODIAN_BINARY, "init", "--data", data_dir_, "--listen",
                                          "127.0.0.1:" + std::to_string(port_)}));
    std::optional<int> status = init->WaitForExit(60s);
    ASSERT_TRUE(status.has_value()) << "custodian init did not finish: " << init->output();
    ASSERT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
        << DescribeWaitStatus(*status) << ": " << init->output();
    std::istringstream lines(init->output());
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("initial admin token", 0) == 0) std::getline(lines, admin_token_);
    }
    ASSERT_FALSE(admin_token_.empty()) << init->output();
    config_path_ = data_dir_ + "/custodian.toml";
    std::string config = ReadText(config_path_);
    ASSERT_NO_FATAL_FAILURE(ReplaceOnce(config, "rate_per_second = 50", "rate_per_second = 0"));
    ASSERT_NO_FATAL_FAILURE(
        ReplaceOnce(config, "durability = \"power-loss\"", "durability = \"" + durability + "\""));
    ASSERT_NO_FATAL_FAILURE(ReplaceOnce(config, "level = \"info\"", "level = \"warn\""));
    std::ofstream(config_path_, std::ios::trunc) << config;
    ca_pem_ = ReadText(data_dir_ + "/keys/ca.pem");
  }

  // Starts `custodian serve` and waits until it says it serves; the workers are told.
  void StartServer() {
    ASSERT_EQ(server_, nullptr);
    server_ = MUST(ChildProcess::Spawn({CUSTODIAN_BINARY, "serve", "--config", config_path_}));
    const std::string expected = "serving on port " + std::to_string(port_);
    if (!server_->WaitForOutput(expected, kStartTimeout)) {
      FAIL() << "custodian serve did not start (after " << kills_ << " kills):\n"
             << server_->output();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generation_;
      up_ = true;
    }
    cv_.notify_all();
  }

  // SIGKILL, or SIGTERM with a deadline on a clean exit.
  void StopServer(StopHow how) {
    ASSERT_NE(server_, nullptr);
    {
      std::lock_guard<std::mutex> lock(mu_);
      up_ = false;
    }
    if (how == StopHow::kKill) {
      server_->Signal(SIGKILL);
      std::optional<int> status = server_->WaitForExit(10s);
      ASSERT_TRUE(status.has_value()) << "SIGKILL did not end the custodian";
      ASSERT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
          << DescribeWaitStatus(*status) << ":\n"
          << server_->output();
      ++kills_;
    } else {
      const auto start = Clock::now();
      server_->Signal(SIGTERM);
      std::optional<int> status = server_->WaitForExit(kGracefulExitLimit);
      ASSERT_TRUE(status.has_value()) << "the custodian was still running "
                                      << kGracefulExitLimit.count() << " s after SIGTERM:\n"
                                      << server_->output();
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
          << "after SIGTERM: " << DescribeWaitStatus(*status) << ":\n"
          << server_->output();
      const auto took = std::chrono::duration<double>(Clock::now() - start).count();
      std::printf("SIGTERM: custodian exited in %.3f s\n", took);
      std::fflush(stdout);
    }
    server_.reset();
  }

  std::unique_ptr<http::Client> NewClient(std::optional<std::string> token,
                                          TestDevice* device = nullptr) {
    http::ClientOptions o;
    o.host = "127.0.0.1";
    o.port = port_;
    o.ca_pem = ca_pem_;
    o.bearer_token = std::move(token);
    o.connect_timeout = 5s;
    o.request_timeout = 20s;
    if (device != nullptr) {
      o.client_certificate_pem = device->identity().certificate_pem;
      o.client_key_pem = device->tls_key_pem();
    }
    return MUST(http::Client::Create(std::move(o)));
  }

  nlohmann::json AdminOk(const std::string& method, const std::string& target,
                         const nlohmann::json& body = nullptr) {
    http::ClientRequest req;
    req.method = method;
    req.target = target;
    if (!body.is_null()) req.body = body.dump();
    http::ClientResponse r = MUST(admin_->Send(req));
    EXPECT_EQ(r.status / 100, 2) << method << " " << target << ": " << r.body;
    return nlohmann::json::parse(r.body, nullptr, false);
  }

  // Over the admin API: an operator token, a group whose golden state is a fresh swtpm's, a
  // model, a licence for the group with a budget and manual extensions, and enrolled devices.
  void Provision() {
    admin_ = NewClient(admin_token_);
    operator_token_ = AdminOk("POST", "/v1/admin/tokens",
                              {{"name", "night-shift"}, {"role", "operator"}})["token"]
                          .get<std::string>();
    AdminOk("POST", "/v1/admin/groups",
            {{"name", "kiosks"}, {"pcrs", {0, 2, 4, 7}}, {"require_ek_certificate", false}});
    nlohmann::json zero;
    for (int pcr : {0, 2, 4, 7}) zero[std::to_string(pcr)] = std::string(64, '0');
    AdminOk("POST", "/v1/admin/groups/kiosks/golden-sets", {{"name", "factory"}, {"pcrs", zero}});
    model_id_ = HexEncode(MUST(crypto::RandomBytes(16)));
    AdminOk("POST", "/v1/admin/models",
            {{"model_id", model_id_},
             {"name", "resnet"},
             {"version", "1.0"},
             {"dek", HexEncode(MUST(crypto::RandomBytes(32)))}});
    nlohmann::json licence = AdminOk("POST", "/v1/admin/licences",
                                     {{"model_id", model_id_},
                                      {"group", "kiosks"},
                                      {"budget", kBudget},
                                      {"not_after", "2099-12-31"},
                                      {"offline_grace_seconds", 3600},
                                      {"extension", {{"manual", true}}}});
    licence_id_ = licence["licence_id"].get<std::string>();
    ASSERT_EQ(licence["extension"]["manual"], true);
    for (int i = 0; i < kDevices; ++i) {
      const std::string token =
          AdminOk("POST", "/v1/admin/enrollment-tokens", {{"group", "kiosks"}})["token"]
              .get<std::string>();
      // Swtpm::Start reports the emulator ready once its socket file exists, which on a loaded
      // machine can be a moment before it listens: a first connection refused is tried again.
      Result<std::unique_ptr<TestDevice>> created = TestDevice::Create(port_, ca_pem_);
      for (int attempt = 1; attempt < 3 && !created && IsTpmConnectFailure(created.error());
           ++attempt) {
        created = TestDevice::Create(port_, ca_pem_);
      }
      ASSERT_TRUE(created.has_value()) << created.error().ToString();
      ASSERT_OK((*created)->Enroll(token));
      devices_.push_back(std::move(*created));
    }
  }

  // ----- workers ---------------------------------------------------------------------------

  uint64_t Generation() {
    std::lock_guard<std::mutex> lock(mu_);
    return generation_;
  }

  bool Aborted() {
    std::lock_guard<std::mutex> lock(mu_);
    return abort_;
  }

  // After a request failed in transport: wait until a custodian newer than the one the request
  // was sent to is up (bounded: a failure without a restart is retried anyway). false: give up.
  bool AwaitNewServer(uint64_t sent_to) {
    if (Clock::now() > deadline_) {
      ADD_FAILURE() << "a request still fails after " << kTestDeadline.count() << " s";
      return false;
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kRetryWait, [&] { return abort_ || (up_ && generation_ > sent_to); });
    return !abort_;
  }

  void Fail(const std::string& what) {
    ADD_FAILURE() << what;
    std::lock_guard<std::mutex> lock(mu_);
    abort_ = true;
    cv_.notify_all();
  }

  void LostAnswer(http::Client& client) {
    client.Close();
    std::lock_guard<std::mutex> lock(ledger_.mu);
    ++ledger_.lost_answers;
  }

  // Sends report `id` until the custodian answers 2xx (the TPM counter was already advanced by
  // its count). A retry certifies the counter over a fresh nonce and keeps the report id.
  bool DeliverReport(TestDevice& device, http::Client& client, const std::string& id,
                     uint64_t count) {
    for (int attempt = 0;; ++attempt) {
      const uint64_t sent_to = Generation();
      Result<http::ClientResponse> nonce_answer =
          client.PostJson("/v1/nonce", nlohmann::json::object());
      if (!nonce_answer) {
        LostAnswer(client);
        if (!AwaitNewServer(sent_to)) return false;
        continue;
      }
      if (nonce_answer->status != 200) {
        Fail("POST /v1/nonce: " + std::to_string(nonce_answer->status) + " " + nonce_answer->body);
        return false;
      }
      protocol::NonceResponse nonce = MUST(protocol::ParseNonceResponse(nonce_answer->body));
      protocol::UsageRequest request =
          MUST(agent::MakeUsageReport(device.tpm(), device.identity(), nonce.nonce, id,
                                      {{model_id_, kClientName, count}}, 0, std::nullopt));
      Result<http::ClientResponse> r = client.PostJson("/v1/usage", protocol::ToJson(request));
      if (!r) {
        LostAnswer(client);
        if (!AwaitNewServer(sent_to)) return false;
        continue;
      }
      if (r->status / 100 != 2) {
        Fail("usage report " + id + ": " + std::to_string(r->status) + " " + r->body);
        return false;
      }
      nlohmann::json answer = nlohmann::json::parse(r->body, nullptr, false);
      const bool duplicate = answer.is_object() && answer.value("duplicate", false);
      std::lock_guard<std::mutex> lock(ledger_.mu);
      ReportRecord& rec = ledger_.reports.at(id);
      if (rec.answered && !duplicate) {
        Fail("report " + id + " was counted again when resent after its acknowledgement");
        return false;
      }
      if (!rec.answered) {
        rec.answered = true;
        rec.first_try = attempt == 0;
        rec.answered_duplicate = duplicate;
      }
      return true;
    }
  }

  // A device's usage: count inferences on the TPM counter, report them, repeat.
  void UsageWorker(int index, uint64_t seed) {
    TestDevice& device = *devices_[index];
    auto client = NewClient(std::nullopt, &device);
    std::mt19937_64 rng(seed);
    for (uint64_t n = 0; !DevicesStopping(); ++n) {
      const std::string id = "d" + std::to_string(index) + "-r" + std::to_string(n);
      const uint64_t count = 1 + rng() % kMaxInferencesPerReport;
      for (uint64_t i = 0; i < count; ++i) {
        Result<uint64_t> c = device.tpm().IncrementCounter(device.identity().counter_index,
                                                           device.identity().counter_auth);
        if (!c) return Fail("TPM counter: " + c.error().ToString());
      }
      {
        std::lock_guard<std::mutex> lock(ledger_.mu);
        ledger_.reports[id] = ReportRecord{device.identity().device_id, count};
      }
      if (!DeliverReport(device, *client, id, count)) return;
    }
  }

  // A device asking for more budget now and then.
  void ExtensionWorker(int index, uint64_t seed) {
    TestDevice& device = *devices_[index];
    auto client = NewClient(std::nullopt, &device);
    std::mt19937_64 rng(seed);
    while (!DevicesStopping()) {
      const uint64_t requested = 1 + rng() % kMaxRequestedPerExtension;
      const uint64_t sent_to = Generation();
      Result<http::ClientResponse> r = client->PostJson(
          "/v1/extensions",
          protocol::ToJson(protocol::ExtensionRequestMessage{licence_id_, requested, "busy day"}));
      if (!r) {
        LostAnswer(*client);
        {
          std::lock_guard<std::mutex> lock(ledger_.mu);
          ++ledger_.lost_extension_requests;
        }
        if (!AwaitNewServer(sent_to)) return;
        continue;
      }
      nlohmann::json answer = nlohmann::json::parse(r->body, nullptr, false);
      if (r->status != 200 || !answer.is_object() || answer.value("status", "") != "pending") {
        return Fail("POST /v1/extensions: " + std::to_string(r->status) + " " + r->body);
      }
      {
        // Asking while an earlier request still waits returns that one, with what it asked for.
        const std::pair<std::string, uint64_t> filed{device.identity().device_id,
                                                     answer.value("requested", uint64_t{0})};
        std::lock_guard<std::mutex> lock(ledger_.mu);
        auto [it, fresh] =
            ledger_.requests.try_emplace(answer["request_id"].get<std::string>(), filed);
        if (!fresh && it->second != filed) {
          return Fail("a repeated extension request changed the waiting one: " + r->body);
        }
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, kExtensionPace, [&] { return abort_ || devices_stopping_; });
    }
  }

  enum class Decided { kYes, kRetry, kFailed };

  Decided Decide(http::Client& client, const std::string& id, uint64_t requested) {
    const Verdict verdict = VerdictFor(id);
    const uint64_t sent_to = Generation();
    Result<http::ClientResponse> r =
        verdict == Verdict::kApprove
            ? client.PostJson("/v1/admin/extensions/" + id + "/approve", {{"granted", requested}})
            : client.PostJson("/v1/admin/extensions/" + id + "/deny", {{"reason", "over plan"}});
    if (!r || r->status == 503) {
      if (!r) LostAnswer(client);
      return AwaitNewServer(sent_to) ? Decided::kRetry : Decided::kFailed;
    }
    const std::string already = std::string("was already ") + VerdictStatus(verdict);
    const bool acknowledged = r->status / 100 == 2;
    if (!acknowledged && !(r->status == 409 && r->body.find(already) != std::string::npos)) {
      Fail("decision on " + id + " (" + VerdictStatus(verdict) + "): " + std::to_string(r->status) +
           " " + r->body);
      return Decided::kFailed;
    }
    std::lock_guard<std::mutex> lock(ledger_.mu);
    DecisionRecord& d = ledger_.decisions[id];
    d.verdict = verdict;
    d.granted = verdict == Verdict::kApprove ? requested : 0;
    d.acknowledged = d.acknowledged || acknowledged;
    return Decided::kYes;
  }

  // The operator: decides every pending request; retries decisions whose answers were lost.
  void OperatorWorker() {
    auto client = NewClient(operator_token_);
    std::map<std::string, uint64_t> in_doubt;  // request id -> requested
    while (true) {
      const bool last_pass = OperatorStopping();
      for (auto it = in_doubt.begin(); it != in_doubt.end();) {
        const Decided d = Decide(*client, it->first, it->second);
        if (d == Decided::kFailed) return;
        it = d == Decided::kYes ? in_doubt.erase(it) : std::next(it);
      }
      const uint64_t sent_to = Generation();
      Result<http::ClientResponse> r = client->Get("/v1/admin/extensions?status=pending");
      if (!r) {
        LostAnswer(*client);
        if (!AwaitNewServer(sent_to)) return;
        continue;
      }
      nlohmann::json pending = nlohmann::json::parse(r->body, nullptr, false);
      if (r->status != 200 || !pending.is_array()) {
        return Fail("GET /v1/admin/extensions: " + std::to_string(r->status) + " " + r->body);
      }
      for (const nlohmann::json& e : pending) {
        const std::string id = e["request_id"].get<std::string>();
        const uint64_t requested = e["requested"].get<uint64_t>();
        const Decided d = Decide(*client, id, requested);
        if (d == Decided::kFailed) return;
        if (d == Decided::kRetry) in_doubt[id] = requested;
      }
      if (last_pass && pending.empty() && in_doubt.empty()) return;
      if (pending.empty()) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, kExtensionPace, [&] { return abort_ || operator_stopping_; });
      }
      if (Aborted()) return;
    }
  }

  bool DevicesStopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return abort_ || devices_stopping_;
  }
  bool OperatorStopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return abort_ || operator_stopping_;
  }

  void StartWorkers() {
    for (int i = 0; i < kDevices; ++i) {
      workers_.emplace_back([this, i, s = rng_()] { UsageWorker(i, s); });
      workers_.emplace_back([this, i, s = rng_()] { ExtensionWorker(i, s); });
    }
    operator_thread_ = std::thread([this] { OperatorWorker(); });
  }

  // With the custodian up: the devices finish what they have in hand, then the operator decides
  // what is still pending.
  void FinishWorkers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      devices_stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      operator_stopping_ = true;
    }
    cv_.notify_all();
    operator_thread_.join();
  }

  // Rounds of: serve for a random 10-300 ms under load, then stop the custodian `how`.
  void RunRounds(int rounds, StopHow how) {
    StartServer();
    ASSERT_NO_FATAL_FAILURE(Provision());
    StartWorkers();
    std::uniform_int_distribution<int64_t> run_ms(kMinRunBeforeStop.count(),
                                                  kMaxRunBeforeStop.count());
    for (int round = 0; round < rounds && !Aborted(); ++round) {
      // Not a wait for something: the random moment of the stop is the point of the test.
      std::this_thread::sleep_for(std::chrono::milliseconds(run_ms(rng_)));
      ASSERT_NO_FATAL_FAILURE(StopServer(how));
      ASSERT_NO_FATAL_FAILURE(StartServer());
    }
    FinishWorkers();
  }

  // ----- checks ----------------------------------------------------------------------------

  std::vector<protocol::AuditEntry> ExportAudit() {
    std::vector<protocol::AuditEntry> entries;
    for (uint64_t after = 0;;) {
      http::ClientRequest req;
      req.target = "/v1/admin/audit?limit=10000&after=" + std::to_string(after);
      http::ClientResponse r = MUST(admin_->Send(req));
      EXPECT_EQ(r.status, 200) << r.body;
      size_t added = 0;
      std::istringstream lines(r.body);
      for (std::string line; std::getline(lines, line);) {
        entries.push_back(MUST(protocol::AuditEntryFromJsonLine(line)));
        ++added;
      }
      if (added == 0 || r.status != 200) return entries;
      after = entries.back().seq;
    }
  }

  // Everything acknowledged is there, through the admin API of a freshly restarted custodian.
  void VerifyAcknowledged() {
    std::lock_guard<std::mutex> lock(ledger_.mu);
    // Usage: every report was answered in the end (retries keep the report id), so the
    // custodian's total is exactly what the devices counted on their TPMs.
    std::map<std::string, uint64_t> used;     // device -> inferences reported
    std::map<std::string, uint64_t> granted;  // device -> inferences granted by approvals
    for (const auto& [id, rec] : ledger_.reports) {
      EXPECT_TRUE(rec.answered) << "report " << id << " was never answered";
      used[rec.device_id] += rec.count;
    }
    nlohmann::json extensions = AdminOk("GET", "/v1/admin/extensions");
    std::map<std::string, nlohmann::json> by_id;
    for (const nlohmann::json& e : extensions) by_id[e["request_id"].get<std::string>()] = e;
    for (const auto& [id, req] : ledger_.requests) {
      ASSERT_TRUE(by_id.contains(id)) << "acknowledged extension request " << id << " is lost";
      EXPECT_EQ(by_id[id]["device_id"], req.first);
      EXPECT_EQ(by_id[id]["requested"].get<uint64_t>(), req.second);
    }
    for (const auto& [id, e] : by_id) {
      EXPECT_NE(e["status"], "pending") << id << " was left undecided";
      ASSERT_TRUE(ledger_.decisions.contains(id)) << id << " was decided by someone else";
    }
    for (const auto& [id, d] : ledger_.decisions) {
      ASSERT_TRUE(by_id.contains(id)) << "decided extension request " << id << " is lost";
      const nlohmann::json& e = by_id[id];
      EXPECT_EQ(e["status"], VerdictStatus(d.verdict))
          << id << (d.acknowledged ? " (acknowledged)" : " (answered after a lost answer)");
      if (d.verdict == Verdict::kApprove) {
        EXPECT_EQ(e["granted"].get<uint64_t>(), d.granted) << id;
        granted[e["device_id"].get<std::string>()] += d.granted;
      }
    }

    // Per device: the usage total and the remaining budget they imply.
    for (const auto& device : devices_) {
      const std::string& id = device->identity().device_id;
      nlohmann::json details = AdminOk("GET", "/v1/admin/devices/" + id);
      uint64_t counted = 0;
      for (const nlohmann::json& u : details["usage"]) {
        if (u["model_id"] == model_id_) counted += u["count"].get<uint64_t>();
      }
      EXPECT_EQ(counted, used[id]) << "usage of " << id;
      ASSERT_EQ(details["licences"].size(), 1u);
      EXPECT_EQ(details["licences"][0]["remaining"].get<uint64_t>(),
                kBudget + granted[id] - used[id])
          << "remaining budget of " << id;
    }

    // The audit log verifies and holds exactly one entry per report and per decision, and a lease
    // for every approval.
    std::vector<protocol::AuditEntry> audit = ExportAudit();
    ASSERT_FALSE(audit.empty());
    EXPECT_EQ(audit.front().seq, 1u);
    ASSERT_OK(protocol::VerifyAuditChain(audit));
    std::map<std::string, int> report_entries, request_entries, decision_entries;
    std::set<std::string> lease_reasons;
    for (const protocol::AuditEntry& e : audit) {
      EXPECT_NE(e.action, "usage.rollback") << e.subject;
      if (e.action == "usage.report") ++report_entries[e.subject];
      if (e.action == "extension.request") ++request_entries[e.subject];
      if (e.action == "extension.approve" || e.action == "extension.deny") {
        ++decision_entries[e.subject];
        const auto it = ledger_.decisions.find(e.subject);
        if (it != ledger_.decisions.end()) {
          EXPECT_EQ(e.action, it->second.verdict == Verdict::kApprove ? "extension.approve"
                                                                      : "extension.deny")
              << e.subject;
          EXPECT_EQ(e.actor.rfind("token:night-shift", 0), 0u) << e.actor;
        }
      }
      if (e.action == "lease.issue") {
        nlohmann::json details = nlohmann::json::parse(e.details, nullptr, false);
        if (details.is_object()) lease_reasons.insert(details.value("reason", ""));
      }
    }
    for (const auto& [id, rec] : ledger_.reports) {
      EXPECT_EQ(report_entries[id], 1) << "audit entries for usage report " << id;
    }
    EXPECT_EQ(report_entries.size(), ledger_.reports.size()) << "reports nobody sent were counted";
    for (const auto& [id, req] : ledger_.requests) {
      EXPECT_EQ(request_entries[id], 1) << "audit entries for extension request " << id;
    }
    for (const auto& [id, d] : ledger_.decisions) {
      EXPECT_EQ(decision_entries[id], 1) << "audit entries for the decision on " << id;
      if (d.verdict == Verdict::kApprove) {
        EXPECT_TRUE(lease_reasons.contains("extension " + id)) << "no lease for approved " << id;
      }
    }
    EXPECT_EQ(decision_entries.size(), ledger_.decisions.size());
  }

  // Acknowledged reports sent once more (a device that did not see the answer) are answered as
  // duplicates and change nothing.
  void ResendAcknowledgedReports() {
    for (size_t i = 0; i < devices_.size(); ++i) {
      TestDevice& device = *devices_[i];
      auto client = NewClient(std::nullopt, &device);
      std::vector<std::pair<std::string, uint64_t>> sample;
      {
        std::lock_guard<std::mutex> lock(ledger_.mu);
        for (const auto& [id, rec] : ledger_.reports) {
          if (rec.device_id == device.identity().device_id && sample.size() < kIdempotencyResends)
            sample.emplace_back(id, rec.count);
        }
      }
      for (const auto& [id, count] : sample) {
        protocol::NonceResponse nonce = MUST(protocol::ParseNonceResponse(
            MUST(client->PostJson("/v1/nonce", nlohmann::json::object())).body));
        protocol::UsageRequest request =
            MUST(agent::MakeUsageReport(device.tpm(), device.identity(), nonce.nonce, id,
                                        {{model_id_, kClientName, count}}, 0, std::nullopt));
        http::ClientResponse r = MUST(client->PostJson("/v1/usage", protocol::ToJson(request)));
        ASSERT_EQ(r.status, 200) << r.body;
        EXPECT_EQ(nlohmann::json::parse(r.body).value("duplicate", false), true)
            << "resent report " << id << ": " << r.body;
      }
    }
  }

  // After a graceful stop: the database opens (which verifies the tail of the audit chain), the
  // whole chain verifies, and the usage is what the API said.
  void VerifyDatabase() {
    auto store = MUST(SqliteStore::Open(data_dir_ + "/custodian.db"));
    std::vector<protocol::AuditEntry> audit = MUST(store->AuditAfter(0, SIZE_MAX));
    ASSERT_OK(protocol::VerifyAuditChain(audit));
    std::lock_guard<std::mutex> lock(ledger_.mu);
    for (const auto& device : devices_) {
      const std::string& id = device->identity().device_id;
      uint64_t expected = 0;
      for (const auto& [report_id, rec] : ledger_.reports) {
        if (rec.device_id == id) expected += rec.count;
      }
      uint64_t stored = 0;
      for (const UsageCount& c : MUST(store->UsageForDevice(id))) stored += c.count;
      EXPECT_EQ(stored, expected) << id;
    }
  }

  // What the stops did to the requests in flight.
  struct Summary {
    size_t reports = 0;
    size_t reports_retried = 0;
    size_t reports_committed_unanswered = 0;   // a retry was answered "duplicate"
    size_t requests = 0;                       // extension requests acknowledged
    size_t requests_committed_unanswered = 0;  // decided by the operator, never acknowledged
    size_t decisions = 0;
    size_t decisions_committed_unanswered = 0;  // a retry was answered "already <verdict>"
    uint64_t transport_failures = 0;
  };

  Summary Summarise() {
    std::lock_guard<std::mutex> lock(ledger_.mu);
    Summary s;
    s.reports = ledger_.reports.size();
    for (const auto& [id, rec] : ledger_.reports) {
      s.reports_retried += rec.first_try ? 0 : 1;
      s.reports_committed_unanswered += rec.answered_duplicate ? 1 : 0;
    }
    s.requests = ledger_.requests.size();
    s.decisions = ledger_.decisions.size();
    for (const auto& [id, d] : ledger_.decisions) {
      s.requests_committed_unanswered += ledger_.requests.contains(id) ? 0 : 1;
      s.decisions_committed_unanswered += d.acknowledged ? 0 : 1;
    }
    s.transport_failures = ledger_.lost_answers;
    return s;
  }

  void PrintSummary(const char* what) {
    const Summary s = Summarise();
    std::printf(
        "%s: %d kills; %zu usage reports (%zu retried, %zu committed but unanswered); %zu "
        "extension requests acknowledged (%zu more committed but unanswered); %zu decisions "
        "(%zu committed but unanswered); %llu requests failed in transport\n",
        what, kills_, s.reports, s.reports_retried, s.reports_committed_unanswered, s.requests,
        s.requests_committed_unanswered, s.decisions, s.decisions_committed_unanswered,
        static_cast<unsigned long long>(s.transport_failures));
    std::fflush(stdout);
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  Clock::time_point deadline_;
  std::string dir_;
  std::string data_dir_;
  std::string config_path_;
  uint16_t port_ = 0;
  std::string admin_token_;
  std::string operator_token_;
  std::string ca_pem_;
  std::string model_id_;
  std::string licence_id_;
  std::unique_ptr<ChildProcess> server_;
  std::unique_ptr<http::Client> admin_;
  std::vector<std::unique_ptr<TestDevice>> devices_;
  int kills_ = 0;

  // The custodian's lifecycle as the workers see it.
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;  // bumped by every start
  bool up_ = false;
  bool devices_stopping_ = false;
  bool operator_stopping_ = false;
  bool abort_ = false;

  std::vector<std::thread> workers_;
  std::thread operator_thread_;
  Ledger ledger_;
};

class CustodianKillTest : public CustodianCrashTest,
                          public ::testing::WithParamInterface<const char*> {};

TEST_P(CustodianKillTest, KillNineDuringIngestionAndApprovalsLosesNothingAcknowledged) {
  const auto start = Clock::now();
  ASSERT_NO_FATAL_FAILURE(Init(GetParam()));
  ASSERT_NO_FATAL_FAILURE(RunRounds(kKillRounds, StopHow::kKill));
  ASSERT_FALSE(Aborted());
  EXPECT_EQ(kills_, kKillRounds);
  PrintSummary(GetParam());
  {
    std::lock_guard<std::mutex> lock(ledger_.mu);
    ASSERT_GT(ledger_.reports.size(), 0u);
    ASSERT_GT(ledger_.decisions.size(), 0u);
  }
  // Once more from a cold start, then everything through the admin API.
  ASSERT_NO_FATAL_FAILURE(StopServer(StopHow::kKill));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(VerifyAcknowledged());
  ASSERT_NO_FATAL_FAILURE(ResendAcknowledgedReports());
  ASSERT_NO_FATAL_FAILURE(VerifyAcknowledged());
  ASSERT_NO_FATAL_FAILURE(StopServer(StopHow::kTerm));
  ASSERT_NO_FATAL_FAILURE(VerifyDatabase());
  std::printf("%s: %.1f s\n", GetParam(),
              std::chrono::duration<double>(Clock::now() - start).count());
}

INSTANTIATE_TEST_SUITE_P(Durability, CustodianKillTest,
                         ::testing::Values("power-loss", "process-crash"),
                         [](const ::testing::TestParamInfo<const char*>& param) {
                           return std::string(param.param) == "power-loss" ? "PowerLoss"
                                                                           : "ProcessCrash";
                         });

TEST_F(CustodianCrashTest, SigtermWithRequestsInFlightExitsCleanlyAndLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(Init("power-loss"));
  ASSERT_NO_FATAL_FAILURE(RunRounds(kTermRounds, StopHow::kTerm));
  ASSERT_FALSE(Aborted());
  PrintSummary("SIGTERM");
  ASSERT_NO_FATAL_FAILURE(StopServer(StopHow::kTerm));
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ASSERT_NO_FATAL_FAILURE(VerifyAcknowledged());
  // A graceful stop finishes what it started: nothing was committed without being answered.
  const Summary s = Summarise();
  EXPECT_EQ(s.reports_committed_unanswered, 0u);
  EXPECT_EQ(s.requests_committed_unanswered, 0u);
  EXPECT_EQ(s.decisions_committed_unanswered, 0u);
  ASSERT_NO_FATAL_FAILURE(StopServer(StopHow::kTerm));
  ASSERT_NO_FATAL_FAILURE(VerifyDatabase());
}

}  // namespace
}  // namespace custody::custodian
