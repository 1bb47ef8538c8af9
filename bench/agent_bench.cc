// custody_agent_bench: what serving through custody-agent adds to an inference.
//
//   custody_agent_bench --models DIR [--requests N] [--resnet-requests N] [--seconds S]
//
// DIR holds tests/models/make_models.py's output (tiny.pt, resnet18.pt). For each model a whole
// deployment is built on this machine (tests/support/agent_world.h): a custodian in this
// process, the model sealed and licensed, a swtpm for the device, and the real custody-agent
// program enrolled and serving on its Unix socket. The same plain model is also loaded into this
// process through the engine library with the same options.
//
//   latency   one client, one request at a time, interleaved in rounds of 50 so drift hits both
//             sides alike: the engine called directly [baseline] vs a KServe v2 infer request
//             through the agent's socket (binary tensor extension in and out). Added latency is
//             the difference of the medians (and of the 99th percentiles). Targets: <= 100 us
//             p50 added on the tiny model, <= 3% on resnet18.
//   load      C = 1, 2, 4, 8 clients, each on its own connection, for S seconds: requests/s and
//             p99, beside the engine called directly from C threads for context.
//   TPM       the agent's own count of TPM operations (status endpoint, tpm_operations) before
//             and after the latency run: per request there must be none but the block advance
//             (one per `unit` requests). The once-a-second clock read is timer-driven and is
//             shown apart.
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/local_client.h"
#include "bench_util.h"
#include "core/base/file.h"
#include "engine/engine.h"
#include "tests/support/agent_world.h"

namespace custody::bench {
namespace {

using testing::AgentProcess;
using testing::AgentWorld;
using testing::InferBody;

constexpr double kTargetTinyAddedUs = 100.0;
constexpr double kTargetResnetAdded = 0.03;
constexpr uint64_t kUnit = 16;

struct Args {
  std::string models;
  int requests = 3000;
  int resnet_requests = 200;
  double seconds = 3.0;
  std::vector<std::string> agent_env;  // --agent-env K=V: added to the agent's environment
  std::string serve_extra;             // --workers N: [serve] workers
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  Flags flags;
  flags.values["--models"] = [&](const std::string& v) { a.models = v; };
  flags.values["--requests"] = [&](const std::string& v) { a.requests = std::stoi(v); };
  flags.values["--resnet-requests"] = [&](const std::string& v) {
    a.resnet_requests = std::stoi(v);
  };
  flags.values["--seconds"] = [&](const std::string& v) { a.seconds = std::stod(v); };
  flags.values["--agent-env"] = [&](const std::string& v) { a.agent_env.push_back(v); };
  flags.values["--workers"] = [&](const std::string& v) {
    a.serve_extra = "workers = " + std::to_string(std::stoi(v)) + "\n";
  };
  ParseFlags(argc, argv, flags,
             "usage: custody_agent_bench --models DIR [--requests N] [--resnet-requests N] "
             "[--seconds S] [--workers N] [--agent-env K=V]...");
  if (a.models.empty()) Die("--models DIR is required (tests/models/make_models.py's output)");
  if (a.requests < 100 || a.resnet_requests < 20 || a.seconds <= 0) {
    Die("--requests must be >= 100, --resnet-requests >= 20 and --seconds > 0");
  }
  return a;
}

// A deterministic input of `shape` named `name`.
engine::Tensor MakeInput(const std::string& name, std::vector<int64_t> shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = static_cast<float>(i % 251) / 251.0f;
  return Check(engine::Tensor::FromFloats(name, std::move(shape), values), "input tensor");
}

// One model served two ways: directly in this process and through a running agent.
class Subject {
 public:
  Subject(const Args& args, const std::string& file, const std::string& name,
          std::vector<int64_t> shape)
      : name_(name) {
    const Bytes plain = Check(ReadFile(args.models + "/" + file, 1ull << 31), "read " + file);
    engine::LoadOptions load;
    engine_ = Check(engine::LoadEngine("torchscript", plain, load), "load " + file);
    const std::vector<engine::TensorSpec> specs = engine_->inputs();
    const std::string input_name = specs.empty() ? "input__0" : specs[0].name;
    input_ = MakeInput(input_name, std::move(shape));
    body_ = testing::InferRequestFor({input_});

    testing::WorldOptions o;
    o.model_file = file;
    o.model_name = name;
    o.budget = 100'000'000;
    o.unit = kUnit;
    o.report_interval = "60s";
    o.serve_extra = args.serve_extra;
    o.extra_config = "[hardening]\nmemory_lock = \"best-effort\"\n";
    world_ = Check(AgentWorld::Create(o), "build the deployment for " + file);
    const testing::Exited enrolled = Check(testing::EnrollDevice(*world_), "enroll");
    if (enrolled.code != 0) Die("custody-agent enroll failed:\n" + enrolled.output);
    agent_ = Check(
        AgentProcess::Spawn({testing::AgentBinary(), "run", "--config", world_->config_path()},
                            world_->dir() + "/agent.log"),
        "start custody-agent");
    Check(agent_->WaitServing(world_->socket_path(), std::chrono::seconds(120)),
          "custody-agent did not come up");
    client_ = Connect();
    // Until the model is loaded the agent answers 503.
    std::string last;
    const bool serving = testing::WaitUntil(
        [&] {
          Result<agent::LocalAnswer> a = Send(*client_);
          last = a ? a->body : a.error().ToString();
          return a && a->status == 200;
        },
        std::chrono::seconds(120));
    if (!serving) Die("the agent never served " + name + ": " + last + "\n" + agent_->Log());
  }

