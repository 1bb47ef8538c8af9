#include "tests/support/agent_world.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/kserve.h"
#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/format/sealed.h"

extern char** environ;

namespace custody::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string ReadText(const std::string& path) {
  Result<Bytes> b = ReadFile(path, 64 << 20);
  return b ? std::string(AsChars(*b)) : std::string();
}

Status WriteText(const std::string& path, const std::string& text, uint32_t mode = 0644) {
  return WriteFileAtomic(path, AsBytes(text), WriteOptions{mode, Overwrite::kAllow});
}

Result<pid_t> SpawnProcess(const std::vector<std::string>& argv, int out_fd,
                           const std::vector<std::string>& env) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_fd, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // Nothing else: the test process's sockets (the custodian's listener) must not live on in a
  // child after the test closes them.
  posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.insert(env_strings.end(), env.begin(), env.end());
  std::vector<char*> c_env;
  for (std::string& e : env_strings) c_env.push_back(e.data());
  c_env.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (std::string& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, c_argv[0], &actions, nullptr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return ErrnoStatus(rc, "spawn " + argv[0]);
  return pid;
}

std::optional<int> WaitPid(pid_t pid, std::chrono::milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (Clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

std::string AgentBinary() {
  if (const char* e = getenv("CUSTODY_AGENT_BINARY")) return e;
  return CUSTODY_AGENT_BINARY_PATH;
}

bool WaitUntil(const std::function<bool()>& predicate, std::chrono::milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  while (!predicate()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// ----- the world ----------------------------------------------------------------------------

Result<std::unique_ptr<AgentWorld>> AgentWorld::Create(WorldOptions options) {
  std::unique_ptr<AgentWorld> w(new AgentWorld());
  w->options_ = std::move(options);
  char tmpl[] = "/tmp/custody-agent-world.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
  w->dir_ = tmpl;
  std::filesystem::create_directories(w->dir_ + "/run");
  std::filesystem::create_directories(w->models_dir());
  CUSTODY_RETURN_IF_ERROR(w->Provision());
  return w;
}

AgentWorld::~AgentWorld() {
  admin_.reset();
  app_.reset();
  swtpm_.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Status AgentWorld::Provision() {
  const char* models = getenv("CUSTODY_TEST_MODELS_DIR");
  if (models == nullptr) {
    return FailedPrecondition("CUSTODY_TEST_MODELS_DIR is not set (tests/models/make_models.py)");
  }
  // The vendor seals the model.
  CUSTODY_ASSIGN_OR_RETURN(crypto::Ed25519PrivateKey vendor, crypto::Ed25519PrivateKey::Generate());
  CUSTODY_RETURN_IF_ERROR(WriteText(dir_ + "/vendor.pub", vendor.public_key().ToPem()));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, format::GenerateDek());
  format::SealOptions seal;
  seal.info.name = options_.model_name;
  seal.info.version = "1";
  seal.info.engine = options_.engine;
  seal.chunk_size_log2 = 16;
  CUSTODY_RETURN_IF_ERROR(format::SealFile(std::string(models) + "/" + options_.model_file,
                                           sealed_path(), dek.span(), vendor, seal,
                                           Overwrite::kRefuse));
  CUSTODY_ASSIGN_OR_RETURN(format::SealedHeader header,
                           format::ReadHeaderFromFile(sealed_path(), nullptr));
  model_id_ = header.info.model_id;

  // The custodian.
  CUSTODY_ASSIGN_OR_RETURN(custodian::InitResult init,
                           custodian::InitDataDir(dir_ + "/custodian", "127.0.0.1:0", {}, {}));
  admin_token_ = init.admin_token;
  CUSTODY_ASSIGN_OR_RETURN(config_, custodian::LoadConfig(init.config_path));
  config_.log_level = LogLevel::kWarn;
  ca_pem_ = ReadText(dir_ + "/custodian/keys/ca.pem");
  CUSTODY_RETURN_IF_ERROR(WriteText(dir_ + "/custodian-ca.pem", ca_pem_));
  CUSTODY_RETURN_IF_ERROR(StartCustodian());

  CUSTODY_RETURN_IF_ERROR(Admin("POST", "/v1/admin/models",
                                {{"model_id", model_id_},
                                 {"name", options_.model_name},
                                 {"version", "1"},
                                 {"dek", HexEncode(dek.span())}})
                              .status());
  CUSTODY_RETURN_IF_ERROR(
      Admin("POST", "/v1/admin/groups",
            {{"name", "kiosks"}, {"pcrs", {0, 2, 4, 7}}, {"require_ek_certificate", false}})
          .status());
  nlohmann::json zero;  // a fresh swtpm's PCRs
  for (int pcr : {0, 2, 4, 7}) zero[std::to_string(pcr)] = std::string(64, '0');
  CUSTODY_RETURN_IF_ERROR(
      Admin("POST", "/v1/admin/groups/kiosks/golden-sets", {{"name", "factory"}, {"pcrs", zero}})
          .status());
  nlohmann::json licence{{"model_id", model_id_},
                         {"group", "kiosks"},
                         {"budget", options_.budget},
                         {"not_after", "2099-12-31"},
                         {"offline_grace_seconds", options_.offline_grace_s}};
  if (options_.auto_approve) {
    licence["extension"] = {{"manual", false},
                            {"auto_approve_up_to", *options_.auto_approve},
                            {"period_seconds", 86400}};
  }
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json created, Admin("POST", "/v1/admin/licences", licence));
  licence_id_ = created["licence_id"].get<std::string>();

  // The device.
  CUSTODY_ASSIGN_OR_RETURN(swtpm_, Swtpm::Start());
  return WriteConfig();
}

Status AgentWorld::StartCustodian() {
  config_.server.port = port_;
  config_.server.header_timeout = std::chrono::milliseconds(3000);
  // The same port again: sockets of the connections the stopped custodian had may hold it a
  // little longer.
  Result<std::unique_ptr<custodian::App>> app = custodian::App::Start(config_);
  for (int i = 0; i < 100 && !app && app.error().code() == StatusCode::kUnavailable; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    app = custodian::App::Start(config_);
  }
  if (!app) {
    Result<std::string> ss = RunProgram({"ss", "-tanp"});
    return app.error().WithContext(ss ? *ss : std::string());
  }
  app_ = std::move(app).value();
  port_ = app_->port();
  http::ClientOptions o;
  o.host = "127.0.0.1";
  o.port = port_;
  o.ca_pem = ca_pem_;
  o.bearer_token = admin_token_;
  CUSTODY_ASSIGN_OR_RETURN(admin_, http::Client::Create(o));
  return OkStatus();
}

void AgentWorld::StopCustodian() {
  admin_.reset();
  if (app_) app_->Stop(std::chrono::milliseconds(500));
  app_.reset();
}

Status AgentWorld::WriteConfig() {
  std::ostringstream c;
  c << "state_dir = \"" << state_dir() << "\"\n"
    << "models_dir = \"" << models_dir() << "\"\n"
    << "vendor_public_key = \"" << dir_ << "/vendor.pub\"\n"
    << "tcti = \"" << swtpm_->tcti() << "\"\n\n"
    << "[custodian]\nurl = \"" << custodian_url() << "\"\n"
    << "ca = \"" << dir_ << "/custodian-ca.pem\"\n\n"
    << "[serve]\nsocket = \"" << socket_path() << "\"\n"
    << options_.serve_extra << "\n"
    << "[metering]\nunit = " << options_.unit
    << "\nextension_threshold = " << options_.extension_threshold
    << "\nextension_amount = " << options_.extension_amount << "\nreport_interval = \""
    << options_.report_interval << "\"\n\n"
    << "[lease]\nrenew_interval = \"" << options_.renew_interval << "\"\n\n"
    << "[log]\nlevel = \"debug\"\n"
    << options_.extra_config;
  return WriteText(config_path(), c.str());
}

Result<std::string> AgentWorld::EnrollmentToken() {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json t,
                           Admin("POST", "/v1/admin/enrollment-tokens", {{"group", "kiosks"}}));
  return t["token"].get<std::string>();
}

Result<nlohmann::json> AgentWorld::Admin(const std::string& method, const std::string& target,
                                         const nlohmann::json& body) {
  if (!admin_) return FailedPrecondition("the custodian is stopped");
  http::ClientRequest req;
  req.method = method;
  req.target = target;
  if (!body.is_null()) req.body = body.dump();
  CUSTODY_ASSIGN_OR_RETURN(http::ClientResponse r, admin_->Send(req));
  if (r.status / 100 != 2) {
    return Internal(method + " " + target + ": HTTP " + std::to_string(r.status) + ": " + r.body);
  }
  if (r.body.empty()) return nlohmann::json(nullptr);
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded()) {
    // NDJSON (the audit export): one entry per line.
    nlohmann::json lines = nlohmann::json::array();
    std::istringstream in(r.body);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) lines.push_back(nlohmann::json::parse(line, nullptr, false));
    }
    return lines;
  }
  return j;
}

