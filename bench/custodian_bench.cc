// custody_custodian_bench: the custodian under the load of N simulated devices, over its real
// HTTPS API with mutual TLS, on loopback, with its SQLite store.
//
//   custody_custodian_bench [--devices 1000,10000] [--seconds S] [--concurrency C]
//                           [--client-threads T] [--durability power-loss|process-crash]
//                           [--dir DIR]
//
// Two processes: the custodian (custodian::App, as `custodian serve` runs it, with the
// configuration `custodian init` writes: 2 I/O threads, 8 workers, per-device rate limit, SQLite
// with the chosen durability, default power-loss; changed only: log level warn, so no line per
// request, max_connections N + 512, and idle_timeout 600 s, so that the first connections of a
// large fleet are not closed while the rest connect) is forked off before the load starts; this
// process is the load generator (T client threads, default 2). Both share the machine's cores, so
// every figure includes the load generator's own TLS and JSON work competing with the server: the
// CPU each process used is printed per phase.
//
// Devices are software devices (soft_device.h): per device a P-256 AK, binding key and TLS key
// generated with OpenSSL, and a client certificate issued by the custodian's own CA
// (CertificateAuthority::IssueDevice). Setup (NOT measured): the group with its golden PCR set,
// a model and a licence for the group are created through CustodianService, and the devices are
// written directly into the store with an audit entry each, as enrollment would leave them
// (enrollment itself needs credential activation with a TPM's EK, which a software device cannot
// do), each with one approved budget extension on the licence, as a fleet in service has.
// Everything measured is the real HTTPS API: TLS 1.2+/mutual TLS with the device certificates, the
// router, the service, the verifier (each quote is a TPMS_ATTEST signed by the device's AK at
// request time, over the custodian's fresh nonce) and the store.
//
// Per N (a fresh custodian each):
//   connect       every device opens its keep-alive TLS connection (full mutual-TLS handshake)
//                 with one heartbeat; the server's RSS growth per connection is printed.
//   attest+lease  POST /v1/nonce, the quote signed in software, POST /v1/attest, one lease back
//                 (1 in 64 is verified: envelope signature under the pinned lease key, the
//                 counter limit = counter + budget + the device's extension, and the wrapped
//                 model key unwrapped with the binding key).
//                 closed loop: C requests in flight (default 128) for S seconds (default 3)
//                 paced: an open-loop schedule at the target rate for S seconds -> p50/p99,
//                 latency counted from the scheduled start (no coordinated omission); then
//                 paced at half the closed loop's throughput (context: the latency of a load
//                 this machine keeps up with, when the target rate is beyond it)
//   heartbeat     GET /v1/events?wait_ms=0, closed loop (throughput) and paced (latency), same.
//   revocation    every device parks a long-poll (GET /v1/events?wait_ms=30000); once both
//                 processes are idle, the licence is revoked through the admin API
//                 (POST /v1/admin/revocations, scope licence) and the time from sending that
//                 request until the LAST device has its answer is the figure. Every answer is
//                 checked: one revocation event, signed by the custodian's lease key, for this
//                 device.
// Latency targets are judged on the paced runs: at a closed loop's saturation, latency is
// in-flight / throughput by Little's law and says nothing about the service. The closed-loop
// figures are printed too.
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/device_protocol.h"
#include "bench_util.h"
#include "core/crypto/crypto.h"
#include "core/protocol/messages.h"
#include "core/tpm/policy.h"
#include "custodian/app.h"
#include "custodian/config.h"
#include "custodian/keys.h"
#include "custodian/service.h"
#include "custodian/store/sqlite_store.h"
#include "http/client.h"
#include "soft_device.h"

namespace custody::bench {
namespace {

namespace asio = http::asio;
using http::AsyncConnection;
using http::ClientContext;
using http::ClientOptions;
using http::ClientRequest;
using http::ClientResponse;

constexpr double kTargetAttestPerSecond = 1000;
constexpr double kTargetHeartbeatsPerSecond = 10000;
constexpr double kTargetP99Ms = 50;
constexpr double kTargetRevocationSeconds = 1.0;
constexpr int kVerifyEveryNthLease = 64;
constexpr uint64_t kLicenceBudget = uint64_t{1} << 40;
constexpr uint64_t kExtensionPerDevice = 1000;
constexpr int kLongPollWaitMs = 30000;
const std::vector<uint32_t> kPcrSelection = {0, 2, 4, 7};

struct Args {
  std::vector<size_t> devices = {1000, 10000};
  double seconds = 3.0;
  int concurrency = 128;
  int client_threads = 2;
  custodian::Durability durability = custodian::Durability::kPowerLoss;
  std::string dir = DefaultScratchDir();
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  Flags flags;
  const std::string usage =
      "custody_custodian_bench [--devices 1000,10000] [--seconds S] [--concurrency C] "
      "[--client-threads T] [--durability power-loss|process-crash] [--dir DIR]";
  flags.values["--devices"] = [&](const std::string& v) {
    a.devices.clear();
    std::stringstream in(v);
    for (std::string item; std::getline(in, item, ',');) {
      a.devices.push_back(static_cast<size_t>(std::max(1, std::stoi(item))));
    }
  };
  flags.values["--seconds"] = [&](const std::string& v) { a.seconds = std::stod(v); };
  flags.values["--concurrency"] = [&](const std::string& v) {
    a.concurrency = std::max(1, std::stoi(v));
  };
  flags.values["--client-threads"] = [&](const std::string& v) {
    a.client_threads = std::max(1, std::stoi(v));
  };
  flags.values["--durability"] = [&](const std::string& v) {
    if (v == "power-loss") {
      a.durability = custodian::Durability::kPowerLoss;
    } else if (v == "process-crash") {
      a.durability = custodian::Durability::kProcessCrash;
    } else {
      Die("--durability must be power-loss or process-crash; usage: " + usage);
    }
  };
  flags.values["--dir"] = [&](const std::string& v) { a.dir = v; };
  ParseFlags(argc, argv, flags, usage);
  if (a.devices.empty()) Die("--devices needs at least one count; usage: " + usage);
  return a;
}

std::string g_work_dir;
pid_t g_server = -1;
void Cleanup() {
  if (g_server > 0) {
    kill(g_server, SIGKILL);
    waitpid(g_server, nullptr, 0);
    g_server = -1;
  }
  if (!g_work_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(g_work_dir, ec);
  }
}

// ----- statistics and process figures --------------------------------------------------------

// CPU seconds (user + system) a process has used so far.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double ResidentMiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    long kib = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %ld kB", &kib) == 1)
      return static_cast<double>(kib) / 1024;
  }
  return 0;
}