  ~Subject() {
    if (agent_) {
      agent_->Signal(SIGTERM);
      agent_->Wait(std::chrono::seconds(20));
    }
  }

  std::unique_ptr<agent::LocalClient> Connect() const {
    return Check(agent::LocalClient::Connect({world_->socket_path()}), "connect to the agent");
  }

  Result<agent::LocalAnswer> Send(agent::LocalClient& c) const {
    return c.Send("POST", "/v2/models/" + name_ + "/infer", body_.body, body_.headers);
  }

  // One request through the agent, in seconds; dies unless it is served.
  double ThroughAgent(agent::LocalClient& c) const {
    const auto t0 = Clock::now();
    Result<agent::LocalAnswer> a = Send(c);
    const double s = Seconds(t0, Clock::now());
    if (!a) Die("infer through the agent: " + a.error().ToString());
    if (a->status != 200) Die("the agent refused: " + a->body);
    return s;
  }

  // One direct engine call, in seconds.
  double Direct() const {
    const auto t0 = Clock::now();
    Result<std::vector<engine::Tensor>> out = engine_->Run({&input_, 1});
    const double s = Seconds(t0, Clock::now());
    if (!out) Die("direct engine run: " + out.error().ToString());
    return s;
  }

  agent::LocalClient& client() { return *client_; }

  nlohmann::json Status() const {
    agent::LocalAnswer a = Check(client_->Send("GET", "/v1/status"), "status");
    return nlohmann::json::parse(a.body);
  }

