// custody-agent: the device daemon. Thin: the command line, then the lifecycle is enroll (once) or
// run (config -> process hardening -> agent (state, TPM, meter, leases, server, custodian link)
// -> seccomp filter -> wait for SIGTERM or SIGINT -> stop in reverse, wiping the models).
#include <signal.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "agent/agent.h"
#include "core/base/file.h"

namespace {

using custody::Result;
using custody::Status;
using custody::StatusCode;

// Blocks SIGTERM and SIGINT in every thread (before any thread starts) and waits for one.
void BlockStopSignals(sigset_t* set) {
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  pthread_sigmask(SIG_BLOCK, set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int Fail(const Status& s) {
  std::fprintf(stderr, "custody-agent: error: %s\n", s.message().c_str());
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
      return 2;
    case StatusCode::kNotFound:
      return 3;
    case StatusCode::kAlreadyExists:
      return 4;
    case StatusCode::kUnauthenticated:
    case StatusCode::kDataLoss:
      return 5;
    case StatusCode::kPermissionDenied:
    case StatusCode::kFailedPrecondition:
      return 7;
    case StatusCode::kUnavailable:
    case StatusCode::kResourceExhausted:
      return 8;
    default:
      return 1;
  }
}

Result<std::string> TokenFrom(const std::string& token, const std::string& token_file) {
  if (!token.empty() && !token_file.empty()) {
    return custody::InvalidArgument("give --token or --token-file, not both");
  }
  if (token_file.empty()) return token;
  CUSTODY_ASSIGN_OR_RETURN(custody::Bytes bytes, custody::ReadFile(token_file, 4096));
  std::string t(custody::AsChars(bytes));
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
  return t;
}

int Run(const std::string& config_path) {
  sigset_t signals;
  BlockStopSignals(&signals);
  Result<custody::agent::AgentConfig> config = custody::agent::LoadAgentConfig(config_path);
  if (!config) return Fail(config.error());
  // Before any key or weight is in memory.
  Result<custody::agent::HardeningReport> hardened =
      custody::agent::HardenProcess({config->memory_lock});
  if (!hardened) return Fail(hardened.error().WithContext("process hardening"));
  std::unique_ptr<custody::Logger> log = custody::Logger::Stderr(config->log_level);
  if (!hardened->full())
    log->Warn("process hardening incomplete", {{"report", hardened->ToString()}});
  Result<std::unique_ptr<custody::agent::Agent>> agent =
      custody::agent::Agent::Start(*config, *hardened, *log);
  if (!agent) return Fail(agent.error());
  if (config->seccomp == custody::agent::SeccompMode::kOff) {
    (*agent)->SetSeccompState("off by configuration");
    log->Warn("seccomp filter off by configuration", {});
  } else {
    const bool kill = config->seccomp == custody::agent::SeccompMode::kKill;
    const Status installed = custody::agent::InstallSeccompFilter(
        {kill ? custody::agent::SeccompAction::kKill : custody::agent::SeccompAction::kErrno});
    (*agent)->SetSeccompState(installed.ok()
                                  ? std::string("installed (") + (kill ? "kill" : "errno") + ")"
                                  : "NOT installed: " + installed.ToString());
    if (!installed.ok())
      log->Error("seccomp filter not installed", {{"error", installed.ToString()}});
  }
  std::fprintf(stderr, "custody-agent: serving on %s\n", config->serve.socket.c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  log->Info("stopping", {{"signal", sig}});
  (*agent)->Stop(std::chrono::seconds(10));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "custody-agent: serves a vendor's sealed model on this device under the leases "
      "its custodian grants"};
  app.require_subcommand(1);
  int exit_code = 0;
  std::string config_path, token, token_file, custodian_url;

  CLI::App* enroll = app.add_subcommand("enroll",
                                        "Enroll this device with its custodian (once): TPM keys, "
                                        "usage counter, certificate, state directory");
  enroll->add_option("--config", config_path, "agent.toml")->required();
  enroll->add_option("--token", token, "One-time enrollment token from the vendor");
  enroll->add_option("--token-file", token_file, "File holding the enrollment token");
  enroll->add_option("--custodian", custodian_url,
                     "The custodian's URL as the vendor gave it; must match custodian.url");
  enroll->callback([&] {
    Result<custody::agent::AgentConfig> config = custody::agent::LoadAgentConfig(config_path);
    if (!config) {
      exit_code = Fail(config.error());
      return;
    }
    if (!custodian_url.empty()) {
      const Status same = custody::agent::CheckCustodianUrl(*config, custodian_url);
      if (!same.ok()) {
        exit_code = Fail(same);
        return;
      }
    }
    Result<std::string> t = TokenFrom(token, token_file);
    if (!t) {
      exit_code = Fail(t.error());
      return;
    }
    std::unique_ptr<custody::Logger> log = custody::Logger::Stderr(config->log_level);
    Result<std::string> device = custody::agent::Enroll(*config, {*t}, *log);
    if (!device) {
      exit_code = Fail(device.error());
      return;
    }
    std::printf("enrolled: device %s (state in %s)\n", device->c_str(), config->state_dir.c_str());
  });

  CLI::App* run = app.add_subcommand("run", "Serve until SIGTERM or SIGINT");
  run->add_option("--config", config_path, "agent.toml")->required();
  run->callback([&] { exit_code = Run(config_path); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