Result<std::string> AgentWorld::DeviceId() {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json devices, Admin("GET", "/v1/admin/devices"));
  const nlohmann::json& list = devices.is_array() ? devices : devices["devices"];
  if (list.empty()) return NotFound("no device is enrolled");
  return list.back()["device_id"].get<std::string>();
}

Result<std::vector<nlohmann::json>> AgentWorld::AuditEntries(const std::string& action) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json all, Admin("GET", "/v1/admin/audit?limit=10000"));
  std::vector<nlohmann::json> out;
  for (const nlohmann::json& e : all) {
    if (e.is_object() && e.value("action", "") == action) out.push_back(e);
  }
  return out;
}

// ----- processes ----------------------------------------------------------------------------

Result<std::unique_ptr<AgentProcess>> AgentProcess::Spawn(std::vector<std::string> argv,
                                                          const std::string& log_path,
                                                          std::vector<std::string> env) {
  const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "open " + log_path);
  Result<pid_t> pid = SpawnProcess(argv, fd, env);
  close(fd);
  if (!pid) return pid.error();
  std::unique_ptr<AgentProcess> p(new AgentProcess());
  p->pid_ = *pid;
  p->log_path_ = log_path;
  return p;
}

AgentProcess::~AgentProcess() {
  if (!exit_) {
    kill(pid_, SIGKILL);
    WaitPid(pid_, std::chrono::seconds(10));
  }
}