// CPU seconds both processes used during a phase.
struct CpuMeter {
  pid_t server;
  double server_start, client_start;
  explicit CpuMeter(pid_t s)
      : server(s), server_start(CpuSeconds(s)), client_start(CpuSeconds(getpid())) {}
  double Server() const { return CpuSeconds(server) - server_start; }
  double Client() const { return CpuSeconds(getpid()) - client_start; }
};

// Counts down from `count`; Wait returns once it reached zero. Safe to destroy as soon as Wait
// returned (the last CountDown notifies under the lock).
class Latch {
 public:
  explicit Latch(size_t count) : count_(count) {}
  void CountDown() {
    std::lock_guard lock(mu_);
    if (count_ > 0 && --count_ == 0) cv_.notify_all();
  }
  void Add(size_t n) {
    std::lock_guard lock(mu_);
    count_ += n;
  }
  void Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return count_ == 0; });
  }
  bool WaitFor(std::chrono::seconds limit) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, limit, [this] { return count_ == 0; });
  }
  size_t count() {
    std::lock_guard lock(mu_);
    return count_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t count_;
};

// ----- the fleet -------------------------------------------------------------------------------

struct Device {
  Device(SoftDevice s, std::string cert) : soft(std::move(s)), cert_pem(std::move(cert)) {}
  SoftDevice soft;
  std::string cert_pem;
  std::shared_ptr<const ClientContext> context;
  std::optional<asio::strand<asio::io_context::executor_type>> strand;
  std::unique_ptr<AsyncConnection> conn;
  std::atomic<bool> busy{false};
  // Used on the strand only.
  uint64_t last_seq = 0;
  std::vector<double> latencies_ms;
  // The parked long-poll's answer.
  Clock::time_point answered_at{};
  std::optional<Result<ClientResponse>> answer;
};

struct Fleet {
  std::vector<std::unique_ptr<Device>> devices;
  std::atomic<size_t> cursor{0};
  std::atomic<uint64_t> attests{0};  // for checking 1 lease in kVerifyEveryNthLease
  Bytes lease_public;
  Bytes model_dek;
  std::string licence_id;

  // The next device with no request in flight (round robin), or null if all are busy.
  Device* Acquire() {
    const size_t n = devices.size();
    for (size_t tries = 0; tries < n; ++tries) {
      Device* d = devices[cursor.fetch_add(1, std::memory_order_relaxed) % n].get();
      bool expected = false;
      if (d->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) return d;
    }
    return nullptr;
  }
  std::vector<double> TakeLatencies() {
    std::vector<double> all;
    for (auto& d : devices) {
      all.insert(all.end(), d->latencies_ms.begin(), d->latencies_ms.end());
      d->latencies_ms.clear();
    }
    std::sort(all.begin(), all.end());
    return all;
  }
};

Status Http(const Result<ClientResponse>& r, std::string_view what) {
  if (!r) return r.error().WithContext(std::string(what));
  if (r->status != 200) {
    return Internal(std::string(what) + ": HTTP " + std::to_string(r->status) + ": " +
                    r->body.substr(0, 300));
  }
  return OkStatus();
}

// ----- device operations (coroutines on the device's strand) ----------------------------------

using Op = asio::awaitable<Status> (*)(Fleet&, Device&);

asio::awaitable<Status> Heartbeat(Fleet&, Device& d) {
  ClientRequest req;
  req.target = "/v1/events?after=" + std::to_string(d.last_seq) + "&wait_ms=0";
  Result<ClientResponse> r = co_await d.conn->Send(std::move(req));
  Status s = Http(r, "heartbeat");
  if (!s.ok()) co_return s;
  Result<protocol::EventsResponse> events = protocol::ParseEventsResponse(r->body);
  if (!events) co_return events.error().WithContext("heartbeat answer");
  d.last_seq = events->last_seq;
  co_return OkStatus();
}

Status CheckLease(Fleet& fleet, Device& d, const nlohmann::json& envelope) {
  agent::DeviceIdentity id;
  id.device_id = d.soft.device_id();
  id.lease_public = fleet.lease_public;
  CUSTODY_ASSIGN_OR_RETURN(protocol::LeasePayload lease, agent::OpenLease(id, envelope));
  if (lease.licence_id != fleet.licence_id) return Internal("lease for another licence");
  // Nothing was used: the limit is the counter plus the budget and the device's extension.
  if (lease.counter_limit != d.soft.counter_value() + kLicenceBudget + kExtensionPerDevice) {
    return Internal("lease counter limit " + std::to_string(lease.counter_limit) +
                    " is not counter + budget + extension");
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, d.soft.UnwrapLeaseKey(lease));
  if (!ConstantTimeEquals(dek.span(), fleet.model_dek))
    return Internal("lease carries a wrong key");
  return OkStatus();
}

