// custodian: the vendor's server. Thin: parse the command line, then the lifecycle is
// init (once) or serve (config → keys → store → service → API → server; wait for SIGTERM or
// SIGINT; stop in reverse).
#include <signal.h>
#include <CLI/CLI.hpp>

#include <cstdio>

#include "custodian/app.h"

namespace {

// Blocks SIGTERM and SIGINT in every thread (done before any thread starts) and waits for one.
void BlockStopSignals(sigset_t* set) {
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  pthread_sigmask(SIG_BLOCK, set, nullptr);
}

int Fail(const custody::Status& s) {
  std::fprintf(stderr, "custodian: error: %s\n", s.message().c_str());
  switch (s.code()) {
    case custody::StatusCode::kInvalidArgument:
      return 2;
    case custody::StatusCode::kNotFound:
      return 3;
    case custody::StatusCode::kAlreadyExists:
      return 4;
    case custody::StatusCode::kPermissionDenied:
      return 7;
    case custody::StatusCode::kUnavailable:
      return 8;
    default:
      return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "custodian: the Custody vendor server (enrollment, attestation, leases, budgets, "
      "stop switch, audit)"};
  app.require_subcommand(1);
  int exit_code = 0;

  std::string data_dir, listen = "0.0.0.0:8443";
  std::vector<std::string> dns, ips;
  CLI::App* init = app.add_subcommand("init",
                                      "Create a data directory: keys, database, config, "
                                      "and the first admin token (printed once)");
  init->add_option("--data", data_dir, "Data directory to create (absolute path)")->required();
  init->add_option("--listen", listen, "ADDRESS:PORT to serve on (written to the config)");
  init->add_option("--dns", dns, "DNS name devices use to reach the custodian (repeat)");
  init->add_option("--ip", ips, "IP address devices use to reach the custodian (repeat)");
  init->callback([&] {
    auto r = custody::custodian::InitDataDir(data_dir, listen, dns, ips);
    if (!r) {
      exit_code = Fail(r.error());
      return;
    }
    std::printf("custodian data directory: %s\n", data_dir.c_str());
    std::printf("configuration:            %s\n", r->config_path.c_str());
    std::printf("initial admin token (shown once; store it safely):\n%s\n", r->admin_token.c_str());
  });

  std::string config_path;
  CLI::App* serve = app.add_subcommand("serve", "Run the custodian until SIGTERM or SIGINT");
  serve->add_option("--config", config_path, "custodian.toml")->required();
  serve->callback([&] {
    sigset_t signals;
    BlockStopSignals(&signals);
    auto config = custody::custodian::LoadConfig(config_path);
    if (!config) {
      exit_code = Fail(config.error());
      return;
    }
    auto running = custody::custodian::App::Start(*config);
    if (!running) {
      exit_code = Fail(running.error());
      return;
    }
    std::fprintf(stderr, "custodian: serving on port %u\n",
                 static_cast<unsigned>((*running)->port()));
    int sig = 0;
    sigwait(&signals, &sig);
    (*running)->Stop(std::chrono::seconds(10));
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