Status AgentProcess::WaitServing(const std::string& socket, std::chrono::milliseconds deadline) {
  const auto end = Clock::now() + deadline;
  while (Clock::now() < end) {
    if (!exit_) {
      const std::optional<int> code = WaitPid(pid_, std::chrono::milliseconds(0));
      if (code) exit_ = code;
    }
    if (exit_) {
      return Unavailable("custody-agent exited with " + std::to_string(*exit_) + ": " + Log());
    }
    Result<std::unique_ptr<agent::LocalClient>> c = agent::LocalClient::Connect(
        {socket, std::nullopt, std::nullopt, std::chrono::milliseconds(2000)});
    if (c) {
      Result<agent::LocalAnswer> a = (*c)->Send("GET", "/v2/health/live");
      if (a && a->status == 200) return OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return DeadlineExceeded("custody-agent did not serve within the deadline: " + Log());
}

void AgentProcess::Signal(int sig) {
  if (!exit_) kill(pid_, sig);
}

std::optional<int> AgentProcess::Wait(std::chrono::milliseconds deadline) {
  if (!exit_) exit_ = WaitPid(pid_, deadline);
  return exit_;
}

std::string AgentProcess::Log() const { return ReadText(log_path_); }

Result<Exited> RunToExit(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                         std::vector<std::string> env) {
  char tmpl[] = "/tmp/custody-run-output.XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd < 0) return ErrnoStatus(errno, "mkstemp");
  Result<pid_t> pid = SpawnProcess(argv, fd, env);
  close(fd);
  Exited out;
  if (pid) {
    const std::optional<int> code = WaitPid(*pid, deadline);
    if (!code) kill(*pid, SIGKILL);
    out.code = code.value_or(-1);
    if (!code) WaitPid(*pid, std::chrono::seconds(5));
  }
  out.output = ReadText(tmpl);
  unlink(tmpl);
  if (!pid) return pid.error();
  return out;
}

std::string AgentWorld::custodian_url() const {
  return "https://127.0.0.1:" + std::to_string(port_);
}

Result<Exited> EnrollDevice(AgentWorld& world) {
  CUSTODY_ASSIGN_OR_RETURN(std::string token, world.EnrollmentToken());
  const std::string token_file = world.dir() + "/enroll.token";
  CUSTODY_RETURN_IF_ERROR(WriteText(token_file, token + "\n", 0600));
  return RunToExit({AgentBinary(), "enroll", "--custodian", world.custodian_url(), "--config",
                    world.config_path(), "--token-file", token_file},
                   std::chrono::seconds(60));
}

InferBody TinyInferRequest() {
  std::vector<float> values(16);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) / 16.0f;
  return InferRequestFor({engine::Tensor::FromFloats("x", {1, 16}, values).value()});
}

InferBody InferRequestFor(std::vector<engine::Tensor> inputs) {
  agent::kserve::InferRequest request;
  request.inputs = std::move(inputs);
  request.binary_data_output = true;
  agent::kserve::EncodedBody encoded = agent::kserve::EncodeInferRequest(request, true).value();
  InferBody out;
  out.body = std::move(encoded.body);
  out.headers.emplace_back("Content-Type", "application/octet-stream");
  out.headers.emplace_back(std::string(agent::kserve::kInferenceHeaderContentLength),
                           std::to_string(*encoded.json_bytes));
  return out;
}

Result<agent::LocalAnswer> Infer(agent::LocalClient& client, const std::string& name) {
  static const InferBody body = TinyInferRequest();
  return client.Send("POST", "/v2/models/" + name + "/infer", body.body, body.headers);
}

}  // namespace custody::testing