asio::awaitable<Status> AttestAndLease(Fleet& fleet, Device& d) {
  ClientRequest nonce_req;
  nonce_req.method = "POST";
  nonce_req.target = "/v1/nonce";
  Result<ClientResponse> r = co_await d.conn->Send(std::move(nonce_req));
  Status s = Http(r, "nonce");
  if (!s.ok()) co_return s;
  Result<protocol::NonceResponse> nonce = protocol::ParseNonceResponse(r->body);
  if (!nonce) co_return nonce.error().WithContext("nonce answer");
  Result<protocol::AttestRequest> attestation = d.soft.MakeAttestation(nonce->nonce);
  if (!attestation) co_return attestation.error().WithContext("soft quote");
  ClientRequest attest_req;
  attest_req.method = "POST";
  attest_req.target = "/v1/attest";
  attest_req.body = protocol::ToJson(*attestation).dump();
  r = co_await d.conn->Send(std::move(attest_req));
  s = Http(r, "attest");
  if (!s.ok()) co_return s;
  Result<protocol::AttestResponse> leases = protocol::ParseAttestResponse(r->body);
  if (!leases) co_return leases.error().WithContext("attest answer");
  if (leases->leases.size() != 1) {
    co_return Internal("attest answered " + std::to_string(leases->leases.size()) +
                       " leases, expected 1");
  }
  if (fleet.attests.fetch_add(1, std::memory_order_relaxed) % kVerifyEveryNthLease == 0) {
    s = CheckLease(fleet, d, leases->leases[0]);
    if (!s.ok()) co_return s.WithContext("lease check");
  }
  co_return OkStatus();
}

// ----- load shapes -----------------------------------------------------------------------------

struct PhaseResult {
  uint64_t ok = 0;
  uint64_t failed = 0;
  uint64_t skipped = 0;  // paced: no device was free at the scheduled time
  double seconds = 0;
  std::vector<double> latencies_ms;  // sorted
  std::string first_error;
  double server_cpu_s = 0;  // CPU the custodian used during the phase
  double client_cpu_s = 0;  // and the load generator
  double PerSecond() const { return seconds > 0 ? static_cast<double>(ok) / seconds : 0; }
  // CPU per successful operation, in microseconds. Unlike throughput on a shared machine this
  // hardly depends on what else runs: the figure to compare changes by.
  double ServerCpuUs() const { return ok > 0 ? server_cpu_s / static_cast<double>(ok) * 1e6 : 0; }
  double ClientCpuUs() const { return ok > 0 ? client_cpu_s / static_cast<double>(ok) * 1e6 : 0; }
  // What both processes' CPU per operation allows on `cores` otherwise idle cores.
  double CapacityPerSecond(unsigned cores) const {
    const double us = ServerCpuUs() + ClientCpuUs();
    return us > 0 ? static_cast<double>(cores) * 1e6 / us : 0;
  }
  double P50() { return Percentile(latencies_ms, 0.50); }
  double P99() { return Percentile(latencies_ms, 0.99); }
};

struct Tally {
  std::atomic<uint64_t> ok{0}, failed{0};
  std::mutex mu;
  std::string first_error;
  void Record(const Status& s) {
    if (s.ok()) {
      ok.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    failed.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(mu);
    if (first_error.empty()) first_error = s.ToString();
  }
};

// Runs `op` on the device's strand and records its latency from `since` there.
asio::awaitable<Status> Timed(Fleet& fleet, Device& d, Op op, Clock::time_point since) {
  Status s = co_await op(fleet, d);
  d.latencies_ms.push_back(Seconds(since, Clock::now()) * 1e3);
  co_return s;
}

class LoadGenerator {
 public:
  LoadGenerator(Fleet& fleet, int threads, pid_t server)
      : fleet_(fleet), io_(threads), work_(io_.get_executor()), server_(server) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  ~LoadGenerator() { StopThreads(); }
  void StopThreads() {
    work_.reset();
    io_.stop();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }
  asio::io_context& io() { return io_; }

  // `concurrency` requests in flight for `seconds` (or, with each_device_once, one operation per
  // device, then stop).
  PhaseResult Closed(Op op, int concurrency, double seconds, bool each_device_once = false) {
    Tally tally;
    Latch done(static_cast<size_t>(concurrency));
    std::atomic<size_t> next_device{0};
    const CpuMeter cpu(server_);
    const auto start = Clock::now();
    const auto deadline =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    for (int slot = 0; slot < concurrency; ++slot) {
      asio::co_spawn(
          io_,
          [&]() -> asio::awaitable<void> {
            asio::steady_timer idle(co_await asio::this_coro::executor);
            for (;;) {
              Device* d = nullptr;
              if (each_device_once) {
                const size_t i = next_device.fetch_add(1);
                if (i >= fleet_.devices.size()) break;
                d = fleet_.devices[i].get();
                d->busy = true;
              } else {
                if (Clock::now() >= deadline) break;
                d = fleet_.Acquire();
                if (d == nullptr) {
                  idle.expires_after(std::chrono::milliseconds(1));
                  co_await idle.async_wait(asio::use_awaitable);
                  continue;
                }
              }
              Status s = co_await asio::co_spawn(*d->strand, Timed(fleet_, *d, op, Clock::now()),
                                                 asio::use_awaitable);
              d->busy.store(false, std::memory_order_release);
              tally.Record(s);
            }
            done.CountDown();
          },
          asio::detached);
    }
    done.Wait();
    PhaseResult r;
    r.seconds = Seconds(start, Clock::now());
    r.server_cpu_s = cpu.Server();
    r.client_cpu_s = cpu.Client();
    Finish(tally, r);
    return r;
  }

