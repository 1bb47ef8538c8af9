// A whole Custody deployment on one machine, for the agent's end-to-end tests and benchmarks: a
// real custodian (in this process, on 127.0.0.1, SQLite in a temporary directory), a vendor key
// and a real model sealed with it, a device group whose golden state is a fresh software TPM's,
// a licence, and a device: its own swtpm, a state directory and an agent.toml. The agent itself
// runs as the real custody-agent program (AgentProcess) or in this process (agent::Agent).
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/local_client.h"
#include "core/base/status.h"
#include "custodian/app.h"
#include "engine/engine.h"
#include "http/client.h"
#include "tests/support/swtpm_fixture.h"

namespace custody::testing {

struct WorldOptions {
  std::string model_file = "tiny.pt";  // in $CUSTODY_TEST_MODELS_DIR
  std::string engine = "torchscript";
  std::string model_name = "tiny";
  uint64_t budget = 100;
  uint64_t offline_grace_s = 3600;
  std::optional<uint64_t> auto_approve;  // extensions approved automatically up to this per day
  // agent.toml
  uint64_t unit = 4;
  uint64_t extension_threshold = 0;
  uint64_t extension_amount = 0;
  std::string report_interval = "1s";
  std::string renew_interval = "1h";
  std::string extra_config;  // appended verbatim (more [sections])
  std::string serve_extra;   // lines added to [serve]
};

class AgentWorld {
 public:
  // Needs $CUSTODY_TEST_MODELS_DIR (tests/models/make_models.py's output).
  static Result<std::unique_ptr<AgentWorld>> Create(WorldOptions options = {});
  ~AgentWorld();

  const std::string& dir() const { return dir_; }
  std::string config_path() const { return dir_ + "/agent.toml"; }
  std::string socket_path() const { return dir_ + "/run/agent.sock"; }
  std::string state_dir() const { return dir_ + "/state"; }
  std::string models_dir() const { return dir_ + "/models"; }
  std::string sealed_path() const { return models_dir() + "/model.sealed"; }
  const std::string& model_id() const { return model_id_; }
  const std::string& licence_id() const { return licence_id_; }
  const std::string& model_name() const { return options_.model_name; }
  const WorldOptions& options() const { return options_; }
  Swtpm& swtpm() { return *swtpm_; }
  // https://127.0.0.1:PORT: the custodian as agent.toml names it.
  std::string custodian_url() const;

  // (Re)writes agent.toml from the options (custodian at its current port).
  Status WriteConfig();
  // A one-time enrollment token for the device group.
  Result<std::string> EnrollmentToken();

  // The admin API. Answers that are not 2xx are errors naming the status and body.
  Result<nlohmann::json> Admin(const std::string& method, const std::string& target,
                               const nlohmann::json& body = nullptr);
  // The id of the device enrolled in this world (from the custodian).
  Result<std::string> DeviceId();
  // Audit entries with `action`.
  Result<std::vector<nlohmann::json>> AuditEntries(const std::string& action);

  // Custodian down (graceful) and up again on the same port and data.
  void StopCustodian();
  Status StartCustodian();
  bool custodian_running() const { return app_ != nullptr; }

 private:
  AgentWorld() = default;
  Status Provision();

  WorldOptions options_;
  std::string dir_;
  custodian::Config config_;
  std::string admin_token_;
  std::string ca_pem_;
  uint16_t port_ = 0;
  std::unique_ptr<custodian::App> app_;
  std::unique_ptr<http::Client> admin_;
  std::unique_ptr<Swtpm> swtpm_;
  std::string model_id_;
  std::string licence_id_;
};

// The real custody-agent (or custody) program as a child process, its stderr in a log file.
class AgentProcess {
 public:
  // `argv[0]` is the program; `env` entries are added to the environment.
  static Result<std::unique_ptr<AgentProcess>> Spawn(std::vector<std::string> argv,
                                                     const std::string& log_path,
                                                     std::vector<std::string> env = {});
  ~AgentProcess();  // SIGKILL if still running

  pid_t pid() const { return pid_; }
  // Waits until the socket answers /v2/health/live (kDeadlineExceeded with the log's tail, or
  // kUnavailable if the process exited first).
  Status WaitServing(const std::string& socket, std::chrono::milliseconds deadline);
  void Signal(int sig);
  // Waits for the exit; its status (exit code, or 128 + signal). nullopt on timeout.
  std::optional<int> Wait(std::chrono::milliseconds deadline);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  std::optional<int> exit_;
};

// The path of the custody-agent program of this build ($CUSTODY_AGENT_BINARY or compiled in).
std::string AgentBinary();

// Runs `custody-agent enroll` for `world`'s device with a fresh token; exit code and output.
struct Exited {
  int code = -1;
  std::string output;  // stdout and stderr
};
Result<Exited> RunToExit(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                         std::vector<std::string> env = {});
Result<Exited> EnrollDevice(AgentWorld& world);

// The tiny model's inference request body (1x16 float32, binary tensor data) and its header.
struct InferBody {
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};
InferBody TinyInferRequest();
// The same for any inputs (binary tensor data in and out).
InferBody InferRequestFor(std::vector<engine::Tensor> inputs);
// POST it to model `name` through `client`.
Result<agent::LocalAnswer> Infer(agent::LocalClient& client, const std::string& name);

// Polls `predicate` every 20 ms until it is true or `deadline` passes.
bool WaitUntil(const std::function<bool()>& predicate, std::chrono::milliseconds deadline);

}  // namespace custody::testing