 private:
  std::string name_;
  std::unique_ptr<engine::Engine> engine_;
  engine::Tensor input_;
  InferBody body_;
  std::unique_ptr<AgentWorld> world_;
  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<agent::LocalClient> client_;
};

struct Latency {
  std::vector<double> direct;
  std::vector<double> agent;
};

Latency MeasureLatency(Subject& s, int requests) {
  for (int i = 0; i < 20; ++i) {  // warm both paths
    s.Direct();
    s.ThroughAgent(s.client());
  }
  Latency l;
  constexpr int kRound = 50;
  for (int done = 0; done < requests; done += kRound) {
    const int n = std::min(kRound, requests - done);
    for (int i = 0; i < n; ++i) l.direct.push_back(s.Direct());
    for (int i = 0; i < n; ++i) l.agent.push_back(s.ThroughAgent(s.client()));
  }
  return l;
}

void PrintLatency(const char* key, const Latency& l) {
  const double d50 = Median(l.direct) * 1e6, a50 = Median(l.agent) * 1e6;
  const double d99 = Percentile(l.direct, 0.99) * 1e6, a99 = Percentile(l.agent, 0.99) * 1e6;
  std::printf("  direct engine [baseline]  p50 %10.1f us   p99 %10.1f us   (%zu calls)\n", d50, d99,
              l.direct.size());
  std::printf("  through the agent         p50 %10.1f us   p99 %10.1f us\n", a50, a99);
  std::printf("  added                     p50 %10.1f us   p99 %10.1f us   (%+.2f%% at p50)\n",
              a50 - d50, a99 - d99, (a50 / d50 - 1) * 100);
  std::printf("RESULT %s_direct_p50_us=%.1f\nRESULT %s_direct_p99_us=%.1f\n", key, d50, key, d99);
  std::printf("RESULT %s_agent_p50_us=%.1f\nRESULT %s_agent_p99_us=%.1f\n", key, a50, key, a99);
  std::printf("RESULT %s_added_p50_us=%.1f\nRESULT %s_added_p99_us=%.1f\n", key, a50 - d50, key,
              a99 - d99);
  std::printf("RESULT %s_added_p50_pct=%.2f\n", key, (a50 / d50 - 1) * 100);
}

// `clients` threads, each with its own connection (or, with `direct`, calling the engine), for
// `seconds`: requests per second and p99.
void MeasureLoad(Subject& s, int clients, double seconds, bool direct, double* per_s,
                 double* p99_us) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::unique_ptr<agent::LocalClient> conn = direct ? nullptr : s.Connect();
      std::vector<double>& mine = lat[static_cast<size_t>(c)];
      while (!stop.load(std::memory_order_relaxed)) {
        mine.push_back(direct ? s.Direct() : s.ThroughAgent(*conn));
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& t : threads) t.join();
  const double elapsed = Seconds(t0, Clock::now());
  std::vector<double> all;
  for (const auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  *per_s = static_cast<double>(all.size()) / elapsed;
  *p99_us = Percentile(all, 0.99) * 1e6;
}

uint64_t Op(const nlohmann::json& status, const char* name) {
  return status.at("tpm_operations").at(name).get<uint64_t>();
}

int Main(int argc, char** argv) {
  InitBench("custody_agent_bench");
  const Args args = ParseArgs(argc, argv);
  setenv("CUSTODY_TEST_MODELS_DIR", args.models.c_str(), 1);
  bool pass = true;

  std::printf("tiny model (TorchScript, 1x16 -> 1x4), %d requests, 1 client\n", args.requests);
  {
    Subject tiny(args, "tiny.pt", "tiny", {1, 16});
    const nlohmann::json before = tiny.Status();
    const Latency l = MeasureLatency(tiny, args.requests);
    const nlohmann::json after = tiny.Status();
    PrintLatency("tiny", l);
    const double added = (Median(l.agent) - Median(l.direct)) * 1e6;
    const bool ok = added <= kTargetTinyAddedUs;
    pass = pass && ok;
    std::printf("  target: <= %.0f us added at p50: %s\n", kTargetTinyAddedUs, Verdict(ok));

    // TPM operations over the measured requests (plus the warm-up's 40: 20 through the agent).
    const uint64_t served = static_cast<uint64_t>(args.requests) + 20;
    uint64_t others = 0;
    for (const auto& [name, value] : after.at("tpm_operations").items()) {
      if (name == "counter_advance" || name == "clock_read") continue;
      others += value.get<uint64_t>() - before.at("tpm_operations").at(name).get<uint64_t>();
    }
    const uint64_t advances = Op(after, "counter_advance") - Op(before, "counter_advance");
    const uint64_t clock = Op(after, "clock_read") - Op(before, "clock_read");
    const uint64_t expected = (served + kUnit - 1) / kUnit;
    const bool tpm_ok = others == 0 && advances <= expected + 1;
    pass = pass && tpm_ok;
    std::printf(
        "  TPM operations over %llu requests: %llu block advances (unit %llu: expected about "
        "%llu), %llu others; %llu clock reads (timer, 1/s)\n",
        static_cast<unsigned long long>(served), static_cast<unsigned long long>(advances),
        static_cast<unsigned long long>(kUnit), static_cast<unsigned long long>(expected),
        static_cast<unsigned long long>(others), static_cast<unsigned long long>(clock));
    std::printf("  target: none per request but the block advance: %s\n", Verdict(tpm_ok));
    std::printf("RESULT tpm_advances=%llu\nRESULT tpm_expected_advances=%llu\n",
                static_cast<unsigned long long>(advances),
                static_cast<unsigned long long>(expected));
    std::printf("RESULT tpm_other_ops=%llu\nRESULT tpm_requests=%llu\n",
                static_cast<unsigned long long>(others), static_cast<unsigned long long>(served));
    std::printf("RESULT tpm_ops_per_request=%.4f\n",
                static_cast<double>(advances + others) / static_cast<double>(served));

    std::printf("\ntiny model, concurrent clients, %.1f s each (workers: the agent's default)\n",
                args.seconds);
    for (int clients : {1, 2, 4, 8}) {
      double agent_rate = 0, agent_p99 = 0, direct_rate = 0, direct_p99 = 0;
      MeasureLoad(tiny, clients, args.seconds, false, &agent_rate, &agent_p99);
      MeasureLoad(tiny, clients, args.seconds, true, &direct_rate, &direct_p99);
      std::printf(
          "  %d client(s): agent %8.0f req/s (p99 %8.1f us); direct engine %8.0f calls/s "
          "(p99 %8.1f us)\n",
          clients, agent_rate, agent_p99, direct_rate, direct_p99);
      std::printf("RESULT load_c%d_agent_per_s=%.0f\nRESULT load_c%d_agent_p99_us=%.1f\n", clients,
                  agent_rate, clients, agent_p99);
      std::printf("RESULT load_c%d_direct_per_s=%.0f\n", clients, direct_rate);
    }
  }

  std::printf("\nresnet18 (TorchScript, 1x3x224x224), %d requests, 1 client\n",
              args.resnet_requests);
  {
    Subject resnet(args, "resnet18.pt", "resnet18", {1, 3, 224, 224});
    const Latency l = MeasureLatency(resnet, args.resnet_requests);
    PrintLatency("resnet", l);
    const double added = Median(l.agent) / Median(l.direct) - 1;
    const bool ok = added <= kTargetResnetAdded;
    pass = pass && ok;
    std::printf("  target: <= %.0f%% added at p50: %s\n", kTargetResnetAdded * 100, Verdict(ok));
  }
  std::printf("RESULT verdict=%s\n", Verdict(pass));
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