  // An open-loop schedule: operation k starts at start + k / rate on a free device, whether or
  // not earlier ones have finished; latency counts from the scheduled time.
  PhaseResult Paced(Op op, double rate, double seconds) {
    Tally tally;
    Latch done(1);  // the pacer, and each operation it starts
    std::atomic<uint64_t> skipped{0};
    const CpuMeter cpu(server_);
    const auto start = Clock::now();
    const auto length = std::chrono::duration<double>(seconds);
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
          asio::steady_timer tick(co_await asio::this_coro::executor);
          uint64_t issued = 0;
          for (;;) {
            const auto elapsed = std::chrono::duration<double>(Clock::now() - start);
            if (elapsed >= length) break;
            const auto due = static_cast<uint64_t>(elapsed.count() * rate);
            for (; issued < due; ++issued) {
              const auto scheduled =
                  start + std::chrono::duration_cast<Clock::duration>(
                              std::chrono::duration<double>(static_cast<double>(issued) / rate));
              Device* d = fleet_.Acquire();
              if (d == nullptr) {
                skipped.fetch_add(1);
                continue;
              }
              done.Add(1);
              asio::co_spawn(
                  *d->strand,
                  [&, d, scheduled]() -> asio::awaitable<void> {
                    Status s = co_await Timed(fleet_, *d, op, scheduled);
                    d->busy.store(false, std::memory_order_release);
                    tally.Record(s);
                    done.CountDown();
                  },
                  asio::detached);
            }
            tick.expires_after(std::chrono::microseconds(500));
            co_await tick.async_wait(asio::use_awaitable);
          }
          done.CountDown();
        },
        asio::detached);
    done.Wait();
    PhaseResult r;
    r.seconds = Seconds(start, Clock::now());  // until the last operation finished
    r.skipped = skipped.load();
    r.server_cpu_s = cpu.Server();
    r.client_cpu_s = cpu.Client();
    Finish(tally, r);
    return r;
  }

 private:
  void Finish(Tally& tally, PhaseResult& r) {
    r.ok = tally.ok.load();
    r.failed = tally.failed.load();
    r.first_error = tally.first_error;
    // Every strand is idle now (all operations finished): their vectors can be read.
    r.latencies_ms = fleet_.TakeLatencies();
  }

  Fleet& fleet_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  pid_t server_;
  std::vector<std::thread> threads_;
};

// ----- the custodian process -------------------------------------------------------------------

// The child: the custodian as `custodian serve` runs it, until the parent closes `stop_fd` (or
// dies). Writes its port to `ready_fd`.
[[noreturn]] void Serve(const std::string& config_path, custodian::Durability durability,
                        size_t devices, int ready_fd, int stop_fd) {
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "custody_custodian_bench (custodian): %s\n", what.c_str());
    std::fflush(stderr);
    _exit(3);
  };
  Result<custodian::Config> config = custodian::LoadConfig(config_path);
  if (!config) fail("config: " + config.error().ToString());
  config->log_level = LogLevel::kWarn;
  config->durability = durability;
  // Room for every device's connection plus the admin's, within the descriptor limit.
  config->server.max_connections = devices + 512;
  // Real devices are never idle that long (they hold long-polls); here the first connections of a
  // large fleet wait while the rest connect, and must not be closed meanwhile.
  config->server.idle_timeout =
      std::max(config->server.idle_timeout, std::chrono::milliseconds(600'000));
  Result<std::unique_ptr<custodian::App>> app = custodian::App::Start(*config);
  if (!app) fail("start: " + app.error().ToString());
  const uint16_t port = (*app)->port();
  if (write(ready_fd, &port, sizeof(port)) != static_cast<ssize_t>(sizeof(port))) fail("ready");
  close(ready_fd);
  char c = 0;
  for (;;) {
    const ssize_t n = read(stop_fd, &c, 1);
    if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  (*app)->Stop(std::chrono::milliseconds(2000));
  app->reset();
  _exit(0);
}

// ----- one scenario ----------------------------------------------------------------------------

struct Figures {
  size_t devices = 0;
  double setup_s = 0;
  PhaseResult connect, attest_closed, attest_paced, heartbeat_closed, heartbeat_paced;
  PhaseResult attest_half, heartbeat_half;  // paced at half the closed loop's throughput
  double server_kib_per_connection = 0;
  double server_kib_per_poll = 0;
  double client_kib_per_device = 0;
  double revocation_last_s = 0;
  double revocation_p50_s = 0;
  double revocation_p99_s = 0;
  double revocation_admin_s = 0;
  size_t revocation_delivered = 0;
  size_t revocation_valid = 0;
  size_t revocation_early = 0;
};

void PrintPhase(const char* label, PhaseResult& r) {
  std::printf("  %-30s %9.0f /s  p50 %7.2f ms  p99 %7.2f ms  (%llu ok, %llu failed", label,
              r.PerSecond(), r.P50(), r.P99(), static_cast<unsigned long long>(r.ok),
              static_cast<unsigned long long>(r.failed));
  if (r.skipped > 0) {
    std::printf(", %llu not started: no idle device", static_cast<unsigned long long>(r.skipped));
  }
  std::printf(
      ")\n  %-30s cpu per op: custodian %.0f us, load generator %.0f us (%.2f and %.2f cores)\n",
      "", r.ServerCpuUs(), r.ClientCpuUs(), r.server_cpu_s / r.seconds, r.client_cpu_s / r.seconds);
  if (!r.first_error.empty()) std::printf("  %-30s first error: %s\n", "", r.first_error.c_str());
  std::fflush(stdout);
}

// "<what>, paced at <half the closed loop's rate>/s": the latency of a load the custodian keeps up
// with, for when the target rate is beyond this machine and its paced figure is only queueing.
std::string HalfLabel(const char* what, const PhaseResult& closed) {
  char out[96];
  std::snprintf(out, sizeof(out), "%s, paced at %.0f/s (1/2)", what, closed.PerSecond() / 2);
  return out;
}

// Waits until neither process uses CPU (every long-poll parked), at most `limit`.
void WaitForQuiet(pid_t server, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  int quiet = 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  while (Clock::now() < deadline && quiet < 3) {
    const double before = CpuSeconds(server) + CpuSeconds(getpid());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const double used = CpuSeconds(server) + CpuSeconds(getpid()) - before;
    quiet = used < 0.02 ? quiet + 1 : 0;  // under 10 % of one core
  }
}

Figures RunScenario(const Args& args, size_t n) {
  Figures fig;
  fig.devices = n;
  g_work_dir = args.dir + "/custody-custodian-bench-" + std::to_string(getpid());
  std::error_code ec;
  std::filesystem::remove_all(g_work_dir, ec);
  std::filesystem::create_directories(g_work_dir);
  const std::string data = g_work_dir + "/data";
  std::printf("\n== N = %zu devices ==\n", n);
  std::fflush(stdout);

  // ----- setup (not measured) -------------------------------------------------------------------
  const auto setup_start = Clock::now();
  custodian::InitResult init =
      Check(custodian::InitDataDir(data, "127.0.0.1:0", {}, {}), "custodian init");
  custodian::Config config = Check(custodian::LoadConfig(init.config_path), "load config");
  config.durability = args.durability;
  custodian::CustodianKeys keys = Check(custodian::LoadKeys(data), "load keys");
  const auto& lease_pub = keys.lease_key.public_key().raw();
  Fleet fleet;
  fleet.lease_public.assign(lease_pub.begin(), lease_pub.end());
  fleet.model_dek = Check(crypto::RandomBytes(32), "model key");

  tpm::PcrValues golden;
  uint64_t fill = 0x5eed;
  for (uint32_t pcr : kPcrSelection) FillPseudoRandom(golden[pcr], &fill);
  {
    auto store =
        Check(custodian::OpenSqliteStore(config.store_path, {config.durability}), "open the store");
    custodian::CustodianService service(*store, keys, custodian::ServiceOptions{});
    const custodian::Actor setup{"system", "", ""};
    Check(service.CreateGroup(setup, {"bench", kPcrSelection, false, false}), "create group");
    Check(service.AddGoldenSet(setup, "bench", "factory", golden), "golden set");
    custodian::ModelRegistration model;
    model.model_id = HexEncode(Check(crypto::RandomBytes(16), "model id"));
    model.name = "bench-model";
    model.version = "1";
    model.dek = Check(SecretBuffer::CopyFrom(fleet.model_dek), "model key");
    const std::string model_id = model.model_id;
    Check(service.RegisterModel(setup, std::move(model)), "register model");
    custodian::LicenceSpec licence;
    licence.model_id = model_id;
    licence.group = "bench";
    licence.budget = kLicenceBudget;
    licence.not_after = custodian::SystemNow() + std::chrono::hours(24 * 365);
    licence.offline_grace_ms = 3'600'000;
    nlohmann::json created = Check(service.CreateLicence(setup, licence), "create licence");
    fleet.licence_id = created["licence_id"].get<std::string>();

    // The devices: keys, certificates and store records, on every core.
    std::vector<std::optional<Device>> made(n);
    std::vector<custodian::DeviceRecord> records(n);
    std::atomic<size_t> next{0};
    std::vector<std::thread> makers;
    const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    const crypto::Sha256Digest auth_policy =
        Check(tpm::BindingKeyAuthPolicy(keys.policy_key.public_key()), "binding key policy");
    for (unsigned t = 0; t < threads; ++t) {
      makers.emplace_back([&] {
        for (size_t i = next++; i < n; i = next++) {
          const std::string id = "dev_" + HexEncode(Check(crypto::RandomBytes(16), "device id"));
          SoftDeviceOptions options;
          options.pcr_selection = kPcrSelection;
          options.pcrs = golden;
          SoftDevice soft = Check(SoftDevice::Create(id, auth_policy, options), "soft device");
          custodian::IssuedCertificate cert =
              Check(keys.ca.IssueDevice(soft.tls_spki_der(), id, 30), "device certificate");
          custodian::DeviceRecord& r = records[i];
          r.device_id = id;
          r.group = "bench";
          r.ek_name = Check(crypto::RandomBytes(34), "EK name");
          r.ak_public = soft.ak_public();
          r.binding_public = soft.binding_public();
          r.counter_index = soft.counter_index();
          r.counter_name = soft.counter_name();
          r.tls_serial = cert.serial_hex;
          r.tls_public_key = soft.tls_spki_der();
          r.enrolled = custodian::SystemNow();
          r.last_counter = soft.counter_value();
          r.meter_position = soft.counter_value();  // counter unit 1
          made[i].emplace(std::move(soft), std::move(cert.pem));
        }
      });
    }
    for (std::thread& t : makers) t.join();
    const auto made_at = Clock::now();
    Check(store->Transact([&](custodian::Transaction& tx) -> Status {
      for (const custodian::DeviceRecord& r : records) {
        CUSTODY_RETURN_IF_ERROR(tx.PutDevice(r));
        CUSTODY_RETURN_IF_ERROR(
            tx.Audit("system", "device.enroll", r.device_id,
                     {{"group", r.group}, {"tls_serial", r.tls_serial}, {"bench", true}}));
        // The history of a fleet in service: one approved budget extension per device.
        custodian::ExtensionRequest e;
        e.request_id = "ext_" + r.device_id.substr(4, 16);
        e.device_id = r.device_id;
        e.licence_id = fleet.licence_id;
        e.requested = e.granted = kExtensionPerDevice;
        e.reason = "benchmark history";
        e.status = custodian::ExtensionStatus::kApproved;
        e.decided_by = "system";
        e.decided = e.created = custodian::SystemNow();
        CUSTODY_RETURN_IF_ERROR(tx.PutExtension(e));
      }
      return OkStatus();
    }),
          "register the devices");
    for (auto& d : made) {
      fleet.devices.push_back(std::make_unique<Device>(std::move(d->soft), std::move(d->cert_pem)));
    }
    std::printf("  setup: devices %.1f s, store %.1f s\n", Seconds(setup_start, made_at),
                Seconds(made_at, Clock::now()));
  }  // the store closes (its writer thread ends) before the fork

  // ----- the custodian process ---------------------------------------------------------------
  int ready[2], stop[2];
  if (pipe2(ready, O_CLOEXEC) != 0 || pipe2(stop, O_CLOEXEC) != 0) Die("pipe");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    close(ready[0]);
    close(stop[1]);
    Serve(init.config_path, args.durability, n, ready[1], stop[0]);
  }
  g_server = child;
  close(ready[1]);
  close(stop[0]);
  uint16_t port = 0;
  if (read(ready[0], &port, sizeof(port)) != static_cast<ssize_t>(sizeof(port))) {
    Die("the custodian did not start (see its message above)");
  }
  close(ready[0]);

  // Descriptors for every device's connection (the custodian raises its own limit).
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  const rlim_t wanted = static_cast<rlim_t>(n) + 512;
  if (limit.rlim_cur < wanted) {
    limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
    setrlimit(RLIMIT_NOFILE, &limit);
    if (limit.rlim_cur < wanted) {
      Die("open file limit " + std::to_string(limit.rlim_cur) + " is below the " +
          std::to_string(wanted) + " this run needs (ulimit -n)");
    }
  }

  const auto contexts_start = Clock::now();
  LoadGenerator load(fleet, args.client_threads, child);
  const std::string ca_pem = keys.ca.CertificatePem();
  {  // TLS contexts (one per device: each has its own client certificate), on every core
    std::atomic<size_t> next{0};
    std::vector<std::thread> makers;
    for (unsigned t = 0; t < std::max(1u, std::thread::hardware_concurrency()); ++t) {
      makers.emplace_back([&] {
        for (size_t i = next++; i < n; i = next++) {
          Device& d = *fleet.devices[i];
          ClientOptions o;
          o.host = "127.0.0.1";
          o.port = port;
          o.ca_pem = ca_pem;
          o.client_certificate_pem = d.cert_pem;
          o.client_key_pem = d.soft.tls_key_pem();
          o.connect_timeout = std::chrono::seconds(60);
          o.request_timeout = std::chrono::seconds(60);
          d.context = Check(ClientContext::Create(std::move(o)), "client context");
        }
      });
    }
    for (std::thread& t : makers) t.join();
  }
  for (auto& d : fleet.devices) {
    d->strand.emplace(asio::make_strand(load.io()));
    d->conn = std::make_unique<AsyncConnection>(*d->strand, d->context);
  }
  ClientOptions admin_options;
  admin_options.host = "127.0.0.1";
  admin_options.port = port;
  admin_options.ca_pem = ca_pem;
  admin_options.bearer_token = init.admin_token;
  auto admin = Check(http::Client::Create(admin_options), "admin client");
  fig.setup_s = Seconds(setup_start, Clock::now());
  std::printf("  setup: client contexts %.1f s\n", Seconds(contexts_start, Clock::now()));
  std::printf(
      "  setup (not measured): %zu software devices, certificates and store records, custodian "
      "started: %.1f s\n",
      n, fig.setup_s);
  std::printf(
      "  custodian: pid %d, 127.0.0.1:%u, SQLite %s; load generator: pid %d, %d threads\n",
      static_cast<int>(child), port,
      args.durability == custodian::Durability::kPowerLoss ? "power-loss (fsync)" : "process-crash",
      static_cast<int>(getpid()), args.client_threads);
  std::fflush(stdout);

  // ----- connect: every device's TLS connection ----------------------------------------------
  const double rss_idle = ResidentMiB(child);
  fig.connect = load.Closed(Heartbeat, args.concurrency, 0, /*each_device_once=*/true);
  fig.server_kib_per_connection = (ResidentMiB(child) - rss_idle) * 1024 / static_cast<double>(n);
  PrintPhase("connect (mTLS handshake + 1st)", fig.connect);

  fig.attest_closed = load.Closed(AttestAndLease, args.concurrency, args.seconds);
  PrintPhase("attest+lease, closed loop", fig.attest_closed);
  fig.attest_paced = load.Paced(AttestAndLease, kTargetAttestPerSecond, args.seconds);
  PrintPhase("attest+lease, paced at target", fig.attest_paced);
  fig.attest_half = load.Paced(AttestAndLease, fig.attest_closed.PerSecond() / 2, args.seconds);
  PrintPhase(HalfLabel("attest+lease", fig.attest_closed).c_str(), fig.attest_half);
  fig.heartbeat_closed = load.Closed(Heartbeat, args.concurrency, args.seconds);
  PrintPhase("heartbeat, closed loop", fig.heartbeat_closed);
  fig.heartbeat_paced = load.Paced(Heartbeat, kTargetHeartbeatsPerSecond, args.seconds);
  PrintPhase("heartbeat, paced at target", fig.heartbeat_paced);
  fig.heartbeat_half = load.Paced(Heartbeat, fig.heartbeat_closed.PerSecond() / 2, args.seconds);
  PrintPhase(HalfLabel("heartbeat", fig.heartbeat_closed).c_str(), fig.heartbeat_half);

  // ----- revocation fan-out --------------------------------------------------------------------
  const double rss_server_before = ResidentMiB(child);
  Latch answered(n);
  for (auto& dp : fleet.devices) {
    Device* d = dp.get();
    asio::co_spawn(
        *d->strand,
        [&, d]() -> asio::awaitable<void> {
          ClientRequest req;
          req.target = "/v1/events?after=" + std::to_string(d->last_seq) +
                       "&wait_ms=" + std::to_string(kLongPollWaitMs);
          req.timeout = std::chrono::milliseconds(kLongPollWaitMs + 15000);
          Result<ClientResponse> r = co_await d->conn->Send(std::move(req));
          d->answered_at = Clock::now();
          d->answer.emplace(std::move(r));
          answered.CountDown();
        },
        asio::detached);
  }
  WaitForQuiet(child, std::chrono::seconds(60));
  fig.revocation_early = n - answered.count();
  fig.server_kib_per_poll =
      (ResidentMiB(child) - rss_server_before) * 1024 / static_cast<double>(n);
  fig.client_kib_per_device = ResidentMiB(getpid()) * 1024 / static_cast<double>(n);

  const auto t0 = Clock::now();
  Result<ClientResponse> revoked = admin->PostJson(
      "/v1/admin/revocations",
      {{"scope", "licence"}, {"id", fleet.licence_id}, {"reason", "benchmark stop switch"}});
  fig.revocation_admin_s = Seconds(t0, Clock::now());
  Check(Http(revoked, "revoke the licence"), "revocation");
  if (!answered.WaitFor(std::chrono::seconds(kLongPollWaitMs / 1000 + 20))) {
    Die("not every long-poll was answered (" + std::to_string(n - answered.count()) + " of " +
        std::to_string(n) + " still waiting)");
  }
  std::vector<double> delivery;
  agent::DeviceIdentity id;
  id.lease_public = fleet.lease_public;
  for (auto& d : fleet.devices) {
    delivery.push_back(Seconds(t0, d->answered_at));
    if (!d->answer || !Http(*d->answer, "long-poll").ok()) continue;
    ++fig.revocation_delivered;
    Result<protocol::EventsResponse> events = protocol::ParseEventsResponse((*d->answer)->body);
    if (!events || events->events.empty() || events->events[0].type != "revocation") continue;
    id.device_id = d->soft.device_id();
    if (agent::OpenRevocation(id, events->events[0].document).ok()) ++fig.revocation_valid;
  }
  std::sort(delivery.begin(), delivery.end());
  fig.revocation_last_s = delivery.back();
  fig.revocation_p50_s = Percentile(delivery, 0.5);
  fig.revocation_p99_s = Percentile(delivery, 0.99);
  std::printf(
      "  revocation fan-out             last device after %.3f s (p50 %.3f s, p99 %.3f s); admin "
      "call %.3f s; %zu of %zu answered with a valid signed revocation",
      fig.revocation_last_s, fig.revocation_p50_s, fig.revocation_p99_s, fig.revocation_admin_s,
      fig.revocation_valid, n);
  if (fig.revocation_early > 0) {
    std::printf(" (%zu polls answered before the revocation)", fig.revocation_early);
  }
  std::printf(
      "\n  memory (server RSS): %.1f KiB per open device connection, +%.1f KiB per parked "
      "long-poll; load generator %.1f KiB per device\n",
      fig.server_kib_per_connection, fig.server_kib_per_poll, fig.client_kib_per_device);
  std::fflush(stdout);

  // ----- stop --------------------------------------------------------------------------------
  admin.reset();
  // Connections and strands belong to the load generator's io_context: end its threads, then
  // destroy them while it still exists.
  load.StopThreads();
  fleet.devices.clear();
  close(stop[1]);
  int status = 0;
  waitpid(child, &status, 0);
  g_server = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the custodian did not stop cleanly");
  std::filesystem::remove_all(g_work_dir, ec);
  return fig;
}

std::string Ratio(double value, double target, bool higher_is_better) {
  char out[160];
  const double ratio = higher_is_better ? value / target : target / value;
  const bool pass = higher_is_better ? value >= target : value < target;
  std::snprintf(out, sizeof(out), "(target %s %g, ratio %.2f) %s", higher_is_better ? ">=" : "<",
                target, ratio, Verdict(pass));
  return out;
}

int Main(int argc, char** argv) {
  InitBench("custody_custodian_bench", Cleanup);
  const Args args = ParseArgs(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  std::printf(
      "custodian: N simulated devices over HTTPS with mutual TLS on loopback; the custodian and "
      "the load generator are two processes on the same %u cores; %.1f s per phase, %d in flight "
      "(closed loop)\n",
      std::thread::hardware_concurrency(), args.seconds, args.concurrency);
  std::vector<Figures> all;
  for (size_t n : args.devices) all.push_back(RunScenario(args, n));

  std::printf("\nsummary (throughput: closed loop; latency: paced at the target rate):\n");
  for (Figures& f : all) {
    const std::string k = std::to_string(f.devices);
    const double attest = f.attest_closed.PerSecond();
    const double beats = f.heartbeat_closed.PerSecond();
    const double attest_p99 = f.attest_paced.P99();
    const double beat_p99 = f.heartbeat_paced.P99();
    std::printf("  N=%-6zu attest+lease/s     %8.0f %s\n", f.devices, attest,
                Ratio(attest, kTargetAttestPerSecond, true).c_str());
    std::printf("  N=%-6zu heartbeats/s       %8.0f %s\n", f.devices, beats,
                Ratio(beats, kTargetHeartbeatsPerSecond, true).c_str());
    std::printf("  N=%-6zu attest+lease p99   %8.2f ms %s   (p50 %.2f ms)\n", f.devices, attest_p99,
                Ratio(attest_p99, kTargetP99Ms, false).c_str(), f.attest_paced.P50());
    std::printf("  N=%-6zu heartbeat p99      %8.2f ms %s   (p50 %.2f ms)\n", f.devices, beat_p99,
                Ratio(beat_p99, kTargetP99Ms, false).c_str(), f.heartbeat_paced.P50());
    std::printf(
        "  N=%-6zu context: p50/p99 paced at half the closed loop's rate: attest+lease %.0f/s "
        "%.2f/%.2f ms, heartbeat %.0f/s %.2f/%.2f ms\n",
        f.devices, f.attest_closed.PerSecond() / 2, f.attest_half.P50(), f.attest_half.P99(),
        f.heartbeat_closed.PerSecond() / 2, f.heartbeat_half.P50(), f.heartbeat_half.P99());
    std::printf("  N=%-6zu revocation, last   %8.3f s  %s   (%zu/%zu valid)\n", f.devices,
                f.revocation_last_s,
                Ratio(f.revocation_last_s, kTargetRevocationSeconds, false).c_str(),
                f.revocation_valid, f.devices);
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    std::printf(
        "  N=%-6zu cpu per op (closed loop): attest+lease custodian %.0f us + load generator "
        "%.0f us; heartbeat %.0f + %.0f us\n"
        "           -> what that CPU allows on %u otherwise idle cores (an estimate, not a "
        "measurement): attest+lease %.0f/s, heartbeats %.0f/s\n",
        f.devices, f.attest_closed.ServerCpuUs(), f.attest_closed.ClientCpuUs(),
        f.heartbeat_closed.ServerCpuUs(), f.heartbeat_closed.ClientCpuUs(), cores,
        f.attest_closed.CapacityPerSecond(cores), f.heartbeat_closed.CapacityPerSecond(cores));
    const bool attest_ok = f.attest_closed.failed == 0 && f.attest_paced.failed == 0;
    const bool beats_ok = f.heartbeat_closed.failed == 0 && f.heartbeat_paced.failed == 0;
    std::printf("RESULT custodian_%s_attest_per_s=%.0f %s\n", k.c_str(), attest,
                Verdict(attest >= kTargetAttestPerSecond && attest_ok));
    std::printf("RESULT custodian_%s_heartbeat_per_s=%.0f %s\n", k.c_str(), beats,
                Verdict(beats >= kTargetHeartbeatsPerSecond && beats_ok));
    std::printf("RESULT custodian_%s_attest_ms=%.2f/%.2f %s\n", k.c_str(), f.attest_paced.P50(),
                attest_p99, Verdict(attest_p99 < kTargetP99Ms && f.attest_paced.skipped == 0));
    std::printf("RESULT custodian_%s_heartbeat_ms=%.2f/%.2f %s\n", k.c_str(),
                f.heartbeat_paced.P50(), beat_p99,
                Verdict(beat_p99 < kTargetP99Ms && f.heartbeat_paced.skipped == 0));
    std::printf("RESULT custodian_%s_revocation_s=%.3f %s\n", k.c_str(), f.revocation_last_s,
                Verdict(f.revocation_last_s < kTargetRevocationSeconds &&
                        f.revocation_valid == f.devices && f.revocation_early == 0));
    std::printf("RESULT custodian_%s_connect_per_s=%.0f\n", k.c_str(), f.connect.PerSecond());
    std::printf("RESULT custodian_%s_attest_half_rate_ms=%.2f/%.2f\n", k.c_str(),
                f.attest_half.P50(), f.attest_half.P99());
    std::printf("RESULT custodian_%s_heartbeat_half_rate_ms=%.2f/%.2f\n", k.c_str(),
                f.heartbeat_half.P50(), f.heartbeat_half.P99());
    std::printf("RESULT custodian_%s_attest_cpu_us=%.0f+%.0f\n", k.c_str(),
                f.attest_closed.ServerCpuUs(), f.attest_closed.ClientCpuUs());
    std::printf("RESULT custodian_%s_heartbeat_cpu_us=%.0f+%.0f\n", k.c_str(),
                f.heartbeat_closed.ServerCpuUs(), f.heartbeat_closed.ClientCpuUs());
    std::printf("RESULT custodian_%s_attest_capacity_per_s=%.0f\n", k.c_str(),
                f.attest_closed.CapacityPerSecond(cores));
    std::printf("RESULT custodian_%s_heartbeat_capacity_per_s=%.0f\n", k.c_str(),
                f.heartbeat_closed.CapacityPerSecond(cores));
    std::printf("RESULT custodian_%s_kib_per_connection=%.1f\n", k.c_str(),
                f.server_kib_per_connection);
    std::printf("RESULT custodian_%s_kib_per_poll=%.1f\n", k.c_str(), f.server_kib_per_poll);
  }
  g_work_dir.clear();
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
